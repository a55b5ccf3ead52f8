"""Ray casting: the nearest facade or ground hit of every (sub)pixel's ray."""
from __future__ import annotations

import numpy as np

from mmcrossvit.colmap_io import CameraSpec
from mmcrossvit.geometry import Pose

from .lens import Rays, camera_rays
from .scene import Facades, Scene

SKY, GROUND = -1, -2      # surface ids of pixels that hit no facade
NEAR = 0.05               # metres; hits closer than this are ignored (near clipping plane)


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Clip a camera-frame polygon to z > NEAR (Sutherland-Hodgman against one plane)."""
    out = []
    for i in range(len(poly)):
        p, q = poly[i], poly[(i + 1) % len(poly)]
        if p[2] > NEAR:
            out.append(p)
        if (p[2] > NEAR) != (q[2] > NEAR):
            out.append(p + (NEAR - p[2]) / (q[2] - p[2]) * (q - p))
    return np.array(out)


def _screen_boxes(F: Facades, pose: Pose, rays: Rays):
    """(facade, r0, r1, c0, c1) for every front-facing facade whose projection can cover a pixel."""
    o = pose.center
    front = F.sign * (o[F.axis] - F.c) > 1e-9
    cam = (F.corners - o) @ pose.R.T
    z = cam[..., 2]
    cand = np.nonzero(front & (z > NEAR).any(1))[0]
    if len(cand) == 0:
        return []
    lo = np.empty((len(cand), 2))
    hi = np.empty((len(cand), 2))
    inside = (z[cand] > NEAR).all(1)
    pts = cam[cand]
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = pts[..., :2] / pts[..., 2:3]
    lo[inside], hi[inside] = proj[inside].min(1), proj[inside].max(1)
    for k in np.nonzero(~inside)[0]:
        poly = _clip_near(pts[k])
        pr = poly[:, :2] / poly[:, 2:3]
        lo[k], hi[k] = pr.min(0), pr.max(0)
    W, H = len(rays.col_lo), len(rays.row_lo)
    c0 = np.searchsorted(rays.col_hi, lo[:, 0], "left")
    c1 = np.searchsorted(rays.col_lo, hi[:, 0], "right")
    r0 = np.searchsorted(rays.row_hi, lo[:, 1], "left")
    r1 = np.searchsorted(rays.row_lo, hi[:, 1], "right")
    ok = (c1 > c0) & (r1 > r0) & (c0 < W) & (r0 < H)
    return [(int(f), int(a), int(b), int(cc), int(d)) for f, a, b, cc, d in
            zip(cand[ok], r0[ok], np.minimum(r1[ok], H), c0[ok], np.minimum(c1[ok], W))]


def trace(scene: Scene, camera: CameraSpec, pose: Pose, ss: int = 1):
    """Nearest hit per (sub)pixel: (depth (H, W) float32 camera z, inf for sky; surface id (H, W)
    int32: facade index, GROUND or SKY; world ray directions (3, H, W) with camera z = 1; rays)."""
    rays = camera_rays(camera, ss)
    Rw = pose.R.T.astype(np.float32)  # camera-to-world rotation
    d = [Rw[i, 0] * rays.xn + Rw[i, 1] * rays.yn + Rw[i, 2] for i in range(3)]
    o = pose.center
    H, W = rays.xn.shape
    depth = np.full((H, W), np.inf, np.float32)
    sid = np.full((H, W), SKY, np.int32)
    if o[2] > 0:
        with np.errstate(divide="ignore"):
            tg = np.float32(-o[2]) / d[2]
        m = (d[2] < 0) & (tg > NEAR)
        depth[m] = tg[m]
        sid[m] = GROUND
    F = scene.facades
    for f, r0, r1, c0, c1 in _screen_boxes(F, pose, rays):
        sl = (slice(r0, r1), slice(c0, c1))
        ax = int(F.axis[f])
        dA, dB = d[ax][sl], d[1 - ax][sl]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.float32(F.c[f] - o[ax]) / dA
        a = np.float32(o[1 - ax]) + t * dB
        z = np.float32(o[2]) + t * d[2][sl]
        best = depth[sl]
        m = (t > NEAR) & (t < best) & (a >= F.a0[f]) & (a <= F.a1[f]) & (z >= 0) & (z <= F.height[f])
        best[m] = t[m]
        sid[sl][m] = f
    return depth, sid, np.stack(d), rays


