"""Figures for the walkthrough notebook: retrieval lists, matches and inliers, a top-down map."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .features import match_descriptors, read_features
from .geometry import Pose
from .images import read_image


def plot_retrieval(image_dir: Path, query: str, retrieved: list[str], correct: set[str], k: int = 5):
    """The query and its top-k database images, green frame if the image is a true positive."""
    fig, axes = plt.subplots(1, k + 1, figsize=(3 * (k + 1), 2.6))
    axes[0].imshow(read_image(Path(image_dir) / query))
    axes[0].set_title(f"query\n{Path(query).name}", fontsize=8)
    for ax, name in zip(axes[1:], retrieved[:k]):
        ax.imshow(read_image(Path(image_dir) / name))
        ok = name in correct
        for s in ax.spines.values():
            s.set_edgecolor("limegreen" if ok else "red")
            s.set_linewidth(4)
        ax.set_title(f"{'right' if ok else 'wrong'}: {name}", fontsize=8, color="green" if ok else "red")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_matches(image_dir: Path, features: Path, query: str, db_name: str, ratio: float = 0.8,
                 inlier_points: np.ndarray | None = None):
    """Query | database image side by side with their SIFT matches; query keypoints that are PnP
    inliers (if given) drawn as green dots."""
    qi, di = read_image(Path(image_dir) / query), read_image(Path(image_dir) / db_name)
    qf, df = read_features(features, query), read_features(features, db_name)
    m = match_descriptors(qf["descriptors"], df["descriptors"], ratio=ratio)
    h = max(qi.shape[0], di.shape[0])
    canvas = np.zeros((h, qi.shape[1] + di.shape[1], 3), dtype=np.uint8)
    canvas[:qi.shape[0], :qi.shape[1]] = qi
    canvas[:di.shape[0], qi.shape[1]:] = di
    fig, ax = plt.subplots(figsize=(12, 4.5))
    ax.imshow(canvas)
    a, b = qf["keypoints"][m[:, 0]] - 0.5, df["keypoints"][m[:, 1]] - 0.5  # COLMAP -> array coords
    for (x0, y0), (x1, y1) in zip(a, b):
        ax.plot([x0, x1 + qi.shape[1]], [y0, y1], lw=0.5, color="yellow", alpha=0.6)
    if inlier_points is not None and len(inlier_points):
        ax.scatter(inlier_points[:, 0] - 0.5, inlier_points[:, 1] - 0.5, s=6, c="lime", label="PnP inliers")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"{len(m)} matches: {Path(query).name} <-> {db_name}", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    return fig


def ground_axes(db_poses: dict[str, Pose]) -> np.ndarray:
    """(2, 3): two world directions spanning the ground, perpendicular to the cameras' mean up
    direction (each camera's -y axis: photos are taken upright). The synthetic town and Aachen have
    z up, and this gives their x and y; a map made from photos has no set axis, and this finds it."""
    up = np.mean([-p.R[1] for p in db_poses.values()], axis=0) if db_poses else np.zeros(3)
    n = np.linalg.norm(up)
    if n < 1e-6:
        return np.eye(3)[:2]
    up = up / n
    ref = np.eye(3)[0] if abs(up[0]) < 0.9 else np.eye(3)[1]
    e1 = ref - up * (ref @ up)
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(up, e1)])


def plot_topdown(db_poses: dict[str, Pose], truth: dict[str, Pose] | None, estimates: dict[str, Pose],
                 points: np.ndarray | None = None, arrow: float | None = None, verified: set[str] | None = None):
    """Bird's-eye view, looking down the cameras' mean up direction (`ground_axes`): database
    cameras, ground-truth and estimated query poses; with `verified`, the queries counted as
    localized in red and the others (unverified estimates and stand-ins) in orange. Arrows are
    `arrow` long (default: 3 m, or a tenth of the cameras' extent when that is smaller)."""
    A = ground_axes(db_poses)
    fig, ax = plt.subplots(figsize=(8, 8))
    sel = np.zeros((0, 2))
    if points is not None and len(points):
        sel = points[np.random.default_rng(0).permutation(len(points))[:20000]] @ A.T
        ax.scatter(sel[:, 0], sel[:, 1], s=0.3, c="lightgray", label="3D points")
    C = np.stack([p.center for p in db_poses.values()]) @ A.T
    ax.scatter(C[:, 0], C[:, 1], s=6, c="tab:blue", label="database cameras")
    extent = float(np.ptp(C, axis=0).max()) if len(C) > 1 else 0.0
    if arrow is None:
        arrow = min(3.0, 0.1 * extent) if extent > 0 else 3.0

    def draw(poses, colour, label):
        first = True
        for p in poses.values():
            c, d = A @ p.center, A @ p.viewing_direction
            ax.arrow(c[0], c[1], arrow * d[0], arrow * d[1], color=colour, width=0.05 * arrow,
                     length_includes_head=True, label=label if first else None)
            first = False

    if truth:
        draw(truth, "tab:green", "query ground truth")
    if verified is None:
        draw(estimates, "tab:red", "query estimate")
    else:
        draw({q: p for q, p in estimates.items() if q in verified}, "tab:red", "query, localized")
        draw({q: p for q, p in estimates.items() if q not in verified}, "tab:orange", "query, not verified")
    if truth:
        for q, e in estimates.items():
            if q in truth:
                g, c = A @ truth[q].center, A @ e.center
                ax.plot([g[0], c[0]], [g[1], c[1]], c="k", lw=0.5)
    # frame the map (the database cameras, with a margin of half their extent, and the central 96% of
    # the points when there are enough to tell), not stray far points or far-off estimates, which would
    # squeeze it into a corner; what lies outside is counted
    lo, hi = C.min(0), C.max(0)
    pad = 0.5 * max(float((hi - lo).max()), 1e-3 if extent < 1.0 else 1.0)
    lo, hi = lo - pad, hi + pad
    if len(sel) >= 50:
        lo, hi = np.minimum(lo, np.percentile(sel, 2, axis=0)), np.maximum(hi, np.percentile(sel, 98, axis=0))
    far = sum(not ((lo <= A @ p.center) & (A @ p.center <= hi)).all() for p in estimates.values())
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.legend(fontsize=8)
    ax.set_title("top-down view" + (f"; {far} estimate(s) outside the frame" if far else ""))
    return fig


def save_topdown(path: Path, db_poses: dict[str, Pose], truth: dict[str, Pose] | None, estimates: dict[str, Pose],
                 points: np.ndarray | None, verified: set[str]) -> None:
    """`plot_topdown` written to a PNG (atomically), for a run's folder: where the queries were placed."""
    from .storage import atomic_path
    fig = plot_topdown(db_poses, truth, estimates, points, verified=verified)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
