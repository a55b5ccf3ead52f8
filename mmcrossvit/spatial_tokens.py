"""3D spatial tokens for the teacher's second branch: a G x G grid of patch tokens + a camera token.

Each patch gets one 3D world point:
  rays: the patch centre back-projected along its viewing ray to a fixed depth (the authors' choice);
  sfm:  the median of the triangulated points observed inside the patch, falling back to the ray
        at the image's median depth when the patch sees none (sky, far background) — such patches
        are flagged invalid.
Coordinates are normalised with statistics of the whole scene, p' = (p - mu) / s (mu: mean
database camera centre, s: RMS distance of the centres to mu), so absolute position survives.

Encoding (the "RoPE"-style multi-frequency sin/cos), for a vector v of coordinates:
    gamma(v) = concat over coordinates c and k = 0..L-1 of [sin(w_k v_c), cos(w_k v_c)],
    w_k = w_min * r ** (k / (L - 1)),  w_min = pi / 2.
A patch token encodes [p'(3) with L_p frequencies and ratio r_p] + [q(4) with L_q, r_q], q the
camera's world-to-camera quaternion (qw >= 0); the camera token encodes [c'(3), q(4)] the same
way, c' the normalised camera centre. With D = 192: L_q = D // 32 = 6, L_p = (D - 8 L_q) // 6
= 24, r_p = 1024, r_q = 8; leftover dimensions (when D is not a multiple of 6) are zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .colmap_io import CameraSpec
from .geometry import Pose


@dataclass(frozen=True)
class Encoding:
    dim: int = 192
    pos_ratio: float = 1024.0
    rot_ratio: float = 8.0

    @property
    def n_rot(self) -> int:
        return max(1, self.dim // 32)

    @property
    def n_pos(self) -> int:
        return (self.dim - 8 * self.n_rot) // 6

    def __post_init__(self):
        if self.n_pos < 1:
            raise ValueError(f"token dimension {self.dim} is too small (need at least 14)")


def frequencies(n: int, ratio: float) -> np.ndarray:
    w_min = math.pi / 2
    if n == 1:
        return np.array([w_min])
    return w_min * ratio ** (np.arange(n) / (n - 1))


def sincos(v: np.ndarray, n: int, ratio: float) -> np.ndarray:
    """(..., C) -> (..., C * 2n): per coordinate, sin then cos for each frequency."""
    a = v[..., :, None] * frequencies(n, ratio)
    return np.stack([np.sin(a), np.cos(a)], -1).reshape(*v.shape[:-1], -1)


def encode(points: np.ndarray, quats: np.ndarray, enc: Encoding) -> np.ndarray:
    """points (..., 3) normalised, quats (..., 4) -> (..., enc.dim)."""
    out = np.concatenate([sincos(points, enc.n_pos, enc.pos_ratio), sincos(quats, enc.n_rot, enc.rot_ratio)], -1)
    pad = enc.dim - out.shape[-1]
    if pad:
        out = np.concatenate([out, np.zeros((*out.shape[:-1], pad))], -1)
    return out


@dataclass(frozen=True)
class Normaliser:
    mu: np.ndarray
    s: float

    @classmethod
    def from_centres(cls, centres: np.ndarray) -> "Normaliser":
        mu = centres.mean(0)
        s = float(np.sqrt(((centres - mu) ** 2).sum(1).mean()))
        return cls(mu, s if s > 0 else 1.0)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return (p - self.mu) / self.s


def patch_centres(camera: CameraSpec, grid: int) -> np.ndarray:
    """(G*G, 2) pixel coordinates (COLMAP convention) of the patch centres, row-major."""
    u = (np.arange(grid) + 0.5) * camera.width / grid
    v = (np.arange(grid) + 0.5) * camera.height / grid
    uu, vv = np.meshgrid(u, v)
    return np.stack([uu.ravel(), vv.ravel()], 1)


def patch_rays(camera: CameraSpec, pose: Pose, grid: int) -> np.ndarray:
    """(G*G, 3) unit world directions through the patch centres (distortion handled by COLMAP)."""
    cam = camera.to_pycolmap()
    xy = np.asarray(cam.cam_from_img(patch_centres(camera, grid)))
    d = np.concatenate([xy, np.ones((len(xy), 1))], 1) @ pose.R  # R^T applied to row vectors
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def patch_points_sfm(camera: CameraSpec, keypoints: np.ndarray, xyz: np.ndarray, grid: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Median 3D point per patch from the image's observations (keypoint pixel coords and their
    3D points). Returns (G*G, 3) points (NaN where none) and the (G*G,) valid mask."""
    col = np.clip((keypoints[:, 0] / camera.width * grid).astype(int), 0, grid - 1)
    row = np.clip((keypoints[:, 1] / camera.height * grid).astype(int), 0, grid - 1)
    cell = row * grid + col
    out = np.full((grid * grid, 3), np.nan)
    order = np.argsort(cell, kind="stable")
    cell, pts = cell[order], xyz[order]
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]]) if len(cell) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(cell)]
    for s, e in zip(starts, ends):  # loop over at most G*G cells
        out[cell[s]] = np.median(pts[s:e], axis=0)
    return out, ~np.isnan(out[:, 0])


def image_tokens(camera: CameraSpec, pose: Pose, grid: int, norm: Normaliser, enc: Encoding,
                 mode: str, ray_depth: float, observations: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens (1 + G*G, D), valid mask (G*G,), raw world points (G*G, 3) of one image."""
    C = pose.center
    rays = patch_rays(camera, pose, grid)
    if mode == "rays":
        pts = C + ray_depth * rays
        valid = np.ones(grid * grid, dtype=bool)
    elif mode == "sfm":
        kp, X = observations if observations is not None else (np.zeros((0, 2)), np.zeros((0, 3)))
        pts, valid = patch_points_sfm(camera, kp, X, grid)
        depth = np.median(pose.transform(X)[:, 2]) if len(X) else ray_depth
        pts[~valid] = C + depth * rays[~valid]
    else:
        raise ValueError(f"unknown token mode {mode!r} (expected 'rays' or 'sfm')")
    q = np.broadcast_to(pose.qvec, (grid * grid, 4))
    patch = encode(norm(pts), q, enc)
    cam = encode(norm(C)[None], pose.qvec[None], enc)
    return np.concatenate([cam, patch], 0), valid, pts


def load_tokens(path) -> tuple[list[str], dict, dict]:
    """(names, tensors, params) of a spatial-token file written by the tokens step."""
    import json
    from safetensors import safe_open
    from .storage import read_safetensors
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return json.loads(meta["names"]), read_safetensors(path), json.loads(meta["params"])
