"""A synthetic town with exact geometry: a small, offline stand-in for Aachen Day-Night.

The town is a grid of blocks of box-shaped buildings separated by streets. World frame: metres,
z up, ground plane z = 0, open sky. Every vertical facade is a textured rectangle and the ground
is a textured plane; images are ray-cast per pixel through the exact camera model (COLMAP's
SIMPLE_RADIAL, pixel centres at +0.5), so poses, intrinsics and depth maps are ground truth.

Rendering, per pixel: the ray of the (undistorted) normalized coordinate is intersected with the
ground and with every facade whose projection covers the pixel (nearest hit wins); the hit's
texture coordinate indexes mip-mapped texture atlases (unique per facade: colour, windows, shops,
signs, graffiti, stains) multiplied by a shared high-frequency detail layer (plaster grain,
bricks, ashlar, paving setts). Images are rendered at `supersample` x the output size and reduced
with INTER_AREA. Day images use a sun + sky model; night images use dark ambient light, wall-mounted
street lamps (coloured point lights with 1/d^2 falloff evaluated at each pixel's 3D hit point),
emissive lit windows and shop signs, lamp glow, sensor noise and blur (`night_shade`, reusable
through `gbuffer_from_image` on any image with a depth map).

Dataset output follows Aachen's layout (mmcrossvit.layout):
    <out>/images/images_upright/db/0000.jpg ...
    <out>/images/images_upright/query/day/synth/day_0000.jpg ...
    <out>/images/images_upright/query/night/synth/night_0000.jpg ...
    + NVM / reference model / query lists / ground-truth poses, contact_sheet.png, scene.json

    python -m datasets.synthetic_town --preset tiny --out datasets/tiny
"""
from __future__ import annotations

import argparse
import functools
import math
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mmcrossvit.colmap_io import CameraSpec
from mmcrossvit.geometry import Pose
from mmcrossvit.layout import IMAGES, Dataset, write_metadata
from mmcrossvit.storage import atomic_path, read_json, write_json

GENERATOR_VERSION = 1
SKY, GROUND = -1, -2      # surface ids of pixels that hit no facade
NEAR = 0.05               # metres; hits closer than this are ignored (near clipping plane)
DB_FOCAL = 0.8            # database focal length, in units of image width (~64 deg horizontal FOV)

PRESETS: dict[str, dict] = {
    "tiny": dict(num_db=40, num_day=5, num_night=5, width=320, height=240, supersample=2,
                 blocks_x=2, blocks_y=2, block_size=24.0, street_width=12.0,
                 min_height=8.0, max_height=20.0, num_styles=5,
                 facade_ppm=24.0, ground_ppm=12.0, detail_ppm=64.0, detail_tile=1024,
                 query_focal_min=0.65, query_focal_max=1.05, max_distortion=0.03,
                 portrait_fraction=0.2, jpeg_quality=95, workers=1),
    "demo": dict(num_db=300, num_day=50, num_night=50, width=640, height=480, supersample=2,
                 blocks_x=4, blocks_y=4, block_size=30.0, street_width=12.0,
                 min_height=8.0, max_height=20.0, num_styles=7,
                 facade_ppm=32.0, ground_ppm=16.0, detail_ppm=96.0, detail_tile=2048,
                 query_focal_min=0.65, query_focal_max=1.05, max_distortion=0.03,
                 portrait_fraction=0.2, jpeg_quality=95, workers=2),
}

PARAM_HELP = {
    "num_db": "number of database images (spread evenly along the inner streets)",
    "num_day": "number of day queries (novel positions, headings, pitch and focal lengths)",
    "num_night": "number of night queries (same sampling as day, rendered at night)",
    "width": "image width in pixels (portrait queries swap width and height)",
    "height": "image height in pixels",
    "supersample": "render at this many times the output size per axis, then reduce (anti-aliasing)",
    "blocks_x": "number of building blocks along x",
    "blocks_y": "number of building blocks along y",
    "block_size": "side of a square block in metres",
    "street_width": "street width in metres (wall to wall, sidewalks included)",
    "min_height": "lowest building height in metres",
    "max_height": "highest building height in metres",
    "num_styles": "number of architectural styles shared by buildings (fewer = more perceptual aliasing)",
    "facade_ppm": "texture resolution of street facades in pixels per metre (side walls get half)",
    "ground_ppm": "texture resolution of the ground in pixels per metre",
    "detail_ppm": "resolution of the shared high-frequency detail layer in pixels per metre",
    "detail_tile": "side in pixels of the (periodic) detail layer tile; its period is tile/ppm metres",
    "query_focal_min": "smallest query focal length in units of image width",
    "query_focal_max": "largest query focal length in units of image width",
    "max_distortion": "queries draw the SIMPLE_RADIAL k uniformly from [-this, this]; database k = 0",
    "portrait_fraction": "fraction of queries taken in portrait orientation",
    "jpeg_quality": "JPEG quality of the written images",
    "workers": "rendering threads (results do not depend on it)",
}
# Parameters that only change how the files are produced, not what they contain.
NON_CONTENT = {"workers"}


def rgb(r, g, b) -> np.ndarray:
    """A BGR float colour from RGB components in [0, 1] (all canvases here are BGR like OpenCV)."""
    return np.array([b, g, r], dtype=np.float32)


# =============================================================================== noise helpers
def value_noise(shape, rng, cell: float, octaves: int = 3) -> np.ndarray:
    """Fractal noise (zero mean, std ~0.7): random grids enlarged bicubically, `cell` px per grid step."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = max(cell / 2 ** o, 1.0)
        gh, gw = int(h / c) + 3, int(w / c) + 3
        grid = rng.standard_normal((gh, gw)).astype(np.float32)
        big = cv2.resize(grid, (max(int(gw * c), w), max(int(gh * c), h)), interpolation=cv2.INTER_CUBIC)
        # random phase so grid lines never align with texture edges
        oy = int(rng.integers(0, big.shape[0] - h + 1))
        ox = int(rng.integers(0, big.shape[1] - w + 1))
        out += amp * big[oy:oy + h, ox:ox + w]
        total += amp * amp
        amp *= 0.5
    return out / math.sqrt(total)


def periodic_noise(rng, n: int, beta: float) -> np.ndarray:
    """Tileable n x n noise with power spectrum ~ 1/f^beta (FFT-filtered white noise), unit std."""
    spec = np.fft.rfft2(rng.standard_normal((n, n)))
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec *= f ** (-beta / 2)
    spec[0, 0] = 0.0
    out = np.fft.irfft2(spec, s=(n, n)).astype(np.float32)
    return out / (out.std() + 1e-8)


def masonry(rng, n: int, ppm: float, row_h, length, joint: float, bond: bool = False,
            tone: float = 0.12, joint_value: float = -0.45) -> np.ndarray:
    """Tileable n x n relief of stones in rows (bricks, ashlar, setts): per-stone tone, dark joints.

    Row heights and stone lengths are drawn from the given ranges (metres) and rescaled so that
    rows and stones exactly fill the tile, which keeps the pattern periodic.
    """
    out = np.empty((n, n), np.float32)
    n_rows = max(1, round(n / (np.mean(row_h) * ppm)))
    heights = rng.uniform(*row_h, n_rows)
    edges_y = np.concatenate([[0.0], np.cumsum(heights / heights.sum() * n)])
    joint_px = max(joint * ppm, 0.7)
    xs = np.arange(n) + 0.5
    ys = np.arange(n) + 0.5
    for r in range(n_rows):
        y0, y1 = edges_y[r], edges_y[r + 1]
        rows = np.nonzero((ys >= y0) & (ys < y1))[0]
        if len(rows) == 0:
            continue
        n_st = max(1, round(n / (np.mean(length) * ppm)))
        lens = np.full(n_st, 1.0) if bond else rng.uniform(*length, n_st)
        cuts = np.concatenate([[0.0], np.cumsum(lens / lens.sum() * n)])
        shift = (r % 2) * 0.5 * n / n_st if bond else rng.uniform(0, n)
        x = (xs - shift) % n
        k = np.clip(np.searchsorted(cuts, x, side="right") - 1, 0, n_st - 1)
        dx = np.minimum(x - cuts[k], cuts[k + 1] - x)
        dy = np.minimum(ys[rows] - y0, y1 - ys[rows])
        dist = np.minimum(dx[None, :], dy[:, None])
        tones = rng.normal(0.0, tone, n_st).astype(np.float32)
        # joint (flat) then a short bevel so each stone edge is a soft, strong gradient
        edge = np.clip((dist - 0.5 * joint_px) / joint_px, 0.0, 1.0)
        out[rows] = tones[k][None, :] * edge + joint_value * (1.0 - edge) ** 1.5
    return out


# =============================================================================== words & text
_SYLLABLES = ["ka", "ro", "mi", "len", "ber", "to", "sa", "va", "ne", "dor", "lu", "chi", "fe", "han",
              "pi", "stra", "ko", "ma", "ti", "gel", "ur", "bo", "ze", "wan", "li", "mar", "es", "tor"]
_SHOP_WORDS = ["CAFE", "BAR", "BAKERY", "HOTEL", "BANK", "PIZZA", "KIOSK", "APOTHEKE", "BOOKS", "OPTIK",
               "DELI", "FRISEUR", "MARKT", "SUSHI", "BISTRO", "SHOES", "BLUMEN", "POST", "TABAK", "WEIN"]


def random_word(rng, lo: int = 2, hi: int = 4) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(int(rng.integers(lo, hi + 1)))).upper()


def draw_text(img, text: str, box, colour, rng, thickness_frac: float = 0.12) -> None:
    """Blend `text` centred and scaled into the pixel box (x0, y0, x1, y1) of a float image.

    OpenCV only draws text on 8-bit images, so it is drawn into a mask and blended.
    """
    x0, y0, x1, y1 = [int(v) for v in box]
    bw, bh = x1 - x0, y1 - y0
    if bw < 6 or bh < 4:
        return
    font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX,
                           cv2.FONT_HERSHEY_COMPLEX]))
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = min(0.9 * bw / tw, 0.75 * bh / th)
    thick = max(1, int(round(thickness_frac * th * scale)))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    mask = np.zeros((bh, bw), np.uint8)
    cv2.putText(mask, text, ((bw - tw) // 2, (bh + th) // 2), font, scale, 255, thick, cv2.LINE_AA)
    m = (mask.astype(np.float32) / 255.0)[..., None]
    region = img[y0:y1, x0:x1]
    region *= 1.0 - m
    region += m * np.asarray(colour, np.float32)


# =============================================================================== styles
@dataclass
class Style:
    """An architectural style; several buildings share one, which creates perceptual aliasing."""
    material: int            # detail channel: 0 plaster, 1 brick, 2 ashlar
    colour: np.ndarray       # BGR wall colour (sRGB, 0..1)
    trim: np.ndarray         # cornices, window surrounds
    frame: np.ndarray        # window frames / mullions
    glass: np.ndarray
    shutter: np.ndarray | None
    floor_h: float
    bay: float
    win_w: float
    win_h: float
    head: str                # window head: plain, lintel, pediment
    mullions: str            # none, cross, vertical, grid
    bands: bool              # string courses between floors
    quoins: bool             # corner stones
    shops: float             # probability that a street facade has shops on the ground floor


_WALL_COLOURS = [rgb(.86, .80, .68), rgb(.78, .70, .58), rgb(.93, .90, .84), rgb(.72, .52, .42),
                 rgb(.80, .74, .55), rgb(.66, .70, .72), rgb(.88, .76, .66), rgb(.62, .56, .50),
                 rgb(.90, .86, .70), rgb(.74, .80, .74)]
_BRICK_COLOURS = [rgb(.62, .32, .24), rgb(.55, .36, .28), rgb(.70, .45, .33), rgb(.48, .30, .26)]
_TRIM_COLOURS = [rgb(.95, .94, .90), rgb(.80, .78, .74), rgb(.55, .52, .48), rgb(.92, .88, .78)]
_FRAME_COLOURS = [rgb(.95, .95, .93), rgb(.20, .20, .22), rgb(.40, .28, .18), rgb(.25, .35, .30)]
_SHUTTER_COLOURS = [rgb(.22, .40, .28), rgb(.30, .38, .55), rgb(.55, .20, .16), rgb(.45, .42, .38)]


def make_style(rng) -> Style:
    material = int(rng.choice([0, 0, 1, 2], p=[0.35, 0.2, 0.3, 0.15]))
    colour = (_BRICK_COLOURS[rng.integers(len(_BRICK_COLOURS))] if material == 1
              else _WALL_COLOURS[rng.integers(len(_WALL_COLOURS))])
    return Style(
        material=material, colour=colour,
        trim=_TRIM_COLOURS[rng.integers(len(_TRIM_COLOURS))],
        frame=_FRAME_COLOURS[rng.integers(len(_FRAME_COLOURS))],
        glass=rgb(*rng.uniform([0.10, 0.13, 0.16], [0.22, 0.26, 0.32])),
        shutter=_SHUTTER_COLOURS[rng.integers(len(_SHUTTER_COLOURS))] if rng.random() < 0.35 else None,
        floor_h=float(rng.uniform(3.0, 3.5)), bay=float(rng.uniform(2.4, 3.4)),
        win_w=float(rng.uniform(0.9, 1.4)), win_h=float(rng.uniform(1.4, 1.9)),
        head=str(rng.choice(["plain", "lintel", "pediment"])),
        mullions=str(rng.choice(["none", "cross", "vertical", "grid"])),
        bands=bool(rng.random() < 0.5), quoins=bool(rng.random() < 0.35),
        shops=float(rng.choice([0.2, 0.6, 0.9])))


# =============================================================================== facade textures
class Canvas:
    """A facade texture under construction: BGR albedo, emissive and 'wall material' weight.

    Drawing helpers take metres: s along the facade (left to right seen from outside), z height.
    """

    def __init__(self, width_m: float, height_m: float, ppm: float):
        self.ppm = ppm
        self.w_m, self.h_m = width_m, height_m
        self.W = max(int(math.ceil(width_m * ppm)), 2)
        self.H = max(int(math.ceil(height_m * ppm)), 2)
        self.img = np.zeros((self.H, self.W, 3), np.float32)
        self.emis = np.zeros((self.H, self.W), np.float32)
        self.wall = np.ones((self.H, self.W), np.float32)

    def px(self, s: float) -> int:
        return int(round(s * self.ppm))

    def box(self, s0, s1, z0, z1):
        """Pixel slices of the facade rectangle [s0, s1] x [z0, z1] (metres), clipped."""
        c0, c1 = max(self.px(s0), 0), min(self.px(s1), self.W)
        r0, r1 = max(self.px(self.h_m - z1), 0), min(self.px(self.h_m - z0), self.H)
        return slice(r0, max(r1, r0)), slice(c0, max(c1, c0))

    def fill(self, s0, s1, z0, z1, colour, wall: float | None = 0.0, emis: float | None = None):
        rs, cs = self.box(s0, s1, z0, z1)
        self.img[rs, cs] = colour
        if wall is not None:
            self.wall[rs, cs] = wall
        if emis is not None:
            self.emis[rs, cs] = emis
        return rs, cs

    def shade(self, s0, s1, z0, z1, factor):
        rs, cs = self.box(s0, s1, z0, z1)
        self.img[rs, cs] *= factor
        return rs, cs

    def pixel_box(self, s0, s1, z0, z1):
        rs, cs = self.box(s0, s1, z0, z1)
        return cs.start, rs.start, cs.stop, rs.stop


def draw_window(cv: Canvas, rng, style: Style, s0, s1, z0, z1, lit: float, shop: bool = False) -> None:
    """One window: surround, glass with reflection, curtains, mullions, sill, shutters, head."""
    sur = 0.1
    trim = style.trim * rng.uniform(0.9, 1.05)
    cv.fill(s0 - sur, s1 + sur, z0 - sur, z1 + sur, trim, wall=0.3)
    cv.fill(s0 - 0.04, s1 + 0.04, z0 - 0.04, z1 + 0.04, style.frame * rng.uniform(0.85, 1.1))
    rs, cs = cv.box(s0, s1, z0, z1)
    h, w = rs.stop - rs.start, cs.stop - cs.start
    if h < 2 or w < 2:
        return
    # glass: a vertical reflection gradient, a diagonal highlight and per-window tint
    ramp = np.linspace(1.5, 0.6, h, dtype=np.float32)[:, None]
    glass = style.glass * rng.uniform(0.7, 1.3, 3).astype(np.float32)
    pane = ramp[..., None] * glass
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    streak = np.exp(-((xx - yy * rng.uniform(0.3, 1.2) - rng.uniform(-w, w)) / max(w * 0.12, 1.0)) ** 2)
    pane = pane + (0.12 * streak)[..., None]
    emis = np.full((h, w), lit, np.float32)
    if shop:
        # display shelves with goods: small coloured boxes on horizontal lines
        for k in range(int(rng.integers(2, 5))):
            y = int(h * (0.3 + 0.6 * k / 4))
            pane[y:y + max(h // 40, 1)] = rgb(.35, .30, .25)
            for _ in range(int(rng.integers(3, 10))):
                gx = int(rng.integers(0, max(w - 3, 1)))
                gw, gh = int(rng.integers(2, max(w // 8, 3))), int(rng.integers(2, max(h // 8, 3)))
                pane[max(y - gh, 0):y, gx:gx + gw] = rng.uniform(0.1, 0.9, 3)
    elif rng.random() < 0.45:
        # curtains with folds, on both sides or as a net curtain over the lower part
        col = rng.uniform(0.35, 0.95, 3).astype(np.float32)
        folds = 1.0 + 0.18 * np.sin(xx * 2 * np.pi / max(0.09 * cv.ppm, 2.0) + rng.uniform(0, 6))
        if rng.random() < 0.5:
            cover = (xx < w * rng.uniform(0.15, 0.4)) | (xx > w * rng.uniform(0.6, 0.85))
        else:
            cover = yy > h * rng.uniform(0.3, 0.6)
        pane = np.where(cover[..., None], (col * folds[..., None]).astype(np.float32), pane)
        emis = np.where(cover, emis * 0.8, emis)
    cv.img[rs, cs] = pane
    cv.wall[rs, cs] = 0.0
    cv.emis[rs, cs] = emis
    # mullions / glazing bars
    bar = max(0.05, 1.2 / cv.ppm)
    sm, zm = (s0 + s1) / 2, z0 + (z1 - z0) * 0.65
    kind = "none" if shop else style.mullions
    if kind in ("cross", "vertical", "grid"):
        cv.fill(sm - bar / 2, sm + bar / 2, z0, z1, style.frame, emis=0.0)
    if kind in ("cross", "grid"):
        cv.fill(s0, s1, zm - bar / 2, zm + bar / 2, style.frame, emis=0.0)
    if kind == "grid":
        zq = z0 + (z1 - z0) * 0.32
        cv.fill(s0, s1, zq - bar / 2, zq + bar / 2, style.frame, emis=0.0)
    # sill and head
    cv.fill(s0 - 0.15, s1 + 0.15, z0 - 0.18, z0 - 0.08, trim * 1.05, wall=0.2)
    cv.shade(s0 - 0.15, s1 + 0.15, z0 - 0.24, z0 - 0.18, 0.6)  # shadow under the sill
    if style.head == "lintel":
        cv.fill(s0 - 0.2, s1 + 0.2, z1 + 0.1, z1 + 0.3, trim, wall=0.2)
        cv.fill(sm - 0.12, sm + 0.12, z1 + 0.08, z1 + 0.36, trim * 0.9, wall=0.2)  # keystone
    elif style.head == "pediment":
        x0, y0, x1, _ = cv.pixel_box(s0 - 0.25, s1 + 0.25, z1 + 0.12, z1 + 0.12)
        _, yt, _, _ = cv.pixel_box(sm, sm, z1 + 0.55, z1 + 0.55)
        pts = np.array([[x0, y0], [x1, y0], [(x0 + x1) // 2, yt]], np.int32)
        cv2.fillPoly(cv.img, [pts], tuple(float(v) for v in trim), cv2.LINE_AA)
        cv2.fillPoly(cv.wall, [pts], 0.2)
        cv2.line(cv.img, (x0, y0), (x1, y0), tuple(float(v) for v in trim * 0.55), max(1, cv.px(0.04)))
    # shutters (sometimes closed, which hides the glass and its light)
    if style.shutter is not None and not shop:
        sw = (s1 - s0) / 2
        closed = rng.random() < 0.15
        spans = [(s0, sm), (sm, s1)] if closed else [(s0 - sw - 0.06, s0 - 0.06), (s1 + 0.06, s1 + sw + 0.06)]
        for a, b in spans:
            rs2, cs2 = cv.fill(a, b, z0, z1, style.shutter * rng.uniform(0.9, 1.1), emis=0.0 if closed else None)
            cv.img[rs2.start:rs2.stop:max(cv.px(0.06), 2), cs2] *= 0.6  # slats
    # flower box
    if not shop and rng.random() < 0.12:
        rs2, cs2 = cv.fill(s0, s1, z0 - 0.35, z0 - 0.15, rgb(.30, .22, .15))
        for _ in range(int(rng.integers(4, 12))):
            x = int(rng.integers(cs2.start, max(cs2.stop, cs2.start + 1)))
            y = int(rng.integers(max(rs2.start - cv.px(0.15), 0), max(rs2.start, 1)))
            cv2.circle(cv.img, (x, y), max(1, cv.px(0.05)), tuple(float(v) for v in rng.uniform(0.2, 1.0, 3)), -1)
    # a rain streak below the sill
    if rng.random() < 0.4:
        rs2, cs2 = cv.box(s0, s1, z0 - rng.uniform(0.6, 2.0), z0 - 0.24)
        hh, ww = rs2.stop - rs2.start, cs2.stop - cs2.start
        if hh > 1 and ww > 1:
            prof = np.linspace(0.25, 0.0, hh, dtype=np.float32)[:, None] * rng.uniform(0.5, 1.0, ww).astype(np.float32)
            cv.img[rs2, cs2] *= (1.0 - prof)[..., None]


def facade_texture(rng, width: float, height: float, ppm: float, style: Style, street: bool,
                   lamps: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Texture of one facade: (BGR uint8, aux uint8 with [emissive, wall-material weight])."""
    cv = Canvas(width, height, ppm)
    colour = (style.colour * rng.uniform(0.88, 1.12, 3)).astype(np.float32)
    tint = 1.0 + 0.05 * value_noise((cv.H, cv.W), rng, 5.0 * ppm, 2)[..., None] * rng.standard_normal(3).astype(np.float32)
    lum = 1.0 + 0.12 * value_noise((cv.H, cv.W), rng, 2.5 * ppm) + 0.06 * value_noise((cv.H, cv.W), rng, 0.3 * ppm, 2)
    cv.img[:] = colour * tint * lum[..., None]
    # moisture stains: soft dark blotches
    for _ in range(int(rng.integers(1, 5))):
        blot = np.zeros((cv.H, cv.W), np.float32)
        cv2.ellipse(blot, (int(rng.integers(0, cv.W)), int(rng.integers(0, cv.H))),
                    (int(rng.uniform(0.3, 2.0) * ppm), int(rng.uniform(0.3, 2.5) * ppm)),
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        blot = cv2.GaussianBlur(blot, (0, 0), max(0.3 * ppm, 1.0))
        cv.img *= (1.0 - rng.uniform(0.08, 0.25) * blot)[..., None]
    lit_p = rng.uniform(0.2, 0.55)
    trim = style.trim * rng.uniform(0.9, 1.05, 3).astype(np.float32)

    if street:
        gf = float(rng.uniform(3.6, 4.4))
        n_up = max(int((height - gf - 0.7) / style.floor_h), 0)
        n_bays = max(int(width / style.bay), 1)
        bay = width / n_bays
        ww = min(style.win_w, bay - 0.7)
        wh = min(style.win_h, style.floor_h - 1.1)
        # floors above the ground floor
        for k in range(n_up):
            zb = gf + k * style.floor_h
            if style.bands:
                cv.fill(0, width, zb - 0.06, zb + 0.1, trim, wall=0.3)
                cv.shade(0, width, zb - 0.12, zb - 0.06, 0.75)
            for j in range(n_bays):
                if rng.random() < 0.04 or ww < 0.4:
                    continue  # blind bay
                sc = (j + 0.5) * bay
                lit = float(rng.uniform(0.5, 1.0)) if rng.random() < lit_p else 0.0
                draw_window(cv, rng, style, sc - ww / 2, sc + ww / 2, zb + 0.9, zb + 0.9 + wh, lit)
        # ground floor: shops with signs, or doors and small windows
        cv.fill(0, width, 0, 0.5, trim * 0.8, wall=1.0)
        if rng.random() < style.shops and width > 3.0:
            j = 0
            while j < n_bays:
                span = int(min(rng.integers(1, 4), n_bays - j))
                a, b = j * bay + 0.25, (j + span) * bay - 0.25
                sign_col = rng.uniform(0.05, 0.95, 3).astype(np.float32)
                sign_lit = 0.7 if rng.random() < 0.5 else 0.0
                cv.fill(a, b, gf - 1.0, gf - 0.3, sign_col, emis=sign_lit * 0.6)
                text_col = np.float32(1.0) - np.round(sign_col.mean()) if rng.random() < 0.7 else rng.uniform(0, 1, 3)
                word = str(rng.choice(_SHOP_WORDS)) + (" " + random_word(rng, 1, 2) if rng.random() < 0.6 else "")
                x0, y0, x1, y1 = cv.pixel_box(a, b, gf - 1.0, gf - 0.3)
                draw_text(cv.img, word, (x0, y0, x1, y1), text_col, rng)
                if sign_lit:
                    cv.emis[y0:y1, x0:x1] = np.maximum(cv.emis[y0:y1, x0:x1], 0.9 * (cv.img[y0:y1, x0:x1].mean(-1) > 0.5))
                door_at = rng.uniform(a, max(b - 1.2, a))
                shop_lit = float(rng.uniform(0.6, 1.0)) if rng.random() < 0.5 else 0.0
                draw_window(cv, rng, style, a + 0.1, b - 0.1, 0.6, gf - 1.25, shop_lit, shop=True)
                rs, cs = cv.fill(door_at, door_at + 1.1, 0.0, 2.4, rgb(.16, .14, .12) * rng.uniform(0.8, 1.6), emis=0.0)
                cv.img[rs, cs] *= 1.0 + 0.25 * value_noise((rs.stop - rs.start, cs.stop - cs.start), rng, 0.2 * ppm, 2)[..., None]
                cv.fill(door_at + 0.15, door_at + 0.95, 1.0, 2.2, style.glass * 1.3, emis=shop_lit * 0.6)
                j += span
        else:
            door_bays = set(rng.choice(n_bays, size=min(n_bays, int(rng.integers(1, 3))), replace=False).tolist())
            for j in range(n_bays):
                sc = (j + 0.5) * bay
                if j in door_bays:
                    wood = rgb(*rng.uniform([0.2, 0.12, 0.06], [0.55, 0.35, 0.2]))
                    cv.fill(sc - 0.75, sc + 0.75, 0.0, 2.75, trim, wall=0.3)
                    cv.fill(sc - 0.6, sc + 0.6, 0.0, 2.6, wood)
                    for pz in (0.3, 1.4):  # panels
                        cv.shade(sc - 0.45, sc - 0.08, pz, pz + 0.9, 0.75)
                        cv.shade(sc + 0.08, sc + 0.45, pz, pz + 0.9, 0.75)
                    # house number plate
                    x0, y0, x1, y1 = cv.pixel_box(sc + 0.85, sc + 1.15, 2.0, 2.22)
                    cv.img[y0:y1, x0:x1] = rgb(.1, .2, .55)
                    draw_text(cv.img, str(int(rng.integers(1, 120))), (x0, y0, x1, y1), rgb(1, 1, 1), rng, 0.2)
                elif ww >= 0.4:
                    lit = float(rng.uniform(0.5, 1.0)) if rng.random() < lit_p else 0.0
                    draw_window(cv, rng, style, sc - ww / 2, sc + ww / 2, 1.2, min(1.2 + wh, gf - 0.6), lit)
                    if rng.random() < 0.5:  # window bars
                        for s in np.linspace(sc - ww / 2, sc + ww / 2, 6)[1:-1]:
                            cv.fill(s - 0.02, s + 0.02, 1.2, min(1.2 + wh, gf - 0.6), rgb(.1, .1, .1), emis=0.0)
        # cornice: a light band with a dark shadow line under it
        cv.fill(0, width, height - 0.45, height, trim, wall=0.3)
        cv.shade(0, width, height - 0.55, height - 0.45, 0.55)
        if style.quoins:
            for k, z in enumerate(np.arange(0.5, height - 0.5, 0.32)):
                wq = 0.45 if k % 2 else 0.3
                cv.fill(0, wq, z, z + 0.28, trim * 0.95, wall=0.5)
                cv.fill(width - wq, width, z, z + 0.28, trim * 0.95, wall=0.5)
        # graffiti tags and posters at street level
        for _ in range(int(rng.poisson(0.8))):
            pts = np.stack([rng.uniform(0, width, 1) + np.cumsum(rng.normal(0.25, 0.25, 8)),
                            rng.uniform(0.4, 1.8, 1) + np.cumsum(rng.normal(0, 0.25, 8))], 1)
            pix = np.stack([pts[:, 0] * ppm, (height - np.clip(pts[:, 1], 0.2, 2.4)) * ppm], 1).astype(np.int32)
            col = tuple(float(v) for v in rng.uniform(0, 1, 3))
            cv2.polylines(cv.img, [pix], False, col, max(1, int(rng.uniform(0.03, 0.09) * ppm)), cv2.LINE_AA)
        if rng.random() < 0.3:
            ps = float(rng.uniform(0, max(width - 0.8, 0.1)))
            x0, y0, x1, y1 = cv.pixel_box(ps, ps + 0.6, 1.0, 1.85)
            cv.img[y0:y1, x0:x1] = rng.uniform(0.1, 1.0, 3)
            hh = max((y1 - y0) // 4, 1)
            draw_text(cv.img, random_word(rng), (x0, y0, x1, y0 + hh), rng.uniform(0, 1, 3), rng)
            draw_text(cv.img, random_word(rng, 1, 2), (x0, y0 + hh, x1, y0 + 2 * hh), rng.uniform(0, 1, 3), rng)
        # drainpipe
        if rng.random() < 0.5:
            s = float(rng.choice([0.15, width - 0.3]))
            cv.fill(s, s + 0.1, 0, height - 0.4, rgb(.45, .45, .47), wall=0.0)
            for z in np.arange(1.0, height - 0.5, 2.0):
                cv.fill(s - 0.03, s + 0.13, z, z + 0.05, rgb(.2, .2, .2))
    else:
        # side / party walls: plain, with the occasional small window or a painted advert
        if rng.random() < 0.4:
            for _ in range(int(rng.integers(1, 5))):
                sc, zc = rng.uniform(0.8, max(width - 0.8, 0.9)), rng.uniform(3.0, max(height - 1.5, 3.1))
                lit = float(rng.uniform(0.5, 1.0)) if rng.random() < lit_p else 0.0
                draw_window(cv, rng, style, sc - 0.4, sc + 0.4, zc - 0.5, zc + 0.5, lit)
        if rng.random() < 0.25 and width > 4 and height > 8:
            a, b = rng.uniform(0.5, 1.5), width - rng.uniform(0.5, 1.5)
            z1 = height - rng.uniform(0.8, 2.0)
            z0 = max(z1 - rng.uniform(3.0, 6.0), 1.0)
            cv.fill(a, b, z0, z1, rng.uniform(0.1, 0.95, 3), wall=0.2)
            x0, y0, x1, y1 = cv.pixel_box(a, b, z0, z1)
            hh = (y1 - y0) // 3
            draw_text(cv.img, random_word(rng, 2, 3), (x0, y0, x1, y0 + 2 * hh), rng.uniform(0, 1, 3), rng)
            cv2.circle(cv.img, ((x0 + x1) // 2, y1 - hh // 2), max(hh // 3, 1), tuple(float(v) for v in rng.uniform(0, 1, 3)), -1, cv2.LINE_AA)
        cv.fill(0, width, height - 0.3, height, trim * 0.8, wall=0.3)
    # grime near the ground
    rs, cs = cv.box(0, width, 0, 1.5)
    n = rs.stop - rs.start
    if n > 0:
        ramp = np.linspace(1.0, 0.72, n, dtype=np.float32)[:, None] * (1 + 0.08 * value_noise((n, cv.W), rng, 0.4 * ppm, 2))
        cv.img[rs] *= ramp[..., None]
    # wall-mounted street lamps (their light is added at night)
    for s, z in lamps:
        cv.fill(s - 0.03, s + 0.03, z - 0.05, z + 0.35, rgb(.12, .12, .12))
        cv.fill(s - 0.14, s + 0.14, z - 0.25, z + 0.05, rgb(.10, .10, .10))
        cv.fill(s - 0.1, s + 0.1, z - 0.2, z, rgb(.85, .82, .65), emis=1.0)
    bgr = np.clip(cv.img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    aux = np.clip(np.stack([cv.emis, cv.wall], -1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return bgr, aux


# =============================================================================== detail & ground
def detail_tiles(rng, n: int, ppm: float) -> np.ndarray:
    """Tileable n x n x 4 uint8 relief (128 = neutral): plaster/asphalt grain, brick, ashlar, setts."""
    grain = 0.6 * periodic_noise(rng, n, 1.3) + 0.4 * periodic_noise(rng, n, 0.4)
    speck = (periodic_noise(rng, n, 0.0) > 2.4).astype(np.float32) * -0.8  # pits and pebbles
    ch0 = 0.35 * grain + speck
    brick = masonry(rng, n, ppm, (0.075, 0.075), (0.25, 0.25), 0.012, bond=True, tone=0.14, joint_value=0.35)
    ashlar = masonry(rng, n, ppm, (0.3, 0.55), (0.5, 1.2), 0.015, tone=0.1, joint_value=-0.5)
    setts = masonry(rng, n, ppm, (0.1, 0.14), (0.1, 0.22), 0.02, tone=0.15, joint_value=-0.6)
    chans = [ch0, brick + 0.25 * grain, ashlar + 0.25 * grain, setts + 0.3 * grain]
    return np.clip(np.stack(chans, -1) * 64.0 + 128.0, 0, 255).astype(np.uint8)


@dataclass
class Layout:
    """The town plan: buildings (x0, y0, x1, y1, height), street centre lines, extent."""
    extent: tuple[float, float]
    street_width: float
    buildings: np.ndarray        # (B, 5)
    street_sides: list[set]      # per building: sides facing a street, as (axis, sign)
    styles: np.ndarray           # (B,) style index
    x_streets: np.ndarray        # x of the street centre lines running along y
    y_streets: np.ndarray        # y of the street centre lines running along x


def make_layout(rng, p: dict) -> Layout:
    B, W = p["block_size"], p["street_width"]
    nbx, nby = p["blocks_x"], p["blocks_y"]
    pitch = B + W
    buildings, sides, styles = [], [], []
    for bi in range(nbx):
        for bj in range(nby):
            bx0, by0 = W + bi * pitch, W + bj * pitch
            for half in (0, 1):
                y_lo, y_hi = by0 + half * B / 2, by0 + (half + 1) * B / 2
                widths = rng.uniform(7.0, 14.0, 8)
                widths = widths[: max(1, int(np.searchsorted(np.cumsum(widths), B)) + 1)]
                cuts = bx0 + np.concatenate([[0.0], np.cumsum(widths / widths.sum() * B)])
                for k in range(len(widths)):
                    x_lo, x_hi = cuts[k], cuts[k + 1]
                    st = {(1, -1)} if half == 0 else {(1, 1)}
                    if k == 0:
                        st.add((0, -1))
                    if k == len(widths) - 1:
                        st.add((0, 1))
                    inset = {}
                    for side in ((0, -1), (0, 1), (1, -1), (1, 1)):
                        if side in st:
                            inset[side] = rng.uniform(0.0, 1.0)          # setback from the sidewalk
                        else:
                            inset[side] = rng.uniform(0.2, 0.8) if rng.random() < 0.25 else 0.0  # alley
                    box = (x_lo + inset[(0, -1)], y_lo + inset[(1, -1)], x_hi - inset[(0, 1)], y_hi - inset[(1, 1)],
                           rng.uniform(p["min_height"], p["max_height"]))
                    buildings.append(box)
                    sides.append(st)
                    styles.append(int(rng.integers(p["num_styles"])))
    ext = (nbx * B + (nbx + 1) * W, nby * B + (nby + 1) * W)
    return Layout(ext, W, np.array(buildings), sides, np.array(styles),
                  W / 2 + np.arange(nbx + 1) * pitch, W / 2 + np.arange(nby + 1) * pitch)


def ground_texture(rng, lay: Layout, ppm: float, margin: float):
    """Ground atlas (BGR uint8, paving weight uint8) over the town plus `margin`, and its origin."""
    gx0, gy0 = -margin, -margin
    gx1, gy1 = lay.extent[0] + margin, lay.extent[1] + margin
    W, H = int(math.ceil((gx1 - gx0) * ppm)), int(math.ceil((gy1 - gy0) * ppm))
    W, H = -(-W // 16) * 16, -(-H // 16) * 16  # multiples of the coarsest mip step
    gx1, gy1 = gx0 + W / ppm, gy0 + H / ppm

    def col(x):
        return (np.asarray(x) - gx0) * ppm

    def row(y):
        return (gy1 - np.asarray(y)) * ppm

    def rect(x0, y0, x1, y1):
        r0, r1 = int(round(row(max(y0, y1)))), int(round(row(min(y0, y1))))
        c0, c1 = int(round(col(min(x0, x1)))), int(round(col(max(x0, x1))))
        return slice(max(r0, 0), max(r1, 0)), slice(max(c0, 0), max(c1, 0))

    img = np.empty((H, W, 3), np.float32)
    pave = np.zeros((H, W), np.float32)
    img[:] = rgb(.42, .40, .30)  # outside the town: packed earth / dry grass
    field_noise = value_noise((H, W), rng, 3.0 * ppm)
    img *= (1.0 + 0.2 * field_noise)[..., None]
    img[..., 1] *= 1.0 + 0.1 * value_noise((H, W), rng, 6.0 * ppm, 2)
    # the town: sidewalks (paving) everywhere, carriageways (asphalt) on the streets
    rs, cs = rect(0, 0, *lay.extent)
    img[rs, cs] = rgb(.62, .60, .56)
    pave[rs, cs] = 1.0
    sw = 2.5  # sidewalk width
    half = lay.street_width / 2 - sw
    carriage = np.zeros((H, W), bool)
    for x in lay.x_streets:
        carriage[rect(x - half, 0, x + half, lay.extent[1])] = True
    for y in lay.y_streets:
        carriage[rect(0, y - half, lay.extent[0], y + half)] = True
    img[carriage] = rgb(.30, .30, .31)
    pave[carriage] = 0.0
    # kerb stones and gutters along every carriageway edge
    kerb = (cv2.dilate(carriage.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=max(int(0.15 * ppm), 1))
            .astype(bool) & ~carriage)
    img[kerb] = rgb(.72, .71, .68)
    pave[kerb] = 0.3
    gutter = carriage & ~cv2.erode(carriage.astype(np.uint8), np.ones((3, 3), np.uint8),
                                   iterations=max(int(0.1 * ppm), 1)).astype(bool)
    img[gutter] *= 0.7
    # asphalt repairs and oil stains
    for _ in range(int(lay.extent[0] * lay.extent[1] / 150)):
        x, y = rng.uniform(0, lay.extent[0]), rng.uniform(0, lay.extent[1])
        r, c = int(row(y)), int(col(x))
        if not (0 <= r < H and 0 <= c < W and carriage[r, c]):
            continue
        if rng.random() < 0.5:
            w, h = int(rng.uniform(0.5, 3) * ppm), int(rng.uniform(0.5, 3) * ppm)
            patch = img[r:r + h, c:c + w]
            patch *= rng.uniform(0.75, 1.25)
            cv2.rectangle(img, (c, r), (c + w, r + h), (0.12, 0.12, 0.12), 1)
        else:
            blot = np.zeros((H, W), np.float32)
            cv2.ellipse(blot, (c, r), (int(rng.uniform(0.3, 1.2) * ppm), int(rng.uniform(0.2, 0.8) * ppm)),
                        float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
            blot = cv2.GaussianBlur(blot, (0, 0), 0.2 * ppm)
            img *= (1.0 - 0.45 * blot)[..., None]
    # cracks: random walks
    for _ in range(int(lay.extent[0] * lay.extent[1] / 120)):
        p0 = np.array([rng.uniform(0, lay.extent[0]), rng.uniform(0, lay.extent[1])])
        pts = p0 + np.cumsum(rng.normal(0, 0.35, (12, 2)), 0)
        pix = np.stack([col(pts[:, 0]), row(pts[:, 1])], 1).astype(np.int32)
        cv2.polylines(img, [pix], False, (0.1, 0.1, 0.1), 1, cv2.LINE_AA)
    # lane markings: dashed centre lines, zebra crossings at junctions, painted words
    white = rgb(.92, .92, .9)
    for horizontal, centres, length in ((False, lay.x_streets, lay.extent[1]), (True, lay.y_streets, lay.extent[0])):
        cross = lay.y_streets if not horizontal else lay.x_streets
        for c in centres:
            phase = rng.uniform(0, 6)
            for a in np.arange(phase, length, 6.0):
                if np.min(np.abs(cross - (a + 1.5))) < half + 4.0:
                    continue  # no dashes inside junctions
                if horizontal:
                    img[rect(a, c - 0.07, a + 3.0, c + 0.07)] = white
                else:
                    img[rect(c - 0.07, a, c + 0.07, a + 3.0)] = white
            for k in cross:  # zebra crossings on both approaches of each junction
                for d in (-1, 1):
                    a0 = k + d * (half + sw + 0.5)
                    for s in np.arange(-half + 0.3, half - 0.3, 1.0):
                        if horizontal:
                            img[rect(a0, c + s, a0 + 3.0 * d, c + s + 0.5)] = white
                        else:
                            img[rect(c + s, a0, c + s + 0.5, a0 + 3.0 * d)] = white
            for _ in range(int(rng.poisson(length / 40))):
                a = rng.uniform(0, length - 3)
                if np.min(np.abs(cross - a)) < half + 8.0:
                    continue
                word = str(rng.choice(["BUS", "STOP", "30", "TAXI", "SLOW", "20"]))
                side = c + rng.choice([-1, 1]) * half / 2
                if horizontal:
                    x0, x1, y0, y1 = a, a + 2.5, side - 0.9, side + 0.9
                else:
                    x0, x1, y0, y1 = side - 0.9, side + 0.9, a, a + 2.5
                rs, cs = rect(x0, y0, x1, y1)
                sub = img[rs, cs]
                if sub.size:
                    rot = np.ascontiguousarray(np.rot90(sub)) if not horizontal else sub.copy()
                    draw_text(rot, word, (0, 0, rot.shape[1], rot.shape[0]), white, rng, 0.15)
                    img[rs, cs] = np.rot90(rot, -1) if not horizontal else rot
    # manholes and drain grates
    for _ in range(int(lay.extent[0] * lay.extent[1] / 90)):
        x, y = rng.uniform(0, lay.extent[0]), rng.uniform(0, lay.extent[1])
        c, r = int(col(x)), int(row(y))
        rad = max(int(rng.uniform(0.3, 0.4) * ppm), 2)
        cv2.circle(img, (c, r), rad, (0.2, 0.2, 0.21), -1, cv2.LINE_AA)
        cv2.circle(img, (c, r), rad, (0.45, 0.45, 0.45), max(1, int(0.04 * ppm)), cv2.LINE_AA)
        for a in np.linspace(0, np.pi, int(rng.integers(2, 5)), endpoint=False):
            dx, dy = int(rad * 0.8 * np.cos(a)), int(rad * 0.8 * np.sin(a))
            cv2.line(img, (c - dx, r - dy), (c + dx, r + dy), (0.35, 0.35, 0.35), 1, cv2.LINE_AA)
        pave[max(r - rad, 0):r + rad, max(c - rad, 0):c + rad] *= 0.2
    # litter, leaves and chewing gum on the sidewalks
    n_dots = int(lay.extent[0] * lay.extent[1] * 0.3)
    ys, xs = rng.integers(0, H, n_dots), rng.integers(0, W, n_dots)
    keep = pave[ys, xs] > 0.5
    img[ys[keep], xs[keep]] = rng.uniform(0.1, 0.9, (int(keep.sum()), 3)).astype(np.float32)
    img *= (1.0 + 0.08 * value_noise((H, W), rng, 1.5 * ppm) + 0.05 * value_noise((H, W), rng, 8 * ppm, 2))[..., None]
    bgr = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.dstack([bgr, np.clip(pave * 255 + 0.5, 0, 255).astype(np.uint8)]), (gx0, gy1)


# =============================================================================== the scene
@dataclass
class Facades:
    """All facade rectangles. Facade i lies in the plane {x, y}[axis] = c, spans the other
    horizontal coordinate over [a0, a1] and z over [0, height]; its outward normal is sign * e_axis."""
    axis: np.ndarray
    c: np.ndarray
    a0: np.ndarray
    a1: np.ndarray
    height: np.ndarray
    sign: np.ndarray
    street: np.ndarray
    building: np.ndarray
    material: np.ndarray
    ppm: np.ndarray           # texture pixels per metre
    atlas_xy: np.ndarray      # (F, 2) atlas pixel position of the texture's top-left corner
    detail_off: np.ndarray    # (F, 2) random offset into the detail tile, metres
    corners: np.ndarray       # (F, 4, 3) world corners, for culling

    def __len__(self) -> int:
        return len(self.axis)

    def s_coefficients(self):
        """s (metres along the facade, left to right seen from outside) = s_sign * a + s_off,
        where a is the hit's coordinate along the facade's horizontal axis."""
        s_sign = np.where(self.axis == 0, self.sign, -self.sign).astype(np.float32)
        s_off = np.where(s_sign > 0, -self.a0, self.a1).astype(np.float32)
        return s_sign, s_off


@dataclass
class Lamps:
    pos: np.ndarray           # (N, 3) world positions
    colour: np.ndarray        # (N, 3) linear BGR
    power: np.ndarray         # (N,) intensity (irradiance at 1 m)


@dataclass
class Scene:
    params: dict
    seed: int
    layout: Layout
    styles: list[Style]
    facades: Facades
    lamps: Lamps
    atlas: list[np.ndarray]          # mip levels, BGR uint8
    atlas_aux: list[np.ndarray]      # mip levels, (emissive, wall weight) uint8
    ground: list[np.ndarray]         # mip levels, (B, G, R, paving weight) uint8
    ground_origin: tuple[float, float]  # world (x, y) of the ground atlas' top-left corner
    detail: list[np.ndarray]         # mip levels of the tileable detail layer
    sun: np.ndarray = field(default_factory=lambda: np.array([0.55, 0.35, 0.76]))

    def stats(self) -> dict:
        return {"extent_m": [float(v) for v in self.layout.extent], "buildings": int(len(self.layout.buildings)),
                "facades": len(self.facades), "lamps": int(len(self.lamps.pos)),
                "atlas_px": list(self.atlas[0].shape[:2]), "ground_px": list(self.ground[0].shape[:2])}


ATLAS_LEVELS = 4
DETAIL_LEVELS = 6
GROUND_LEVELS = 5


def mips(img: np.ndarray, levels: int) -> list[np.ndarray]:
    """Gaussian pyramid (pre-filtered texture levels) for minified lookups."""
    out = [img]
    for _ in range(levels - 1):
        out.append(cv2.pyrDown(out[-1]))
    return out


def pack_atlas(sizes, width: int, align: int):
    """Shelf-pack (w, h) rectangles into a fixed-width atlas; positions aligned to `align` px."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i][1])
    pos = [None] * len(sizes)
    x = y = shelf = 0
    for i in order:
        w, h = (-(-v // align) * align for v in sizes[i])
        if x + w > width:
            x, y, shelf = 0, y + shelf, 0
        pos[i] = (x, y)
        x += w
        shelf = max(shelf, h)
    return pos, -(-(y + shelf) // align) * align


def build_scene(seed: int = 0, preset: str = "tiny", progress: bool = False, **overrides) -> Scene:
    """Lay out the town and build all its textures (deterministic from `seed`)."""
    p = {**PRESETS[preset], **overrides}
    ss = np.random.SeedSequence([seed, 7301])
    r_layout, r_style, r_tex, r_ground, r_detail, r_lamp = [np.random.default_rng(s) for s in ss.spawn(6)]
    lay = make_layout(r_layout, p)
    styles = [make_style(r_style) for _ in range(p["num_styles"])]

    # facades: the four sides of every building
    rows = []
    for b, (x0, y0, x1, y1, h) in enumerate(lay.buildings):
        for axis, sign in ((0, -1), (0, 1), (1, -1), (1, 1)):
            c = (x0 if sign < 0 else x1) if axis == 0 else (y0 if sign < 0 else y1)
            a0, a1 = (y0, y1) if axis == 0 else (x0, x1)
            if a1 - a0 > 0.05:
                rows.append((axis, c, a0, a1, h, sign, (axis, sign) in lay.street_sides[b], b))
    arr = np.array(rows, dtype=np.float64)
    axis, sign, street = arr[:, 0].astype(np.int8), arr[:, 5].astype(np.int8), arr[:, 6].astype(bool)
    bld = arr[:, 7].astype(np.int32)
    c, a0, a1, height = arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4]
    ppm = np.where(street, p["facade_ppm"], p["facade_ppm"] / 2)
    F = len(arr)

    # street lamps mounted on street facades, 0.3 m out from the wall
    lamp_pos, lamp_on_facade = [], [[] for _ in range(F)]
    for i in np.nonzero(street)[0]:
        width = a1[i] - a0[i]
        n = int(width // 16) + int(r_lamp.random() < (width % 16) / 16)
        for s in r_lamp.uniform(1.0, max(width - 1.0, 1.01), n):
            z = min(r_lamp.uniform(4.0, 5.0), height[i] - 1.0)
            s_sign = sign[i] if axis[i] == 0 else -sign[i]
            a = a0[i] + s if s_sign > 0 else a1[i] - s
            off = c[i] + 0.3 * sign[i]
            lamp_pos.append((off, a, z) if axis[i] == 0 else (a, off, z))
            lamp_on_facade[i].append((s, z))
    lamp_pos = np.array(lamp_pos, dtype=np.float64).reshape(-1, 3)
    sodium = r_lamp.random(len(lamp_pos)) < 0.6
    lamp_col = np.where(sodium[:, None], [0.15, 0.5, 1.0], [0.95, 0.9, 0.8])  # BGR, linear
    lamp_col = lamp_col * r_lamp.uniform(0.85, 1.15, (len(lamp_pos), 1))
    lamps = Lamps(lamp_pos, lamp_col.astype(np.float32), r_lamp.uniform(10.0, 18.0, len(lamp_pos)).astype(np.float32))

    # facade textures into one atlas (padding keeps mip lookups from bleeding across facades)
    pad = 2 ** ATLAS_LEVELS
    textures = []
    it = range(F)
    if progress:
        it = tqdm(it, desc="facade textures", unit="facade", leave=False)
    for i in it:
        st = styles[lay.styles[bld[i]]]
        tex_rng = np.random.default_rng([seed, 11, i])
        textures.append(facade_texture(tex_rng, a1[i] - a0[i], height[i], ppm[i], st, bool(street[i]), lamp_on_facade[i]))
    sizes = [(t.shape[1] + 2 * pad, t.shape[0] + 2 * pad) for t, _ in textures]
    atlas_w = 8192 if sum(w * h for w, h in sizes) > 16e6 else 4096
    pos, atlas_h = pack_atlas(sizes, atlas_w, pad)
    atlas = np.zeros((atlas_h, atlas_w, 3), np.uint8)
    aux = np.zeros((atlas_h, atlas_w, 2), np.uint8)
    for (tex, tex_aux), (x, y) in zip(textures, pos):
        h, w = tex.shape[:2]
        atlas[y:y + h + 2 * pad, x:x + w + 2 * pad] = cv2.copyMakeBorder(tex, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        aux[y:y + h + 2 * pad, x:x + w + 2 * pad] = cv2.copyMakeBorder(tex_aux, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    atlas_xy = np.array(pos, dtype=np.float64) + pad
    del textures

    corners = np.zeros((F, 4, 3))
    for k, (aa, zz) in enumerate(((0, 0), (1, 0), (1, 1), (0, 1))):
        av = np.where(aa, a1, a0)
        corners[:, k, 0] = np.where(axis == 0, c, av)
        corners[:, k, 1] = np.where(axis == 0, av, c)
        corners[:, k, 2] = zz * height
    # per-pixel lookups gather these, so they are float32 like the pixel arrays
    facades = Facades(axis, c, a0, a1, height.astype(np.float32), sign, street, bld,
                      np.array([styles[lay.styles[b]].material for b in bld], np.int8), ppm.astype(np.float32),
                      atlas_xy.astype(np.float32), r_tex.uniform(0, 500.0, (F, 2)).astype(np.float32), corners)

    ground, origin = ground_texture(r_ground, lay, p["ground_ppm"], margin=60.0)
    detail = detail_tiles(r_detail, p["detail_tile"], p["detail_ppm"])
    return Scene(p, seed, lay, styles, facades, lamps,
                 mips(atlas, ATLAS_LEVELS), mips(aux, ATLAS_LEVELS), mips(ground, GROUND_LEVELS), origin,
                 mips(detail, DETAIL_LEVELS))


# =============================================================================== camera model
def _radial_coeffs(camera: CameraSpec) -> tuple[float, float, float, float, float, float]:
    """(fx, fy, cx, cy, k1, k2) of the supported models."""
    p = camera.params
    if camera.model == "SIMPLE_PINHOLE":
        return p[0], p[0], p[1], p[2], 0.0, 0.0
    if camera.model == "PINHOLE":
        return p[0], p[1], p[2], p[3], 0.0, 0.0
    if camera.model == "SIMPLE_RADIAL":
        return p[0], p[0], p[1], p[2], p[3], 0.0
    if camera.model == "RADIAL":
        return p[0], p[0], p[1], p[2], p[3], p[4]
    raise ValueError(f"the renderer supports SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL and RADIAL, not {camera.model}")


def distort(camera: CameraSpec, xy: np.ndarray) -> np.ndarray:
    """Normalized (undistorted) camera coordinates (N, 2) -> pixels (COLMAP: pixel centres at +0.5)."""
    fx, fy, cx, cy, k1, k2 = _radial_coeffs(camera)
    xy = np.asarray(xy, np.float64)
    r2 = (xy ** 2).sum(-1, keepdims=True)
    d = xy * (1.0 + k1 * r2 + k2 * r2 * r2)
    return np.stack([fx * d[..., 0] + cx, fy * d[..., 1] + cy], -1)


def undistort(camera: CameraSpec, uv: np.ndarray) -> np.ndarray:
    """Pixels (N, 2), COLMAP convention -> normalized undistorted coordinates (N, 2).

    Newton's method on the radius: r_d = r_u (1 + k1 r_u^2 + k2 r_u^4); exact to ~1e-12.
    """
    fx, fy, cx, cy, k1, k2 = _radial_coeffs(camera)
    uv = np.asarray(uv, np.float64)
    xd = np.stack([(uv[..., 0] - cx) / fx, (uv[..., 1] - cy) / fy], -1)
    if k1 == 0.0 and k2 == 0.0:
        return xd
    rd = np.sqrt((xd ** 2).sum(-1))
    ru = rd.copy()
    for _ in range(20):
        r2 = ru * ru
        g = ru * (1 + k1 * r2 + k2 * r2 * r2) - rd
        ru = ru - g / (1 + 3 * k1 * r2 + 5 * k2 * r2 * r2)
    scale = np.where(rd > 0, ru / np.where(rd > 0, rd, 1.0), 1.0)
    return xd * scale[..., None]


@dataclass
class Rays:
    xn: np.ndarray            # (H, W) float32 normalized x of each (sub)pixel's ray
    yn: np.ndarray
    col_lo: np.ndarray        # per column min / max of xn (monotone), for screen-space culling
    col_hi: np.ndarray
    row_lo: np.ndarray
    row_hi: np.ndarray
    focal_px: float           # focal length in (sub)pixels, for texture footprints


@functools.lru_cache(maxsize=8)
def camera_rays(camera: CameraSpec, ss: int = 1) -> Rays:
    """Undistorted ray of every subpixel at `ss` samples per pixel and axis.

    Subpixel (I, J) sits at image coordinate ((J + 0.5) / ss, (I + 0.5) / ss), so averaging
    ss x ss blocks (INTER_AREA) centres each output pixel at (j + 0.5, i + 0.5) as COLMAP expects.
    """
    W, H = camera.width * ss, camera.height * ss
    u = (np.arange(W) + 0.5) / ss
    v = (np.arange(H) + 0.5) / ss
    uu, vv = np.meshgrid(u, v)
    xy = undistort(camera, np.stack([uu.ravel(), vv.ravel()], -1))
    xn = xy[:, 0].reshape(H, W).astype(np.float32)
    yn = xy[:, 1].reshape(H, W).astype(np.float32)
    fx, fy = _radial_coeffs(camera)[:2]
    return Rays(xn, yn,
                np.minimum.accumulate(xn.min(0)[::-1])[::-1], np.maximum.accumulate(xn.max(0)),
                np.minimum.accumulate(yn.min(1)[::-1])[::-1], np.maximum.accumulate(yn.max(1)),
                0.5 * (fx + fy) * ss)


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


# =============================================================================== texture lookup
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


# =============================================================================== cameras
def rotation_from_angles(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """World-to-camera rotation looking along heading `yaw` (radians from +x toward +y), tilted
    up by `pitch` and rolled by `roll` about the optical axis; camera x right, y down, z forward."""
    fwd = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    R = Pose.look_at(np.zeros(3), fwd).R
    cr, sr = math.cos(roll), math.sin(roll)
    return np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1.0]]) @ R


def street_segments(lay: Layout):
    """Inner streets as (start xy, unit direction, length); cameras move along these."""
    ex, ey = lay.extent
    sw = lay.street_width
    segs = []
    for x in lay.x_streets[1:-1]:
        segs.append((np.array([x, sw]), np.array([0.0, 1.0]), ey - 2 * sw))
    for y in lay.y_streets[1:-1]:
        segs.append((np.array([sw, y]), np.array([1.0, 0.0]), ex - 2 * sw))
    if not segs:  # a single block: walk the ring road instead
        for x in lay.x_streets:
            segs.append((np.array([x, 0.0]), np.array([0.0, 1.0]), ey))
        for y in lay.y_streets:
            segs.append((np.array([0.0, y]), np.array([1.0, 0.0]), ex))
    return segs


def _view_ok(scene: Scene, camera: CameraSpec, pose: Pose) -> bool:
    """A coarse depth render rejects views of a blank wall at arm's length or mostly sky/ground."""
    s = 12.0 / camera.width
    fx, fy, cx, cy, k1, _ = _radial_coeffs(camera)
    small = CameraSpec("SIMPLE_RADIAL", max(int(camera.width * s), 4), max(int(camera.height * s), 3),
                       (fx * s, cx * s, cy * s, k1))
    depth, sid, _, _ = trace(scene, small, pose, 1)
    facade = (sid >= 0).mean()
    sky = (sid == SKY).mean()
    close = (depth < 3.0).mean()
    return facade >= 0.3 and sky <= 0.45 and close <= 0.2


def sample_view(scene: Scene, rng, segs, t: float, camera: CameraSpec, query: bool):
    """A pose at arc length t along the concatenated streets, with a plausible heading."""
    lengths = np.array([s[2] for s in segs])
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    for attempt in range(40):
        tt = t if attempt < 20 else rng.uniform(0, cum[-1])
        k = int(np.clip(np.searchsorted(cum, tt, "right") - 1, 0, len(segs) - 1))
        start, direction, _ = segs[k]
        lateral = np.array([-direction[1], direction[0]])
        max_off = scene.layout.street_width / 2 - (1.2 if query else 2.0)
        off = rng.uniform(-max_off, max_off)
        xy = start + direction * (tt - cum[k]) + lateral * off
        centre = np.array([xy[0], xy[1], rng.normal(1.6, 0.08 if not query else 0.12)])
        along = math.atan2(direction[1], direction[0])
        mode = rng.random()
        if mode < 0.25:
            yaw = along + rng.normal(0, 0.18 if not query else 0.3)
        elif mode < 0.5:
            yaw = along + math.pi + rng.normal(0, 0.18 if not query else 0.3)
        else:
            # toward a facade, preferably the one across the street
            side = -np.sign(off) if rng.random() < 0.75 and off != 0 else rng.choice([-1.0, 1.0])
            base = along + (0 if rng.random() < 0.5 else math.pi)
            ang = rng.uniform(math.radians(35), math.radians(90))
            yaw = base + side * ang * (1 if base == along else -1)
        pitch = math.radians(np.clip(rng.normal(6, 4) if not query else rng.normal(6, 6), -8, 22))
        roll = math.radians(rng.normal(0, 1.5 if not query else 3.0))
        pose = Pose.from_center(rotation_from_angles(yaw, pitch, roll), centre)
        if _view_ok(scene, camera, pose):
            return pose
    return pose


def db_camera(p: dict) -> CameraSpec:
    w, h = p["width"], p["height"]
    return CameraSpec("SIMPLE_RADIAL", w, h, (DB_FOCAL * w, w / 2, h / 2, 0.0))


def query_camera(rng, p: dict) -> CameraSpec:
    w, h = p["width"], p["height"]
    if rng.random() < p["portrait_fraction"]:
        w, h = h, w
    f = rng.uniform(p["query_focal_min"], p["query_focal_max"]) * max(w, h)
    k = rng.uniform(-p["max_distortion"], p["max_distortion"])
    return CameraSpec("SIMPLE_RADIAL", w, h, (round(f, 4), w / 2, h / 2, round(k, 6)))


def plan_cameras(scene: Scene, seed: int):
    """Database and query cameras: [(name, camera, pose, night)], deterministic from `seed`."""
    p = scene.params
    segs = street_segments(scene.layout)
    total = sum(s[2] for s in segs)
    rng = np.random.default_rng([seed, 21])
    plan = []
    n_db = p["num_db"]
    spacing = total / max(n_db, 1)
    cam = db_camera(p)
    for i in range(n_db):
        t = (i + 0.5 + rng.uniform(-0.3, 0.3)) * spacing
        plan.append((f"db/{i:04d}.jpg", cam, sample_view(scene, rng, segs, t, cam, False), False))
    db_xy = np.array([pl[2].center[:2] for pl in plan]).reshape(-1, 2)
    rng = np.random.default_rng([seed, 22])
    for cond, n in (("day", p["num_day"]), ("night", p["num_night"])):
        for i in range(n):
            qcam = query_camera(rng, p)
            for _ in range(50):  # novel positions: at least a metre from every database camera
                pose = sample_view(scene, rng, segs, rng.uniform(0, total), qcam, True)
                if len(db_xy) == 0 or np.min(np.linalg.norm(db_xy - pose.center[:2], axis=1)) > 1.0:
                    break
            plan.append((f"query/{cond}/synth/{cond}_{i:04d}.jpg", qcam, pose, cond == "night"))
    return plan


# =============================================================================== dataset
def contact_sheet(root: Path, plan, cell: int = 240) -> np.ndarray:
    """A labelled grid: a row each of database, day and night samples."""
    rows = []
    for title, sel in (("database", [x for x in plan if x[0].startswith("db/")]),
                       ("day queries", [x for x in plan if "/day/" in x[0]]),
                       ("night queries", [x for x in plan if "/night/" in x[0]])):
        picks = [sel[int(i)] for i in np.linspace(0, len(sel) - 1, min(4, len(sel))).round()] if sel else []
        tiles = []
        for name, *_ in picks:
            im = cv2.imread(str(root / IMAGES / name))
            s = min(cell * 4 / 3 / im.shape[1], cell / im.shape[0])
            im = cv2.resize(im, (int(im.shape[1] * s), int(im.shape[0] * s)), interpolation=cv2.INTER_AREA)
            tile = np.zeros((cell + 22, int(cell * 4 / 3), 3), np.uint8)
            tile[22:22 + im.shape[0], (tile.shape[1] - im.shape[1]) // 2:][:, :im.shape[1]] = im
            cv2.putText(tile, name, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
        while len(tiles) < 4:
            tiles.append(np.zeros((cell + 22, int(cell * 4 / 3), 3), np.uint8))
        band = np.zeros((28, 4 * int(cell * 4 / 3), 3), np.uint8)
        cv2.putText(band, title, (6, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (80, 220, 255), 2, cv2.LINE_AA)
        rows += [band, np.concatenate(tiles, 1)]
    return np.concatenate(rows, 0)


def _config(preset: str, overrides: dict) -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    unknown = set(overrides) - set(PRESETS[preset])
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(PRESETS[preset])}")
    return {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}


OWNED = ["images/images_upright/db", "images/images_upright/query/day/synth", "images/images_upright/query/night/synth",
         "queries", "3D-models", "reference", "ground_truth", "contact_sheet.png"]


def generate(out_dir: str | Path, preset: str = "tiny", seed: int = 0, overwrite: bool = False,
             progress: bool = True, **overrides) -> Path:
    """Render a synthetic town dataset into `out_dir` (Aachen's layout) and return the path.

    An existing dataset whose scene.json records the same preset, seed and parameters is kept
    (a message says so) unless `overwrite`; a different one is an error unless `overwrite`.
    """
    out = Path(out_dir)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    cfg = _config(preset, overrides)
    content = {k: v for k, v in cfg.items() if k not in NON_CONTENT}
    meta_path = out / "scene.json"
    if meta_path.exists() and not overwrite:
        old = read_json(meta_path)
        if (old.get("version") == GENERATOR_VERSION and old.get("seed") == seed and old.get("preset") == preset
                and old.get("params") == content):
            print(f"{out}: synthetic town (preset {preset}, seed {seed}) already generated; skipping "
                  f"(pass overwrite=True / --overwrite to render again)")
            return out
        raise FileExistsError(f"{out} holds a different synthetic dataset (see {meta_path}); "
                              f"pass overwrite=True / --overwrite or choose another folder")
    # stale or partial output of an earlier run must not mix with this one
    if meta_path.exists():
        meta_path.unlink()
    for rel in OWNED:
        path = out / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    t0 = time.perf_counter()
    scene = build_scene(seed, preset, progress=progress, **overrides)
    t_scene = time.perf_counter() - t0
    plan = plan_cameras(scene, seed)

    def work(k):
        name, cam, pose, night = plan[k]
        kind = 2 if night else (1 if "/day/" in name else 0)
        img, _ = render(scene, cam, pose, night=night, rng=np.random.default_rng([seed, 31, kind, k]))
        path = out / IMAGES / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            if not cv2.imwrite(str(tmp), img, [cv2.IMWRITE_JPEG_QUALITY, int(cfg["jpeg_quality"])]):
                raise OSError(f"could not write {path}")

    bar = tqdm(total=len(plan), desc=f"rendering {preset}", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(int(cfg["workers"]), 1)) as pool:
        for _ in pool.map(work, range(len(plan))):
            bar.update()
    bar.close()

    db = {n: (c, p) for n, c, p, _ in plan if n.startswith("db/")}
    queries = {n: (c, p) for n, c, p, _ in plan if n.startswith("query/")}
    write_metadata(out, db, queries)
    with atomic_path(out / "contact_sheet.png") as tmp:
        cv2.imwrite(str(tmp), contact_sheet(out, plan))
    counts = {"db": len(db), "day": sum("/day/" in n for n in queries), "night": sum("/night/" in n for n in queries)}
    # written last: its presence marks a complete dataset
    write_json(meta_path, {"generator": "datasets.synthetic_town", "version": GENERATOR_VERSION,
                           "preset": preset, "seed": seed, "params": content, "counts": counts,
                           "scene": scene.stats(),
                           "sun_direction": scene.sun.tolist(),
                           "buildings_xyxyh": np.round(scene.layout.buildings, 4).tolist()})
    if progress:
        print(f"scene built in {t_scene:.1f} s; {len(plan)} images in {time.perf_counter() - t0:.1f} s total")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m datasets.synthetic_town",
        description="Render a synthetic town (exact geometry; day and night) as a localization dataset in "
                    "Aachen Day-Night's layout: database images with poses (NVM + COLMAP model), day/night "
                    "queries with intrinsics and ground-truth poses, a contact sheet and scene.json. "
                    "Deterministic from --seed. Every preset parameter can be overridden by its flag.")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                    help="size preset: 'tiny' (50 images of 320x240, seconds; for tests) or 'demo' "
                         "(400 images of 640x480, minutes) (default: tiny)")
    ap.add_argument("--out", type=Path, default=None, help="output dataset folder (default: datasets/<preset>)")
    ap.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files (default: 0)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    for key, default in PRESETS["tiny"].items():
        presets = ", ".join(f"{name}: {values[key]}" for name, values in PRESETS.items())
        ap.add_argument("--" + key.replace("_", "-"), type=type(default), default=None,
                        help=f"{PARAM_HELP[key]} ({presets})")
    args = ap.parse_args(argv)
    overrides = {k: getattr(args, k) for k in PRESETS["tiny"] if getattr(args, k) is not None}
    out = args.out or Path("datasets") / args.preset
    t0 = time.perf_counter()
    try:
        generate(out, args.preset, args.seed, overwrite=args.overwrite, progress=not args.quiet, **overrides)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = Dataset(out).validate()
    print(f"{out}: {summary} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
