"""The town plan (blocks of buildings between streets) and its ground texture."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .textures import darken_ellipse, draw_text, rgb, value_noise


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
            darken_ellipse(img, (c, r), (int(rng.uniform(0.3, 1.2) * ppm), int(rng.uniform(0.2, 0.8) * ppm)),
                           float(rng.uniform(0, 180)), 0.2 * ppm, 0.45)
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


