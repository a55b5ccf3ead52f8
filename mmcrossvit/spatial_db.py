"""The spatial-contrastive database: which database images share 3D points, and how much.

For anchor i, positives are images sharing at least `min_shared` triangulated points with it,
weighted by the IoU of the two images' 3D bounding boxes (each built from the image's observed
points after z-score outlier removal); negatives are images sharing no point at all.

Everything is vectorised over the image-by-point incidence matrix A (sparse, binary): the
shared-point counts are A @ A.T, and per-image boxes come from per-image statistics of the
observations. No Python loop over points or image pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .geometry import box_iou
from .storage import read_npz, write_npz


@dataclass
class SpatialDB:
    names: np.ndarray          # (N,) database image names
    shared: sp.csr_matrix      # (N, N) shared-point counts, zero diagonal
    boxes: np.ndarray          # (N, 2, 3) robust boxes; NaN for images without points
    num_points: np.ndarray     # (N,) observed 3D points per image
    pos_indptr: np.ndarray     # CSR rows of positives
    pos_indices: np.ndarray
    pos_iou: np.ndarray
    fold: np.ndarray           # (N,) k-fold assignment of anchors
    min_shared: int

    def positives(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s = slice(self.pos_indptr[i], self.pos_indptr[i + 1])
        return self.pos_indices[s], self.pos_iou[s]

    def negative_mask(self, i: int) -> np.ndarray:
        """Images sharing no point with anchor i (and not i itself)."""
        m = np.ones(len(self.names), dtype=bool)
        m[self.shared.indices[self.shared.indptr[i]:self.shared.indptr[i + 1]]] = False
        m[i] = False
        return m

    def save(self, path: Path) -> None:
        write_npz(path, names=self.names.astype(str), shared_indptr=self.shared.indptr,
                  shared_indices=self.shared.indices, shared_counts=self.shared.data,
                  boxes=self.boxes, num_points=self.num_points, pos_indptr=self.pos_indptr,
                  pos_indices=self.pos_indices, pos_iou=self.pos_iou, fold=self.fold,
                  min_shared=np.array(self.min_shared))

    @classmethod
    def load(cls, path: Path) -> "SpatialDB":
        d = read_npz(path)
        n = len(d["names"])
        shared = sp.csr_matrix((d["shared_counts"], d["shared_indices"], d["shared_indptr"]), shape=(n, n))
        return cls(d["names"], shared, d["boxes"], d["num_points"], d["pos_indptr"], d["pos_indices"],
                   d["pos_iou"], d["fold"], int(d["min_shared"]))


def incidence(image_idx: np.ndarray, point_idx: np.ndarray, num_images: int, num_points: int) -> sp.csr_matrix:
    """Binary image-by-point matrix from observations (duplicates collapse to one)."""
    A = sp.csr_matrix((np.ones(len(image_idx), dtype=np.float32), (image_idx, point_idx)),
                      shape=(num_images, num_points))
    A.sum_duplicates()
    A.data[:] = 1.0
    return A


def shared_counts(A: sp.csr_matrix) -> sp.csr_matrix:
    S = (A @ A.T).tocsr()
    S.setdiag(0)
    S.eliminate_zeros()
    S.data = np.rint(S.data).astype(np.int32)
    S.sort_indices()
    return S


def robust_boxes(A: sp.csr_matrix, xyz: np.ndarray, z_thresh: float = 3.0) -> np.ndarray:
    """(N, 2, 3) per-image boxes of observed points after per-axis z-score filtering.

    Matches geometry.robust_box image by image; NaN rows for images with no points.
    """
    A = A.tocsr()
    n = np.diff(A.indptr)
    rows = np.repeat(np.arange(A.shape[0]), n)
    P = xyz[A.indices].astype(np.float64)                       # one row per observation
    cnt = np.maximum(n, 1)[:, None]
    # per-image sums by bincount (np.add.reduceat fails on trailing images without points)
    mean = np.stack([np.bincount(rows, P[:, k], minlength=A.shape[0]) for k in range(3)], 1) / cnt
    sq = np.stack([np.bincount(rows, P[:, k] ** 2, minlength=A.shape[0]) for k in range(3)], 1) / cnt
    std = np.sqrt(np.maximum(sq - mean ** 2, 0))
    std = np.where(std > 1e-12 * np.maximum(1, np.abs(mean)), std, 1.0)
    z = np.abs(P - mean[rows]) / std[rows]
    keep = (z <= z_thresh).all(1)
    # images whose every observation is an outlier keep them all (as robust_box does)
    kept_per_image = np.bincount(rows[keep], minlength=A.shape[0])
    keep |= (kept_per_image == 0)[rows]
    # kept rows stay grouped by image (CSR order): min/max per contiguous run with reduceat,
    # ~20x faster than ufunc.at at Aachen scale
    Pk, rk = P[keep], rows[keep]
    lo = np.full((A.shape[0], 3), np.inf)
    hi = np.full((A.shape[0], 3), -np.inf)
    if len(rk):
        starts = np.flatnonzero(np.r_[True, rk[1:] != rk[:-1]])
        lo[rk[starts]] = np.minimum.reduceat(Pk, starts, axis=0)
        hi[rk[starts]] = np.maximum.reduceat(Pk, starts, axis=0)
    boxes = np.stack([lo, hi], 1)
    boxes[n == 0] = np.nan
    return boxes


def build(names: list[str], image_idx: np.ndarray, point_idx: np.ndarray, xyz: np.ndarray,
          min_shared: int = 8, folds: int = 5, seed: int = 0, z_thresh: float = 3.0) -> SpatialDB:
    N = len(names)
    A = incidence(image_idx, point_idx, N, len(xyz))
    S = shared_counts(A)
    boxes = robust_boxes(A, xyz, z_thresh)
    P = S.copy()
    P.data = (P.data >= min_shared).astype(np.int8)
    P.eliminate_zeros()
    P.sort_indices()
    rows = np.repeat(np.arange(N), np.diff(P.indptr))
    iou = box_iou(boxes[rows], boxes[P.indices]).astype(np.float32)
    iou = np.nan_to_num(iou, nan=0.0)
    fold = np.empty(N, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(N)] = np.arange(N) % max(folds, 1)
    return SpatialDB(np.asarray(names), S, boxes, np.diff(A.indptr).astype(np.int64), P.indptr.astype(np.int64),
                     P.indices.astype(np.int64), iou, fold, min_shared)


def observations(names: list[str], image_points: dict[str, tuple[np.ndarray, np.ndarray]],
                 point_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image index, point index) per observation, indices into `names` and `point_ids`."""
    order = np.argsort(point_ids)
    ii, pp = [], []
    for i, n in enumerate(names):
        ids = image_points[n][1] if n in image_points else np.zeros(0, dtype=np.int64)
        ii.append(np.full(len(ids), i, dtype=np.int64))
        pp.append(order[np.searchsorted(point_ids, ids, sorter=order)] if len(ids) else ids)
    return (np.concatenate(ii) if ii else np.zeros(0, np.int64)), (np.concatenate(pp) if pp else np.zeros(0, np.int64))


def stats(db: SpatialDB) -> dict:
    npos = np.diff(db.pos_indptr)
    N = len(db.names)
    nneg = N - 1 - np.diff(db.shared.indptr)
    q = np.quantile(db.pos_iou, [0.1, 0.5, 0.9]).tolist() if len(db.pos_iou) else [0, 0, 0]
    return {"images": N, "images_without_points": int((db.num_points == 0).sum()),
            "anchors_with_positives": int((npos > 0).sum()),
            "positives_per_anchor": {"mean": float(npos.mean()) if N else 0, "median": float(np.median(npos)) if N else 0,
                                     "max": int(npos.max()) if N else 0},
            "negatives_per_anchor": {"mean": float(nneg.mean()) if N else 0},
            "iou": {"mean": float(db.pos_iou.mean()) if len(db.pos_iou) else 0, "p10": q[0], "median": q[1], "p90": q[2]},
            "min_shared": db.min_shared, "folds": int(db.fold.max() + 1) if N else 0}
