"""Procedural texture building blocks: noise, masonry reliefs, painted text, architectural styles
and the shared high-frequency detail layer. Everything is deterministic from the `rng` passed in."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


def rgb(r, g, b) -> np.ndarray:
    """A BGR float colour from RGB components in [0, 1] (all canvases here are BGR like OpenCV)."""
    return np.array([b, g, r], dtype=np.float32)


def darken_ellipse(img: np.ndarray, center: tuple[int, int], axes: tuple[int, int], angle: float,
                   sigma: float, strength) -> None:
    """img *= 1 - strength * blur(filled ellipse), in place; `strength` (a number, or a callable
    drawn after the ellipse, to keep an rng's order) scales the darkening. Only a window around
    the ellipse is blurred and multiplied: outside it the blurred mask is exactly 0, so the result
    is blurring the whole canvas at a fraction of the cost on large atlases (to the last bit of
    float rounding, which OpenCV's vectorised rows make depend on the width: the demo scene's
    textures came out identical)."""
    H, W = img.shape[:2]
    pad = max(axes) + 2 * (int(round(sigma * 8 + 1)) // 2 + 1) + 2  # ellipse + twice OpenCV's kernel radius
    r0, r1 = max(center[1] - pad, 0), min(center[1] + pad + 1, H)
    c0, c1 = max(center[0] - pad, 0), min(center[0] + pad + 1, W)
    k = strength() if callable(strength) else strength
    if r0 >= r1 or c0 >= c1:  # too far outside the canvas to touch it
        return
    blot = np.zeros((r1 - r0, c1 - c0), np.float32)
    cv2.ellipse(blot, (center[0] - c0, center[1] - r0), axes, angle, 0, 360, 1.0, -1)
    blot = cv2.GaussianBlur(blot, (0, 0), sigma)
    img[r0:r1, c0:c1] *= (1.0 - k * blot)[..., None]


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
SHOP_WORDS = ["CAFE", "BAR", "BAKERY", "HOTEL", "BANK", "PIZZA", "KIOSK", "APOTHEKE", "BOOKS", "OPTIK",
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


# =============================================================================== detail layer
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

