"""Shading: texture lookups into a G-buffer, day and night lighting, and the camera's development
(exposure, white balance, gamma, lamp glare, sensor noise) into BGR uint8 images."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mmcrossvit.colmap_io import CameraSpec
from mmcrossvit.geometry import Pose

from .lens import camera_rays, distort
from .scene import Lamps, Scene
from .textures import rgb
from .trace import GROUND, SKY, trace


def _remap_list(img: np.ndarray, mx: np.ndarray, my: np.ndarray, border: int) -> np.ndarray:
    """Bilinear lookups at a list of points; remap wants 2D maps under 32767 px a side, so the
    list is folded into rows of 4096."""
    k, cols = len(mx), 4096
    rows = -(-k // cols)
    mx = np.resize(mx, rows * cols).reshape(rows, cols)
    my = np.resize(my, rows * cols).reshape(rows, cols)
    res = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=border)
    return res.reshape(rows * cols, -1)[:k]


def sample_mips(stacks: list[list[np.ndarray]], x: np.ndarray, y: np.ndarray, lod: np.ndarray,
                border: int = cv2.BORDER_REPLICATE, wrap: bool = False) -> list[np.ndarray]:
    """Trilinear lookups in one or more mip stacks of equal sizes at level-0 texel coordinates
    (x, y) (edge-based: texel i spans [i, i+1)); returns one (N, channels) float32 array per stack."""
    n_lev = len(stacks[0])
    lod = np.clip(lod, 0, n_lev - 1).astype(np.float32)
    l0 = lod.astype(np.int8)
    w = lod - l0
    outs = [np.zeros((len(x), lv[0].shape[2] if lv[0].ndim == 3 else 1), np.float32) for lv in stacks]
    # the finer level for everyone, the coarser one only where the blend weight is non-zero
    two = np.nonzero(w > 0)[0]
    for pass_idx, (sel, base) in enumerate(((l0, None), (l0[two] + 1, two))):
        for lvl in range(n_lev):
            idx = np.nonzero(sel == lvl)[0]
            if len(idx) == 0:
                continue
            pix = idx if base is None else base[idx]
            scale = 0.5 ** lvl
            mx = x[pix] * scale - 0.5
            my = y[pix] * scale - 0.5
            if wrap:
                mx %= stacks[0][lvl].shape[1]
                my %= stacks[0][lvl].shape[0]
            mx, my = mx.astype(np.float32), my.astype(np.float32)
            wt = (1.0 - w[pix])[:, None] if pass_idx == 0 else w[pix][:, None]
            for lv, out in zip(stacks, outs):
                out[pix] += wt * _remap_list(lv[lvl], mx, my, border)
    return outs


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.power(np.clip(x, 0, 1), 2.2, dtype=np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    return np.power(np.clip(x, 0, 1), 1 / 2.2, dtype=np.float32)


@dataclass
class GBuffer:
    """Per-(sub)pixel surface attributes; everything `shade_day` / `night_shade` need.

    Build one with `gbuffer(scene, camera, pose, ss)` or, for any image with a depth map,
    `gbuffer_from_image(image, depth, camera, pose)`.
    """
    albedo: np.ndarray        # (H, W, 3) linear BGR reflectance
    emissive: np.ndarray      # (H, W) 0..1 self-illumination at night (lit windows, signs)
    points: np.ndarray        # (H, W, 3) world hit points (0 for sky)
    normals: np.ndarray       # (H, W, 3) world unit normals (0 for sky)
    depth: np.ndarray         # (H, W) camera z, inf for sky
    view_dirs: np.ndarray     # (H, W, 3) world unit ray directions
    surface: np.ndarray       # (H, W) facade id, GROUND or SKY
    camera_center: np.ndarray
    ao: np.ndarray | None = None  # (H, W) ambient occlusion factor, 1 = open


def gbuffer(scene: Scene, camera: CameraSpec, pose: Pose, ss: int = 1) -> GBuffer:
    depth, sid, d, rays = trace(scene, camera, pose, ss)
    H, W = depth.shape
    n_pix = H * W
    o = pose.center.astype(np.float32)
    dflat = d.reshape(3, -1)
    tflat = depth.ravel()
    sflat = sid.ravel()
    dnorm = np.sqrt((dflat ** 2).sum(0))
    albedo = np.zeros((n_pix, 3), np.float32)
    emis = np.zeros(n_pix, np.float32)
    normals = np.zeros((n_pix, 3), np.float32)
    points = np.zeros((n_pix, 3), np.float32)
    ao = np.ones(n_pix, np.float32)
    hit = np.nonzero(sflat != SKY)[0]
    points[hit] = o + (tflat[hit] * dflat[:, hit]).T
    P = scene.params
    fpx = rays.focal_px

    # facades
    F = scene.facades
    idx = np.nonzero(sflat >= 0)[0]
    if len(idx):
        f = sflat[idx]
        ax = F.axis[f]
        pt = points[idx]
        t = tflat[idx]
        a = np.where(ax == 0, pt[:, 1], pt[:, 0])
        s_sign, s_off = F.s_coefficients()
        s = s_sign[f] * a + s_off[f]
        zt = (F.height[f] - pt[:, 2]).astype(np.float32)
        cos = np.abs(np.where(ax == 0, dflat[0, idx], dflat[1, idx])) / dnorm[idx]
        # metres per subpixel on the surface; sqrt(cos) trades blur against aliasing at grazing angles
        foot = t / fpx / np.sqrt(np.maximum(cos, 0.05))
        ppm = F.ppm[f]
        tx = F.atlas_xy[f, 0] + s * ppm
        ty = F.atlas_xy[f, 1] + zt * ppm
        lod = np.log2(np.maximum(foot * ppm, 1e-6))
        col, aux = sample_mips([scene.atlas, scene.atlas_aux], tx, ty, lod)
        aux /= 255.0
        dppm = P["detail_ppm"]
        dx = (s + F.detail_off[f, 0]) * dppm
        dy = (zt + F.detail_off[f, 1]) * dppm
        det, = sample_mips([scene.detail], dx, dy, np.log2(np.maximum(foot * dppm, 1e-6)), cv2.BORDER_WRAP, wrap=True)
        mat = F.material[f].astype(np.int64)
        structure = np.take_along_axis(det, mat[:, None], 1)[:, 0]
        wall = aux[:, 1]
        rel = (det[:, 0] * (1 - wall) + structure * wall) / 128.0 - 1.0
        albedo[idx] = srgb_to_linear(col / 255.0) * np.clip(1.0 + 0.9 * rel, 0.2, 2.0)[:, None]
        emis[idx] = aux[:, 0]
        nrm = np.zeros((len(idx), 3), np.float32)
        nrm[np.arange(len(idx)), ax] = F.sign[f]
        normals[idx] = nrm
        ao[idx] = 1.0 - 0.35 * np.exp(-pt[:, 2] / 0.6)  # darker where facades meet the ground
    # ground
    idx = np.nonzero(sflat == GROUND)[0]
    if len(idx):
        pt = points[idx]
        t = tflat[idx]
        gppm = P["ground_ppm"]
        cos = np.abs(dflat[2, idx]) / dnorm[idx]
        foot = t / fpx / np.sqrt(np.maximum(cos, 0.05))
        gx, gy = (pt[:, 0] - scene.ground_origin[0]) * gppm, (scene.ground_origin[1] - pt[:, 1]) * gppm
        g, = sample_mips([scene.ground], gx, gy, np.log2(np.maximum(foot * gppm, 1e-6)), cv2.BORDER_REFLECT)
        dppm = P["detail_ppm"]
        det, = sample_mips([scene.detail], pt[:, 0] * dppm, -pt[:, 1] * dppm, np.log2(np.maximum(foot * dppm, 1e-6)),
                          cv2.BORDER_WRAP, wrap=True)
        pave = g[:, 3] / 255.0
        rel = (det[:, 0] * (1 - pave) + det[:, 3] * pave) / 128.0 - 1.0
        albedo[idx] = srgb_to_linear(g[:, :3] / 255.0) * np.clip(1.0 + 0.9 * rel, 0.2, 2.0)[:, None]
        normals[idx] = (0.0, 0.0, 1.0)
    view = (dflat / dnorm).T.astype(np.float32)
    return GBuffer(albedo.reshape(H, W, 3), emis.reshape(H, W), points.reshape(H, W, 3), normals.reshape(H, W, 3),
                   depth, view.reshape(H, W, 3), sid, pose.center.copy(), ao.reshape(H, W))


def gbuffer_from_image(image: np.ndarray, depth: np.ndarray, camera: CameraSpec, pose: Pose,
                       emissive: np.ndarray | None = None) -> GBuffer:
    """A GBuffer for any BGR uint8 image with a depth map (camera z, inf/0/nan = sky), so that
    `night_shade` can turn it into a night image: albedo ~ the day image, normals from the depth."""
    H, W = depth.shape
    rays = camera_rays(camera, 1)
    valid = np.isfinite(depth) & (depth > 0)
    z = np.where(valid, depth, 0).astype(np.float32)
    cam = np.stack([rays.xn * z, rays.yn * z, z], -1)
    Rw = pose.R.T.astype(np.float32)
    pts = cam @ Rw.T + pose.center.astype(np.float32)
    # normals: cross product of the point map's image gradients, oriented toward the camera
    gx = np.gradient(pts, axis=1)
    gy = np.gradient(pts, axis=0)
    nrm = np.cross(gx, gy)
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True) + 1e-9
    view = np.stack([rays.xn, rays.yn, np.ones_like(rays.xn)], -1) @ Rw.T
    view /= np.linalg.norm(view, axis=-1, keepdims=True)
    nrm *= -np.sign((nrm * view).sum(-1, keepdims=True) + 1e-12)
    albedo = srgb_to_linear(image.astype(np.float32) / 255.0) / 1.1  # undo the mean day illumination
    return GBuffer(albedo, np.zeros((H, W), np.float32) if emissive is None else emissive.astype(np.float32),
                   np.where(valid[..., None], pts, 0), np.where(valid[..., None], nrm, 0).astype(np.float32),
                   np.where(valid, depth, np.inf).astype(np.float32), view.astype(np.float32),
                   np.where(valid, GROUND, SKY).astype(np.int32), pose.center.copy())


# =============================================================================== shading
def shade_day(gb: GBuffer, sun: np.ndarray) -> np.ndarray:
    """Linear BGR radiance of a day scene: sun + sky light, distance haze, sky gradient."""
    sun = np.asarray(sun, np.float32) / np.linalg.norm(sun)
    ambient = rgb(0.50, 0.55, 0.62)
    sun_col = rgb(1.0, 0.95, 0.85) * 0.9
    ndl = np.clip(gb.normals @ sun, 0, None)
    light = ambient * (gb.ao[..., None] if gb.ao is not None else 1.0) + sun_col * ndl[..., None]
    img = gb.albedo * light
    sky = ~np.isfinite(gb.depth)
    elev = np.clip(gb.view_dirs[..., 2], 0, 1)[..., None]
    horizon, zenith = rgb(0.70, 0.76, 0.85), rgb(0.18, 0.34, 0.72)
    sky_col = horizon + (zenith - horizon) * np.sqrt(elev)
    dist = np.where(sky, 0.0, np.linalg.norm(gb.points - gb.camera_center.astype(np.float32), axis=-1))
    haze = (1.0 - np.exp(-dist / 500.0))[..., None]
    img = img * (1 - haze) + horizon * haze
    return np.where(sky[..., None], sky_col, img).astype(np.float32)


def night_shade(gb: GBuffer, lamps: Lamps, rng: np.random.Generator, radius: float = 45.0,
                window_strength: float = 0.35, step: int = 1) -> np.ndarray:
    """Linear BGR radiance at night: dark bluish ambient light, every street lamp within `radius`
    of the camera as a downward-facing point light (Lambert, 1/d^2 falloff at each pixel's 3D hit
    point), emissive windows and signs in warm random tints, and a dark, light-polluted sky.

    Lamp light is smooth, so it may be evaluated on every `step`-th pixel per axis and repeated
    (render uses its supersampling factor: one evaluation per output pixel).
    """
    ambient = rgb(0.010, 0.012, 0.020) * rng.uniform(0.8, 1.2)
    H, W = gb.depth.shape
    hit = np.isfinite(gb.depth[::step, ::step])
    light = np.empty(hit.shape + (3,), np.float32)
    light[:] = ambient
    # per-component flat arrays of the lit pixels keep the per-lamp loop cheap
    P = gb.points[::step, ::step][hit].T.astype(np.float32)
    N = gb.normals[::step, ::step][hit].T.astype(np.float32)
    acc = np.zeros((3, P.shape[1]), np.float32)
    near = np.linalg.norm(lamps.pos - gb.camera_center, axis=1) < radius
    for pos, col, pw in zip(lamps.pos[near].astype(np.float32), lamps.colour[near], lamps.power[near]):
        L = pos[:, None] - P
        d2 = np.einsum("ij,ij->j", L, L)
        inv = 1.0 / np.sqrt(d2 + np.float32(1e-6))
        ndl = np.maximum(np.einsum("ij,ij->j", N, L) * inv, 0)
        cone = np.clip(0.2 + 0.8 * L[2] * inv, 0, 1)  # lamps shine downward
        w = pw * ndl * cone / (d2 + np.float32(1.0))
        acc += col[:, None] * w
    light[hit] += acc.T
    if step > 1:
        light = np.repeat(np.repeat(light, step, 0), step, 1)[:H, :W]
    hit = np.isfinite(gb.depth)
    warm = rgb(1.0, 0.72, 0.42) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    # light from inside shows what is behind the glass: curtains and goods glow brighter than bare panes
    img = gb.albedo * light + window_strength * gb.emissive[..., None] * warm * np.clip(0.3 + 3.0 * gb.albedo, 0, 1.5)
    elev = np.clip(gb.view_dirs[..., 2], 0, 1)[..., None]
    sky_col = rgb(0.012, 0.010, 0.009) + (rgb(0.002, 0.003, 0.007) - rgb(0.012, 0.010, 0.009)) * np.sqrt(elev)
    return np.where(hit[..., None], img, sky_col).astype(np.float32)


def _lamp_glow(img: np.ndarray, depth: np.ndarray, camera: CameraSpec, pose: Pose, lamps: Lamps) -> None:
    """Add the glare of lamps that are in view and not hidden (in place, linear, output resolution)."""
    if len(lamps.pos) == 0:
        return
    cam = pose.transform(lamps.pos)
    rays = camera_rays(camera, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = cam[:, :2] / cam[:, 2:3]
    # only lamps inside the field of view: the radial model folds far-off points back into the image
    front = ((cam[:, 2] > 0.3) & (xy[:, 0] > rays.col_lo[0]) & (xy[:, 0] < rays.col_hi[-1])
             & (xy[:, 1] > rays.row_lo[0]) & (xy[:, 1] < rays.row_hi[-1]))
    if not front.any():
        return
    uv = distort(camera, xy[front])
    H, W = depth.shape
    for (u, v), z, col in zip(uv, cam[front, 2], lamps.colour[front]):
        j, i = int(u), int(v)
        if not (0 <= i < H and 0 <= j < W) or depth[i, j] < z - 0.2:
            continue
        sigma = float(np.clip(0.35 * camera.params[0] / z, 1.0, 0.05 * camera.width))
        r = int(4 * sigma) + 1
        y0, y1, x0, x1 = max(i - r, 0), min(i + r + 1, H), max(j - r, 0), min(j + r + 1, W)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d2 = (xx + 0.5 - u) ** 2 + (yy + 0.5 - v) ** 2
        glow = 0.6 * np.exp(-d2 / (2 * sigma ** 2)) + 3.0 * np.exp(-d2 / (2 * (0.25 * sigma) ** 2))
        img[y0:y1, x0:x1] += glow[..., None].astype(np.float32) * (0.5 * col + 0.5)


def develop(lin: np.ndarray, depth: np.ndarray, camera: CameraSpec, pose: Pose, lamps: Lamps | None,
            night: bool, rng: np.random.Generator, appearance: bool = True) -> np.ndarray:
    """Output-resolution linear radiance -> BGR uint8: lamp glare and bloom at night, exposure,
    white balance, gamma, and sensor blur/noise (strong at night) when `appearance`."""
    if night:
        if lamps is not None:
            _lamp_glow(lin, depth, camera, pose, lamps)
        bright = np.clip(lin - 0.6, 0, None)
        lin = lin + 0.5 * cv2.GaussianBlur(bright, (0, 0), 0.01 * camera.width + 1.0)  # bloom
        gain = rng.uniform(2.5, 4.0) if appearance else 3.0
    else:
        gain = rng.uniform(0.85, 1.15) if appearance else 1.0
    if appearance:
        lin = lin * rng.uniform(0.96, 1.04, 3).astype(np.float32)  # white balance
    out = linear_to_srgb(lin * gain) * 255.0
    if appearance and night:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.6, 1.0))
        shot = np.sqrt(np.clip(out, 0, None)) * rng.standard_normal(out.shape).astype(np.float32) * 0.5
        out = out + shot + rng.normal(0, rng.uniform(2.0, 4.0), out.shape).astype(np.float32)
    elif appearance:
        out = out + rng.normal(0, 1.0, out.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def render(scene: Scene, camera: CameraSpec, pose: Pose, night: bool = False,
           rng: np.random.Generator | None = None, ss: int | None = None, appearance: bool = True):
    """Render one view: (BGR uint8 image (H, W, 3), depth (H, W) float32 camera z, inf for sky).

    The depth belongs to the exact ray through each pixel centre (j + 0.5, i + 0.5), so
    X = R^T (depth * [x_n, y_n, 1] - t) with (x_n, y_n) the undistorted pixel. `rng` drives the
    photometric randomness (exposure, white balance, sensor noise; none if appearance=False).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    ss = scene.params["supersample"] if ss is None else ss
    gb = gbuffer(scene, camera, pose, ss)
    lin = night_shade(gb, scene.lamps, rng, step=ss) if night else shade_day(gb, scene.sun)
    del gb
    if ss > 1:
        lin = cv2.resize(lin, (camera.width, camera.height), interpolation=cv2.INTER_AREA)
    depth = trace(scene, camera, pose, 1)[0]
    return develop(lin, depth, camera, pose, scene.lamps, night, rng, appearance), depth


def to_night(image: np.ndarray, depth: np.ndarray, camera: CameraSpec, pose: Pose, lamps: Lamps,
             rng: np.random.Generator | None = None, emissive: np.ndarray | None = None) -> np.ndarray:
    """The night rendering applied to any BGR uint8 day image with a depth map (camera z; inf, 0 or
    nan for sky) and world-frame `lamps`: a reusable day-to-night transfer with physically placed lights."""
    rng = np.random.default_rng(0) if rng is None else rng
    gb = gbuffer_from_image(image, depth, camera, pose, emissive)
    return develop(night_shade(gb, lamps, rng), gb.depth, camera, pose, lamps, True, rng)


