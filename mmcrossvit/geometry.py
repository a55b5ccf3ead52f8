"""Rigid poses, quaternions, pose errors and 3D boxes.

Conventions (COLMAP's): a pose maps world to camera, x_cam = R @ x_world + t;
quaternions are (qw, qx, qy, qz) with qw >= 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def qvec_to_rotmat(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_qvec(R) -> np.ndarray:
    # Shepperd's method via the symmetric 4x4 matrix (as COLMAP does): stable for any rotation.
    R = np.asarray(R, dtype=np.float64)
    Rxx, Ryx, Rzx, Rxy, Ryy, Rzy, Rxz, Ryz, Rzz = R.flat
    K = np.array([
        [Rxx - Ryy - Rzz, 0, 0, 0],
        [Ryx + Rxy, Ryy - Rxx - Rzz, 0, 0],
        [Rzx + Rxz, Rzy + Ryz, Rzz - Rxx - Ryy, 0],
        [Ryz - Rzy, Rzx - Rxz, Rxy - Ryx, Rxx + Ryy + Rzz]]) / 3.0
    vals, vecs = np.linalg.eigh(K)
    q = vecs[[3, 0, 1, 2], np.argmax(vals)]
    return -q if q[0] < 0 else q


@dataclass
class Pose:
    """World-to-camera rigid transform."""
    R: np.ndarray
    t: np.ndarray

    @classmethod
    def from_qt(cls, qvec, tvec) -> "Pose":
        return cls(qvec_to_rotmat(qvec), np.asarray(tvec, dtype=np.float64).reshape(3))

    @classmethod
    def from_rigid3d(cls, T) -> "Pose":
        """From pycolmap's Rigid3d (e.g. an image's cam_from_world())."""
        return cls(np.asarray(T.rotation.matrix()), np.asarray(T.translation))

    @classmethod
    def from_center(cls, R, center) -> "Pose":
        R = np.asarray(R, dtype=np.float64)
        return cls(R, -R @ np.asarray(center, dtype=np.float64).reshape(3))

    @classmethod
    def look_at(cls, center, target, up=(0.0, 0.0, 1.0)) -> "Pose":
        """Camera at `center` looking at `target`; x right, y down, z forward (OpenCV/COLMAP)."""
        c = np.asarray(center, dtype=np.float64)
        z = np.asarray(target, dtype=np.float64) - c
        z /= np.linalg.norm(z)
        x = np.cross(z, np.asarray(up, dtype=np.float64))
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        return cls.from_center(np.stack([x, y, z]), c)

    @property
    def qvec(self) -> np.ndarray:
        return rotmat_to_qvec(self.R)

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t

    @property
    def viewing_direction(self) -> np.ndarray:
        return self.R[2]

    def transform(self, X) -> np.ndarray:
        return np.asarray(X) @ self.R.T + self.t

    def inverse(self) -> "Pose":
        return Pose(self.R.T, -self.R.T @ self.t)

    def __matmul__(self, other: "Pose") -> "Pose":
        return Pose(self.R @ other.R, self.R @ other.t + self.t)


def pose_error(estimate: Pose, truth: Pose) -> tuple[float, float]:
    """(position error in scene units, rotation error in degrees), as the benchmark computes."""
    dt = float(np.linalg.norm(estimate.center - truth.center))
    cos = (np.trace(estimate.R @ truth.R.T) - 1.0) / 2.0
    dr = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return dt, dr


def pinhole_matrix(fx, fy, cx, cy) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def project(K: np.ndarray, pose: Pose, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (COLMAP convention: pixel centre at +0.5) and depths of world points."""
    Xc = pose.transform(X)
    z = Xc[:, 2]
    uv = (Xc @ K.T)[:, :2] / np.where(np.abs(z) < 1e-12, 1e-12, z)[:, None]
    return uv, z


def fundamental_from_poses(K0, pose0: Pose, K1, pose1: Pose) -> np.ndarray:
    rel = pose1 @ pose0.inverse()
    tx = np.array([[0, -rel.t[2], rel.t[1]], [rel.t[2], 0, -rel.t[0]], [-rel.t[1], rel.t[0], 0]])
    return np.linalg.inv(K1).T @ tx @ rel.R @ np.linalg.inv(K0)


def robust_box(points: np.ndarray, z_thresh: float = 3.0) -> np.ndarray | None:
    """Axis-aligned box (2, 3) of points after per-axis z-score outlier removal; None if empty."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) == 0:
        return None
    std = points.std(0)
    z = np.abs(points - points.mean(0)) / np.where(std > 0, std, 1.0)
    kept = points[(z <= z_thresh).all(1)]
    if len(kept) == 0:
        kept = points
    return np.stack([kept.min(0), kept.max(0)])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of axis-aligned 3D boxes; a: (..., 2, 3), b broadcastable to it. Degenerate boxes give 0."""
    lo = np.maximum(a[..., 0, :], b[..., 0, :])
    hi = np.minimum(a[..., 1, :], b[..., 1, :])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    va = np.prod(a[..., 1, :] - a[..., 0, :], axis=-1)
    vb = np.prod(b[..., 1, :] - b[..., 0, :], axis=-1)
    union = va + vb - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
