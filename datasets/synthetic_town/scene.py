"""The scene: facade rectangles, street lamps and the mip-mapped texture atlases, built from a seed."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from .facade import facade_texture
from .params import scene_params
from .textures import Style, detail_tiles, make_style
from .town import Layout, ground_texture, make_layout


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
    p = scene_params(preset, overrides)
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


