"""Structure-from-motion with pycolmap: database pairs, matching, triangulation from known poses.

The flow follows hloc's triangulation: the reference model's cameras, rigs, frames and images
go into a fresh COLMAP database with their own ids, our SIFT features and matches are imported,
matches are verified against the known relative poses (epipolar distance), and
`pycolmap.triangulate_points` builds the 3D points. Without poses, `incremental_mapping`
reconstructs instead.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .colmap_io import CameraSpec
from .colmap_model import write_colmap_text
from .features import FeatureStore, match_descriptors, read_features
from .geometry import Pose

log = logging.getLogger(__name__)


FULL_DISK_FREE = 16 << 20  # bytes: a COLMAP failure with less free space than this is taken for a full disk


@contextlib.contextmanager
def storage_errors(folder: Path):
    """COLMAP reports a full disk as a RuntimeError ("SQLite error: database or disk is full", or
    "No registered database factory succeeded" when the database cannot even be opened): made
    the OSError it is, naming the folder, so that it ends in one line like any other."""
    try:
        yield
    except RuntimeError as e:
        try:
            low = shutil.disk_usage(folder).free < FULL_DISK_FREE
        except OSError:
            low = False
        if "disk is full" in str(e) or low:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (COLMAP: {first})", str(folder)) from None
        raise


def colmap_logging(verbose: bool) -> None:
    """COLMAP logs every triangulated image at INFO; keep warnings only unless asked."""
    import pycolmap
    pycolmap.logging.minloglevel = 0 if verbose else 1


def reference_reconstruction(cameras: dict[str, CameraSpec], poses: dict[str, Pose]):
    """A pycolmap.Reconstruction (no points) with one camera per image, ids 1..N in name order."""
    import pycolmap
    names = sorted(poses)
    with tempfile.TemporaryDirectory() as tmp:
        write_colmap_text(tmp, {n: cameras[n] for n in names}, {n: poses[n] for n in names})
        return pycolmap.Reconstruction(tmp)


# nearest cameras fetched per image at first (times the pairs asked for), and the most
# (query images x neighbours) held at once while growing the neighbourhoods of the rest
_FIRST_NEIGHBOURS = 4
_MAX_BLOCK = 1 << 22


def pairs_from_poses(poses: dict[str, Pose], num: int = 20, max_angle: float = 60.0) -> list[tuple[str, str]]:
    """For each image, its `num` nearest images by camera centre among those looking within
    `max_angle` degrees of its own direction (hloc's pairs_from_poses idea); ties by name.

    A k-d tree fetches each image's nearest cameras and doubles the neighbourhood only for images
    that do not yet hold `num` within the angle, so time grows as n log n where directions are
    mixed and memory stays O(n) (a dense distance matrix needs 61 n^2 bytes: 568 GB at 100k)."""
    from scipy.spatial import cKDTree
    names = sorted(poses)
    n = len(names)
    if n < 2:
        return []
    C = np.stack([poses[x].center for x in names]).astype(np.float64)
    D = np.stack([poses[x].viewing_direction for x in names]).astype(np.float64)
    k = min(num, n - 1)
    cos_min = np.cos(np.radians(max_angle))
    tree = cKDTree(C)
    chosen = np.full((n, k), -1, np.int64)
    todo, m = np.arange(n), min(n, _FIRST_NEIGHBOURS * k + 1)
    while len(todo):
        undone = []
        step = max(1, _MAX_BLOCK // m)
        for s in range(0, len(todo), step):
            rows = todo[s:s + step]
            d_kd, nb = tree.query(C[rows], k=m)
            nb = nb.reshape(len(rows), m)
            d_kd = d_kd.reshape(len(rows), m)
            dist = np.linalg.norm(C[rows][:, None] - C[nb], axis=-1)
            cos = np.clip(np.matmul(D[nb], D[rows][:, :, None])[..., 0], -1, 1)
            valid = (cos >= cos_min) & (nb != rows[:, None])
            # complete: k valid cameras lie strictly inside the fetched radius (or all were fetched),
            # so no camera left out can be nearer than, or tie with, the k-th
            inside = valid & (d_kd < d_kd[:, -1:] * (1 - 1e-9))
            done = (inside.sum(1) >= k) | (m >= n)
            for r in np.flatnonzero(done):
                cand = np.flatnonzero(valid[r])
                order = np.lexsort((nb[r, cand], dist[r, cand]))[:k]
                chosen[rows[r], :len(order)] = nb[r, cand[order]]
            undone.append(rows[~done])
        todo, m = np.concatenate(undone), min(n, 2 * m)
    i = np.repeat(np.arange(n), k)
    j = chosen.ravel()
    keep = j >= 0
    ab = np.unique(np.stack([np.minimum(i, j)[keep], np.maximum(i, j)[keep]], 1), axis=0)
    return [(names[a], names[b]) for a, b in ab]


def pairs_exhaustive(names: list[str]) -> list[tuple[str, str]]:
    names = sorted(names)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]


def create_database(rec, db_path: Path) -> dict[str, int]:
    """Write the model's cameras, rigs, frames and images into a new COLMAP database."""
    import pycolmap
    if db_path.exists():
        db_path.unlink()
    with pycolmap.Database.open(db_path) as db:
        for cam in rec.cameras.values():
            db.write_camera(cam, use_camera_id=True)
        for rig in rec.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in rec.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for im in rec.images.values():
            db.write_image(im, use_image_id=True)
    return {im.name: iid for iid, im in rec.images.items()}


def import_features(db_path: Path, image_ids: dict[str, int], features: Path) -> None:
    import pycolmap
    with pycolmap.Database.open(db_path) as db:
        for name, iid in tqdm(image_ids.items(), desc="import features", unit="img"):
            f = read_features(features, name)
            kp = np.concatenate([f["keypoints"], f["scales"][:, None], np.zeros_like(f["scales"])[:, None]], 1)
            db.write_keypoints(iid, kp.astype(np.float32))
            db.write_descriptors(iid, pycolmap.FeatureDescriptors(pycolmap.FeatureExtractorType.SIFT, f["descriptors"]))


def epipolar_inliers(cam0, pose0: Pose, kp0: np.ndarray, cam1, pose1: Pose, kp1: np.ndarray,
                     max_error: float) -> np.ndarray:
    """Mask of correspondences within `max_error` pixels of their epipolar lines (both ways)."""
    x0 = np.asarray(cam0.cam_from_img(kp0.astype(np.float64)))
    x1 = np.asarray(cam1.cam_from_img(kp1.astype(np.float64)))
    rel = pose1 @ pose0.inverse()
    t = rel.t
    E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ rel.R
    h0 = np.concatenate([x0, np.ones((len(x0), 1))], 1)
    h1 = np.concatenate([x1, np.ones((len(x1), 1))], 1)
    l1 = h0 @ E.T   # lines in image 1
    l0 = h1 @ E     # lines in image 0
    num = np.abs(np.sum(h1 * l1, 1))
    e1 = num / np.maximum(np.linalg.norm(l1[:, :2], axis=1), 1e-12)
    e0 = num / np.maximum(np.linalg.norm(l0[:, :2], axis=1), 1e-12)
    return (e0 <= cam0.cam_from_img_threshold(max_error)) & (e1 <= cam1.cam_from_img_threshold(max_error))


class _PairMatcher:
    """One process's matcher: features through a bounded cache and, with known
    poses, the matches filtered by their epipolar distance."""

    def __init__(self, features: Path, cameras: dict[str, CameraSpec] | None, poses: dict[str, Pose] | None,
                 ratio: float, max_error: float, device: str):
        from .device import pick
        self.poses, self.ratio, self.max_error = poses, ratio, max_error
        self.feats = FeatureStore(features)
        self.cameras = {n: c.to_pycolmap() for n, c in cameras.items()} if cameras else None
        self.device = pick(device)

    def __call__(self, pair: tuple[str, str]) -> tuple[np.ndarray, np.ndarray | None]:
        a, b = pair
        fa, fb = self.feats[a], self.feats[b]
        m = match_descriptors(fa["descriptors"], fb["descriptors"], ratio=self.ratio,
                              device=self.device).astype(np.uint32)
        if self.poses is None:
            return m, None
        if not len(m):
            return m, m
        ok = epipolar_inliers(self.cameras[a], self.poses[a], fa["keypoints"][m[:, 0]],
                              self.cameras[b], self.poses[b], fb["keypoints"][m[:, 1]], self.max_error)
        return m, m[ok]


def _matcher_init(*args) -> _PairMatcher:
    return _PairMatcher(*args)


def _match_pair(matcher: _PairMatcher, pair):
    return matcher(pair)


def match_and_verify(db_path: Path, image_ids: dict[str, int], pairs: list[tuple[str, str]], features: Path,
                     cameras: dict[str, CameraSpec] | None = None, poses: dict[str, Pose] | None = None,
                     ratio: float = 0.8, max_error: float = 4.0, workers: int = 1, device: str = "auto") -> dict:
    """Match every pair and write the matches to the db; with `cameras` and `poses`, also the
    matches consistent with the known poses (two-view geometries). `workers` processes match
    (0: one per core); this process writes, in pair order, so the db does not depend on it."""
    import pycolmap
    from .parallel import mapped
    n_matches, n_inliers = [], []
    args = (Path(features), cameras, poses, ratio, max_error, device)
    with pycolmap.Database.open(db_path) as db, \
            mapped(_match_pair, pairs, workers, _matcher_init, args, chunksize=32) as results:
        for (a, b), (m, inl) in tqdm(zip(pairs, results), total=len(pairs), desc="match", unit="pair"):
            ia, ib = image_ids[a], image_ids[b]
            db.write_matches(ia, ib, m)
            if inl is not None:
                db.write_two_view_geometry(ia, ib, pycolmap.TwoViewGeometry(
                    inlier_matches=inl, config=pycolmap.TwoViewGeometryConfiguration.CALIBRATED))
                n_inliers.append(len(inl))
            n_matches.append(len(m))
    return {"pairs": len(pairs), "mean_matches": float(np.mean(n_matches)) if n_matches else 0.0,
            "mean_verified": float(np.mean(n_inliers)) if n_inliers else None}


def triangulate(rec, db_path: Path, image_dir: Path, out_dir: Path, min_pair_matches: int = 15,
                two_view_tracks: bool = False, min_angle: float = 1.5):
    """Points from the verified matches with the poses held fixed (hloc's triangulation).

    The poses are known, so the options guarding incremental SfM against wrong geometry can be
    relaxed: pairs with few verified matches (`min_pair_matches`, COLMAP's default 15) and tracks
    seen by two images only (dropped by default) still give correct points."""
    import pycolmap
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.min_num_matches = min_pair_matches
    opts.triangulation.ignore_two_view_tracks = not two_view_tracks
    opts.triangulation.min_angle = min_angle
    result = pycolmap.triangulate_points(rec, db_path, image_dir, tmp, clear_points=True, options=opts)
    result.write_text(str(tmp))
    _replace_dir(tmp, out_dir)
    return result


def incremental(db_path: Path, image_dir: Path, out_dir: Path, seed: int = 0, threads: int = -1):
    """Reconstruct poses and points when the dataset has no poses; keeps the largest model.
    COLMAP's seed is fixed (unset, it seeds from the clock): the same database gives the same model."""
    import pycolmap
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.random_seed = seed
    opts.num_threads = threads
    models = pycolmap.incremental_mapping(db_path, image_dir, tmp, opts)
    if not models:
        raise RuntimeError("incremental mapping reconstructed no model (too few matches?)")
    best = max(models.values(), key=lambda r: r.num_reg_images())
    final = tmp.with_name(tmp.name + "_best")
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir()
    best.write_text(str(final))
    shutil.rmtree(tmp)
    _replace_dir(final, out_dir)
    return best


def reconstruct(image_dir: Path, names: list[str], features: Path, work_dir: Path, out_dir: Path, pairs_path: Path,
                ratio: float = 0.8, workers: int = 1, device: str = "auto",
                default_focal_factor: float = 1.2, seed: int = 0,
                pairs: list[tuple[str, str]] | None = None) -> tuple[object, Path]:
    """The pose-free path: the listed images (and no others) with one camera each, guessed from
    their EXIF (else `default_focal_factor` x the longer side), matched in `pairs` (default: all), verified by
    COLMAP's two-view geometry, and reconstructed by incremental mapping (the largest model is
    kept), seeded so that the same photos give the same model. Returns (model, the COLMAP database
    in `work_dir`)."""
    import pycolmap
    from .colmap_io import write_pairs
    pairs = pairs_exhaustive(names) if pairs is None else pairs
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    db_path = work_dir / "database.db"
    opts = pycolmap.ImageReaderOptions()
    opts.camera_model = "SIMPLE_RADIAL"
    opts.default_focal_length_factor = default_focal_factor
    with pycolmap.Database.open(db_path):  # import_images needs the database to exist
        pass
    pycolmap.import_images(db_path, image_dir, pycolmap.CameraMode.PER_IMAGE, image_names=list(names), options=opts)
    with pycolmap.Database.open(db_path) as db:
        image_ids = {im.name: im.image_id for im in db.read_all_images()}
    import_features(db_path, image_ids, features)
    write_pairs(pairs_path, pairs)
    match_and_verify(db_path, image_ids, pairs, features, ratio=ratio, workers=workers, device=device)
    verify = pycolmap.TwoViewGeometryOptions()
    verify.ransac.random_seed = seed  # else COLMAP seeds each pair's RANSAC from the clock
    pycolmap.verify_matches(db_path, pairs_path, verify)
    return incremental(db_path, image_dir, out_dir, seed), db_path


def _replace_dir(src: Path, dst: Path) -> None:
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def model_summary(rec) -> dict:
    tracks = [p.track.length() for p in rec.points3D.values()]
    return {"registered_images": rec.num_reg_images(), "points": rec.num_points3D(),
            "observations": int(sum(tracks)),
            "mean_track_length": float(np.mean(tracks)) if tracks else 0.0,
            "mean_reprojection_error": float(rec.compute_mean_reprojection_error()) if tracks else 0.0}
