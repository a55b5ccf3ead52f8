"""The map and 2D-3D matching: the triangulated model indexed for fast lookups (`SfMModel`), one
query matched to a database image and lifted to 3D through its triangulated keypoints
(`match_image`), several images' matches pooled into distinct correspondences (`pool`), and
hloc's covisibility clustering. Localization (mmcrossvit/localization.py) builds on these."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .colmap_io import CameraSpec
from .colmap_model import read_colmap_cameras_poses, read_images_points2d, read_points3d
from .features import FeatureStore, match_descriptors
from .geometry import Pose


@dataclass
class SfMModel:
    """What localization needs from the triangulated model, indexed for fast lookups."""
    poses: dict[str, Pose]
    cameras: dict[str, CameraSpec]
    point3d_ids: dict[str, np.ndarray]      # per database keypoint, -1 if untriangulated
    xyz: np.ndarray                          # (P, 3)
    point_ids: np.ndarray = field(repr=False, default=None)  # (P,) COLMAP ids of xyz's rows
    _order: np.ndarray = field(repr=False, default=None)

    @classmethod
    def load(cls, folder: Path) -> "SfMModel":
        cams, poses = read_colmap_cameras_poses(folder)
        p2d = read_images_points2d(folder)
        pids, xyz = read_points3d(folder)
        m = cls(poses, cams, {n: ids for n, (_, ids) in p2d.items()}, xyz, pids, np.argsort(pids))
        return m

    def point_index(self, ids: np.ndarray) -> np.ndarray:
        return self._order[np.searchsorted(self.point_ids, ids, sorter=self._order)]


def covisibility_clusters(model: SfMModel, names: list[str]) -> list[list[str]]:
    """Retrieved images grouped into connected components of shared 3D points, largest first
    (hloc's covisibility clustering), keeping retrieval order within a cluster."""
    sets = [set(model.point3d_ids.get(n, np.zeros(0, np.int64))[model.point3d_ids.get(n, np.zeros(0, np.int64)) >= 0].tolist())
            for n in names]
    parent = list(range(len(names)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if sets[i] & sets[j]:
                parent[find(i)] = find(j)
    groups: dict[int, list[str]] = {}
    for i, n in enumerate(names):
        groups.setdefault(find(i), []).append(n)
    return sorted(groups.values(), key=len, reverse=True)


@dataclass
class ImageMatches:
    """One database image's matches to the query, lifted to 3D: the query keypoint and the
    3D point (a row of SfMModel.xyz) of each match whose database keypoint is triangulated, and
    the raw match count before lifting."""
    keypoints: np.ndarray  # (M,) query keypoint indices
    points: np.ndarray     # (M,) rows of SfMModel.xyz
    raw: int = 0

    @classmethod
    def empty(cls) -> "ImageMatches":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), 0)

    def distinct(self) -> int:
        """Distinct (query keypoint, 3D point) pairs: the verification score of re-ranking."""
        if not len(self.keypoints):
            return 0
        return int(len(np.unique(np.stack([self.keypoints, self.points], 1), axis=0)))


def match_image(model: SfMModel, q_feats: dict, features: Path | FeatureStore, name: str, ratio: float = 0.8,
                device=None, points_only: bool = False) -> ImageMatches:
    """Match the query to one database image and keep the matches to triangulated keypoints.
    An image the model does not hold contributes nothing (not even raw matches). With
    `points_only`, the query is matched to the image's triangulated keypoints alone (the
    nearest neighbours and the ratio test among them): a few times cheaper, for re-ranking."""
    if name not in model.point3d_ids:
        return ImageMatches.empty()
    f = FeatureStore.of(features)[name]
    ids = model.point3d_ids[name]
    if len(ids) != len(f["keypoints"]):  # features re-extracted after the SfM model was built
        raise RuntimeError(f"features of {name} no longer match the SfM model; re-run preprocessing.py --overwrite")
    if points_only:
        rows = np.flatnonzero(ids >= 0)
        m = match_descriptors(q_feats["descriptors"], f["descriptors"][rows], ratio=ratio, device=device)
        m[:, 1] = rows[m[:, 1]]
    else:
        m = match_descriptors(q_feats["descriptors"], f["descriptors"], ratio=ratio, device=device)
    raw = len(m)
    m = m[ids[m[:, 1]] >= 0]
    return ImageMatches(m[:, 0], model.point_index(ids[m[:, 1]]), raw)


def pool(model: SfMModel, q_feats: dict, per_image: list[tuple[str, ImageMatches]]
         ) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Pool several images' matches into 2D-3D correspondences (see `correspondences`)."""
    total = sum(mi.raw for _, mi in per_image)
    if not per_image:
        return np.zeros((0, 2)), np.zeros((0, 3)), [], total
    kp_idx = [mi.keypoints for _, mi in per_image]
    pt_idx = [mi.points for _, mi in per_image]
    src = [n for n, mi in per_image for _ in range(len(mi.keypoints))]
    pairs = np.stack([np.concatenate(kp_idx), np.concatenate(pt_idx)], 1)
    _, first = np.unique(pairs, axis=0, return_index=True)
    first = np.sort(first)  # keep the retrieval order of first occurrences
    kp, pt = pairs[first, 0], pairs[first, 1]
    return (q_feats["keypoints"][kp].astype(np.float64), model.xyz[pt], [src[i] for i in first], total)


def correspondences(model: SfMModel, q_feats: dict, features: Path | FeatureStore, db_names: list[str], ratio: float = 0.8
                    ) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Query 2D keypoints, their 3D points, the db image each came first from, and the raw match
    count. A (query keypoint, 3D point) pair found through several database images that observe
    the point is kept once (as hloc pools them): RANSAC and the inlier count see distinct pairs."""
    store = FeatureStore.of(features)
    return pool(model, q_feats, [(n, match_image(model, q_feats, store, n, ratio)) for n in db_names
                                 if n in model.point3d_ids])
