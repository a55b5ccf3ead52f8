"""What decides whether a localized pose is trusted, beyond its inlier count: the image area its
inliers cover, how well they constrain it, and the place ratio test against candidates placed
elsewhere (localize.py --min-inlier-coverage / --max-rival-ratio; studies/acceptance_signals.py)."""
from __future__ import annotations

import numpy as np

from .colmap_io import CameraSpec
from .geometry import Pose


def inlier_coverage(points2d: np.ndarray, camera: CameraSpec) -> float:
    """The fraction of the image that the convex hull of the inlier keypoints covers: inliers
    bunched in a small patch (one repeated motif) constrain the pose poorly."""
    import cv2
    if len(points2d) < 3:
        return 0.0
    hull = cv2.convexHull(np.asarray(points2d, np.float32))
    return float(cv2.contourArea(hull)) / (camera.width * camera.height)


def pose_uncertainty(points3d: np.ndarray, pose: Pose, camera: CameraSpec, sigma_px: float = 1.0
                     ) -> tuple[float, float]:
    """How well the inliers constrain the pose: the 1-sigma error of the camera centre (metres) and
    of its rotation (degrees) under `sigma_px` pixels of keypoint noise, from the reprojection
    Jacobian (pinhole part; central differences). inf when the inliers leave it unconstrained."""
    from scipy.spatial.transform import Rotation
    K = camera.K
    X = np.asarray(points3d, np.float64)

    def project(p):
        R = Rotation.from_rotvec(p[:3]).as_matrix() @ pose.R
        Xc = (X - p[3:]) @ R.T
        return (Xc[:, :2] / Xc[:, 2:3] * [K[0, 0], K[1, 1]]).ravel()

    p0 = np.concatenate([np.zeros(3), pose.center])
    J = np.empty((2 * len(X), 6))
    for k in range(6):
        d = np.zeros(6)
        d[k] = 1e-6
        J[:, k] = (project(p0 + d) - project(p0 - d)) / 2e-6
    info = J.T @ J
    if len(X) < 3 or np.linalg.cond(info) > 1e15:
        return float("inf"), float("inf")
    cov = np.linalg.inv(info) * sigma_px ** 2
    return float(np.sqrt(np.trace(cov[3:, 3:]))), float(np.degrees(np.sqrt(np.trace(cov[:3, :3]))))


def rival_ratio(inliers: list[int], poses: list[Pose | None], center: np.ndarray, radius: float) -> float:
    """The place ratio test of a pose at `center`, from candidates verified by their own PnP: the
    most inliers of a candidate placed over `radius` metres away (a rival place) over the most of
    one placed within it, or over 1 when none is. High: another place explains the query about as
    well (a repeated facade, a wrong street)."""
    return rival_ratio_at([None if p is None else float(np.linalg.norm(p.center - center)) for p in poses],
                          inliers, radius)


def rival_ratio_at(distances: list[float | None], inliers: list[int], radius: float) -> float:
    """`rival_ratio` from each candidate's distance to the pose (None: no pose of its own)."""
    near = far = 0
    for k, d in zip(inliers, distances):
        if d is None:
            continue
        if d > radius:
            far = max(far, k)
        else:
            near = max(near, k)
    return far / max(near, 1)
