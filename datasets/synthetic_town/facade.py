"""Facade textures: a painted canvas per facade with windows, shops, doors, signs and grime."""
from __future__ import annotations

import math

import cv2
import numpy as np

from .textures import SHOP_WORDS, Style, darken_ellipse, draw_text, random_word, rgb, value_noise


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
        darken_ellipse(cv.img, (int(rng.integers(0, cv.W)), int(rng.integers(0, cv.H))),
                       (int(rng.uniform(0.3, 2.0) * ppm), int(rng.uniform(0.3, 2.5) * ppm)),
                       float(rng.uniform(0, 180)), max(0.3 * ppm, 1.0), lambda: rng.uniform(0.08, 0.25))
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
                word = str(rng.choice(SHOP_WORDS)) + (" " + random_word(rng, 1, 2) if rng.random() < 0.6 else "")
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


