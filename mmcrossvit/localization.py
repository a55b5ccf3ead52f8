"""Hierarchical localization of one query: match against retrieved database images, lift the
matches to 2D-3D through the database keypoints' triangulated points, PnP-RANSAC + refinement.

hloc's localize_sfm does the same with its own features; this module works on the project's
SIFT features (features.h5) and the triangulated text model (outputs/<name>/sfm).

Optional re-ranking by local verification (`rerank_keep`): the query is matched to every
candidate once, each candidate is scored by its number of distinct 2D-3D correspondences, and
only the best `rerank_keep` are pooled for PnP (from the same matches, not matched again).
With `rerank_pnp`, the best-matched candidates are verified by a PnP of their own, and only those
whose pose agrees with the best-verified one's are pooled (`agreeing`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .acceptance import inlier_coverage, rival_ratio_at
from .colmap_io import CameraSpec
from .errors import DataError
from .features import FeatureStore, read_features
from .geometry import Pose
from .matching import (ImageMatches, SfMModel, correspondences, covisibility_clusters, match_image,  # noqa: F401
                       pool)


# the rules that can reject a pose RANSAC found (QueryResult.rejected_by)
REJECTIONS = ("inliers", "coverage", "place ratio")


@dataclass
class QueryResult:
    name: str
    pose: Pose
    success: bool
    num_matches: int
    num_inliers: int
    retrieved: list[str]
    seconds: dict
    inliers: list = field(default_factory=list, repr=False)  # per correspondence (for plots)
    points2d: np.ndarray | None = field(default=None, repr=False)
    points3d: np.ndarray | None = field(default=None, repr=False)
    db_of_match: list[str] | None = field(default=None, repr=False)
    # with re-ranking: every candidate verified (in the pairs file's order) and its score (distinct
    # 2D-3D correspondences); `retrieved` is then the kept ones, best first (what PnP pooled)
    candidates: list[str] | None = None
    verification: list[int] | None = None
    # with PnP verification: each candidate's own PnP inliers (0: not verified or no pose)
    pnp_inliers: list[int] | None = None
    # with the place ratio test (max_rival_ratio): the accepted pose's rival ratio (`rival_ratio`)
    rival: float | None = None
    # with LocalizeOptions.refine_focal: the focal length (px) the pose was refined with
    focal: float | None = None
    # a pose RANSAC found that a rule then rejected ("inliers", "coverage" or "place ratio"): `pose`
    # is the stand-in, `estimate` the rejected pose (hloc would write it; localize.py --unverified-pose)
    rejected_by: str | None = None
    estimate: Pose | None = field(default=None, repr=False)

    def log_row(self) -> dict:
        row = {"query": self.name, "success": self.success, "matches": self.num_matches,
               "inliers": self.num_inliers, "retrieved": self.retrieved, "seconds": self.seconds}
        if self.candidates is not None:
            row.update(candidates=self.candidates, verification=self.verification)
        if self.pnp_inliers is not None:
            row.update(pnp_inliers=self.pnp_inliers)
        if self.rival is not None:
            row.update(rival_ratio=self.rival)
        if self.focal is not None:
            row.update(focal=self.focal)
        if self.rejected_by is not None:
            row.update(rejected_by=self.rejected_by)
        return row


def rerank(names: list[str], matches: list[ImageMatches], keep: int) -> tuple[list[str], list[int]]:
    """Re-ranking by local verification: the `keep` candidates with the most distinct 2D-3D
    correspondences, best first; ties keep the candidates' own (retrieval) order. Returns the
    kept names and every candidate's score, in the order given."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    scores = [mi.distinct() for mi in matches]
    order = sorted(range(len(names)), key=lambda i: -scores[i])  # sorted() is stable: ties by rank
    return [names[i] for i in order[:keep]], scores


# RANSAC trials of a candidate's own PnP: verification needs an inlier count and a rough pose.
# COLMAP's 10,000 are spent on wrong candidates, whose inlier ratios are low; on the demo, capping
# them took verification from 0.50 to 0.07 s per query with the same recall (README, re-ranking)
VERIFY_TRIALS = 1000


def candidate_pose(model: "SfMModel", q_feats: dict, matches: ImageMatches, camera: CameraSpec, max_error: float,
                   seed: int, refine_focal: bool = False) -> tuple[int, Pose | None]:
    """One candidate's own PnP-RANSAC (no refinement) on its distinct 2D-3D correspondences:
    (inliers, pose), or (0, None) when RANSAC finds no pose. Reseeded, so it does not depend on
    which candidates were verified before it."""
    import pycolmap
    p2, p3, _, _ = pool(model, q_feats, [("", matches)])
    pycolmap.set_random_seed(seed)
    est = estimate_pose(p2, p3, camera, max_error, refine=False, max_trials=VERIFY_TRIALS, refine_focal=refine_focal)
    return (0, None) if est is None else (int(est.inliers.sum()), est.pose)


RERANK_FALLBACKS = ("best", "scores")


def agreeing(names: list[str], scores: list[int], inliers: list[int], poses: list[Pose | None], keep: int,
             radius: float, min_inliers: int) -> list[str]:
    """The candidates to pool after PnP verification, best first: ranked by their own inliers
    (ties by match score, then retrieval order), those within `radius` (metres, camera centres)
    of the best one's pose with at least min_inliers // 2 inliers of their own, at most `keep`.
    Candidates seen from elsewhere (a repeated facade, a wrong street) then never enter the pool.
    When no candidate reaches min_inliers on its own, the best one alone is kept."""
    order = sorted(range(len(names)), key=lambda i: (-inliers[i], -scores[i]))
    best = order[0]
    if inliers[best] < min_inliers or poses[best] is None:
        return [names[best]]
    c0 = poses[best].center
    near = [i for i in order if poses[i] is not None and inliers[i] >= min_inliers // 2
            and np.linalg.norm(poses[i].center - c0) <= radius]
    return [names[i] for i in near[:keep]]


def ransac_threshold(camera: CameraSpec, max_error: float, ref_size: float | None) -> float:
    """The PnP inlier threshold in pixels: `max_error` at a longer image side of `ref_size`
    (e.g. 12 px at Aachen's 1600), scaled to this query's size; unscaled when ref_size is None."""
    return max_error if not ref_size else max_error * max(camera.width, camera.height) / ref_size


class PoseEstimate(NamedTuple):
    pose: Pose
    inliers: np.ndarray   # bool mask over the correspondences
    camera: CameraSpec    # the camera the pose holds for (its focal length refined, when asked)


def estimate_pose(points2d: np.ndarray, points3d: np.ndarray, camera: CameraSpec, max_error: float = 12.0,
                  refine: bool = True, max_trials: int | None = None,
                  refine_focal: bool = False) -> PoseEstimate | None:
    """PnP-RANSAC + refinement (pycolmap; without it when not `refine`, at most `max_trials`
    RANSAC trials when given). With `refine_focal`, for a camera whose focal length is a guess,
    RANSAC estimates the focal length with the pose and refinement refines it (hloc's option)."""
    import pycolmap
    if len(points2d) < 4:
        return None
    opts = pycolmap.AbsolutePoseEstimationOptions()
    opts.ransac.max_error = max_error
    opts.estimate_focal_length = refine_focal
    if max_trials is not None:
        opts.ransac.max_num_trials = max_trials
    cam = camera.to_pycolmap()  # pycolmap writes the refined focal length into it
    if refine:
        ref = pycolmap.AbsolutePoseRefinementOptions()
        ref.refine_focal_length = refine_focal
        ret = pycolmap.estimate_and_refine_absolute_pose(points2d, points3d, cam, opts, ref)
    else:
        ret = pycolmap.estimate_absolute_pose(points2d, points3d, cam, opts)
    if ret is None:
        return None
    T = ret["cam_from_world"]
    spec = CameraSpec.from_pycolmap(cam) if refine_focal else camera
    return PoseEstimate(Pose.from_rigid3d(T),
                        np.asarray(ret["inlier_mask"], bool), spec)


@dataclass(frozen=True)
class LocalizeOptions:
    """Every setting that changes a query's pose, passed whole (the localize step builds it from the
    preset and its flags: `of`). The defaults are the paper preset's: no re-ranking, no extra rules."""
    ratio: float = 0.8                  # Lowe's ratio test on the SIFT matches
    ransac_max_error: float = 12.0      # PnP inlier threshold in px at a longer image side of ransac_ref_size
    ransac_ref_size: float | None = 1600  # (scaled to each query's size; None: unscaled)
    covisibility: bool = False          # hloc's covisibility clustering of the candidates
    min_inliers: int = 12               # a pose with fewer PnP inliers is not verified
    min_coverage: float = 0.0           # nor one whose inliers cover less of the image (0: off)
    max_rival_ratio: float = 0.0        # nor one a far-away candidate rivals this closely (0: off) ...
    rival_radius: float = 5.0           # ... "far" meaning beyond this many metres
    rerank_keep: int | None = None      # re-ranking: keep this many of the candidates (None: off)
    rerank_points: bool = False         # score candidates on their triangulated keypoints only
    rerank_pnp: int = 0                 # verify this many best-scored candidates by their own PnP
    rerank_agree: float = 5.0           # and keep those within this many metres of the best-verified
    rerank_fallback: str = "best"       # when none verifies alone: "best" candidate, or "scores" order
    refine_focal: bool = False          # estimate the focal length with the pose (a query whose focal is a guess)
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def of(cls, settings, **overrides) -> "LocalizeOptions":
        """From a settings mapping or namespace (a preset's, a run's recorded ones): the fields it has."""
        given = settings if isinstance(settings, dict) else vars(settings)
        return cls(**{**{f: given[f] for f in cls.__dataclass_fields__ if f in given}, **overrides})

    def threshold(self, camera: CameraSpec) -> float:
        return ransac_threshold(camera, self.ransac_max_error, self.ransac_ref_size)


def localize_query(name: str, camera: CameraSpec, retrieved: list[str], model: SfMModel,
                   features: Path | FeatureStore, opts: LocalizeOptions = LocalizeOptions()) -> QueryResult:
    """Localize one query; on failure its pose is the top retrieved image's (as hloc does), and a
    pose RANSAC found but a rule rejected (too few inliers, coverage, place ratio) is kept as the
    result's `estimate`, the rule named in `rejected_by`.
    The RANSAC threshold in pixels is `opts.threshold(camera)`. The result holds the best
    hypothesis's correspondences and inlier mask whether it succeeded or not (for diagnosis).

    With `rerank_keep`, `retrieved` are candidates: each is matched once and scored (`rerank`),
    and the best `rerank_keep` are localized from those same matches, best first (covisibility
    clustering, if on, applies to them); the result's `retrieved` is the kept list, so calling
    this again with it and no re-ranking reproduces the pose, and a failure falls back to the
    best-verified image's pose. With `rerank_points`, the verification matches the query to each
    candidate's triangulated keypoints only (a few times cheaper); the kept candidates are then
    matched in full for PnP. With `rerank_pnp` N, the N best-scored candidates with at least
    `min_inliers` correspondences are verified by their own PnP, and the kept ones are those
    `agreeing` (within `rerank_agree` metres) with the best-verified candidate's pose. When no
    candidate reaches `min_inliers` on its own, `rerank_fallback` decides: "best" pools the
    best-verified candidate alone, "scores" the best `rerank_keep` by score (as without PnP).

    With `max_rival_ratio` > 0, an accepted pose is also tested against other places: every
    candidate that could change the ratio gets its own PnP (`candidate_pose`) on the matches the query already has with it (the
    re-ranking's scoring matches, else the full ones), and the pose fails when `rival_ratio`
    (radius `rival_radius` metres) reaches `max_rival_ratio`.

    COLMAP's RANSAC is reseeded per query, so a query's pose does not depend on which queries
    ran before it (an interrupted run resumes to identical results)."""
    import pycolmap
    from .device import pick
    ratio, covisibility, min_inliers, min_coverage, seed = (opts.ratio, opts.covisibility, opts.min_inliers,
                                                            opts.min_coverage, opts.seed)
    rerank_keep, rerank_points, rerank_pnp, rerank_agree = (opts.rerank_keep, opts.rerank_points, opts.rerank_pnp,
                                                            opts.rerank_agree)
    max_rival_ratio, rival_radius, max_error = opts.max_rival_ratio, opts.rival_radius, opts.threshold(camera)
    dev = pick(opts.device)
    store = FeatureStore.of(features)  # pass one store to reuse database features across queries
    t0 = time.time()
    try:
        qf = read_features(store.path, name)  # read once: not cached
    except DataError:  # no features (an unreadable image): the query falls back
        qf = {"keypoints": np.zeros((0, 2), np.float32), "descriptors": np.zeros((0, 128), np.uint8)}
    t1 = time.time()
    cache: dict[str, ImageMatches] = {}  # each candidate is matched once

    def matched(n: str) -> ImageMatches:
        if n not in cache:
            cache[n] = match_image(model, qf, store, n, ratio, dev)
        return cache[n]

    candidates = scores = pnp_inliers = scored = None
    own: dict[str, tuple[int, Pose | None]] = {}  # candidates' own PnP (inliers, pose)
    t_match = t_pnp = 0.0
    if rerank_keep is not None:
        candidates = list(retrieved)
        ta = time.time()
        # scored on matches to each candidate's 3D points alone; the kept ones are matched in full
        scored = [match_image(model, qf, store, n, ratio, dev, points_only=True) for n in candidates] \
            if rerank_points else [matched(n) for n in candidates]
        retrieved, scores = rerank(candidates, scored, rerank_keep)
        t_match += time.time() - ta
        if rerank_pnp:
            ta = time.time()
            pnp_inliers, poses = [0] * len(candidates), [None] * len(candidates)
            by_score = sorted(range(len(candidates)), key=lambda i: -scores[i])[:rerank_pnp]
            for i in by_score:
                if scores[i] >= min_inliers:  # fewer cannot reach the bar
                    pnp_inliers[i], poses[i] = candidate_pose(model, qf, scored[i], camera, max_error, seed,
                                                                          opts.refine_focal)
                    own[candidates[i]] = pnp_inliers[i], poses[i]
            kept = agreeing(candidates, scores, pnp_inliers, poses, rerank_keep, rerank_agree, min_inliers)
            # inconclusive (no candidate verified on its own): pooled matches may still find the pose
            if opts.rerank_fallback == "best" or pnp_inliers[candidates.index(kept[0])] >= min_inliers:
                retrieved = kept
            t_pnp += time.time() - ta
    # reseeded after verification: localizing the kept list again without re-ranking gives this pose
    pycolmap.set_random_seed(seed)
    groups = covisibility_clusters(model, retrieved) if covisibility else [retrieved]
    best = None
    total = 0
    for g in groups:
        ta = time.time()
        p2, p3, src, n = pool(model, qf, [(x, matched(x)) for x in g if x in model.point3d_ids])
        tb = time.time()
        total += n
        est = estimate_pose(p2, p3, camera, max_error, refine_focal=opts.refine_focal)
        t_match += tb - ta
        t_pnp += time.time() - tb
        if est is not None and (best is None or est.inliers.sum() > best[1].sum()):
            best, best_camera = (est.pose, est.inliers, p2, p3, src), est.camera
    secs = {"features": round(t1 - t0, 4), "matching": round(t_match, 4), "pnp": round(t_pnp, 4)}
    hyp = () if best is None else (best[1].tolist(), best[2], best[3], best[4])
    extra = dict(candidates=candidates, verification=scores, pnp_inliers=pnp_inliers)
    if opts.refine_focal and best is not None:
        extra["focal"] = round(float(best_camera.params[0]), 2)
    if best is not None and best[1].sum() >= min_inliers and (
            min_coverage <= 0 or inlier_coverage(best[2][best[1]], camera) >= min_coverage):
        if max_rival_ratio <= 0:
            return QueryResult(name, best[0], True, total, int(best[1].sum()), retrieved, secs, *hyp, **extra)
        ta = time.time()
        names = candidates if candidates is not None else retrieved
        ms = {n: scored[i] if scored is not None else matched(n) for i, n in enumerate(names)}
        far_of = lambda p: None if p is None else float(np.linalg.norm(p.center - best[0].center))  # noqa: E731
        ks, dists = [k for k, _ in own.values()], [far_of(p) for _, p in own.values()]
        # the most distinct correspondences first: a candidate's own PnP has at most that many inliers,
        # so once that is no more than both the best near and the best far count, no later candidate
        # can change the ratio and the rest need no PnP (the value of verifying them all)
        todo = [n for n in names if n not in own and len(ms[n].keypoints) >= 4]  # fewer: no pose (estimate_pose)
        bound = {n: ms[n].distinct() for n in todo}
        for n in sorted(todo, key=lambda n: -bound[n]):  # stable: ties keep the candidates' order
            near = max((k for k, d in zip(ks, dists) if d is not None and d <= rival_radius), default=0)
            far = max((k for k, d in zip(ks, dists) if d is not None and d > rival_radius), default=0)
            if bound[n] <= min(near, far):
                break
            k, p = own[n] = candidate_pose(model, qf, ms[n], camera, max_error, seed, opts.refine_focal)
            ks.append(k)
            dists.append(far_of(p))
        rival = rival_ratio_at(dists, ks, rival_radius)
        extra["rival"] = round(rival, 4)
        secs["pnp"] = round(secs["pnp"] + time.time() - ta, 4)
        if rival < max_rival_ratio:
            return QueryResult(name, best[0], True, total, int(best[1].sum()), retrieved, secs, *hyp, **extra)
        rejected = "place ratio"
    elif best is not None:
        rejected = "inliers" if best[1].sum() < min_inliers else "coverage"
    if best is not None:
        extra.update(rejected_by=rejected, estimate=best[0])
    stand_in = model.poses[retrieved[0]] if retrieved and retrieved[0] in model.poses else Pose(np.eye(3), np.zeros(3))
    return QueryResult(name, stand_in, False, total, 0 if best is None else int(best[1].sum()), retrieved, secs,
                       *hyp, **extra)


# An unverified estimate whose camera lies farther from the database cameras' centre than this many
# times their own farthest distance is no pose of this map (PnP on a degenerate or wrong-place
# correspondence set: seen 1.7 km and 1e15 m away on the demo); the stand-in is written instead.
MAP_REACH = 2.0


def map_region(model: SfMModel) -> tuple[np.ndarray, float]:
    """(centre, radius): the database cameras' median centre and MAP_REACH times their farthest distance."""
    c = np.array([p.center for p in model.poses.values()]).reshape(-1, 3)
    if not len(c):
        return np.zeros(3), float("inf")
    mid = np.median(c, axis=0)
    return mid, MAP_REACH * max(float(np.linalg.norm(c - mid, axis=1).max()), 1.0)


def written_pose(row: dict, unverified_pose: str, region: tuple[np.ndarray, float] | None = None) -> tuple[Pose, str]:
    """The pose a log row puts in the results file, and what it is: "localized", "unverified"
    (a rejected estimate, with --unverified-pose estimate, whose camera lies in the map's `region`)
    or the stand-in's kind."""
    if row["success"]:
        return Pose.from_qt(row["qvec"], row["tvec"]), "localized"
    if unverified_pose == "estimate" and row.get("estimate"):
        est = Pose.from_qt(row["estimate"]["qvec"], row["estimate"]["tvec"])
        c = est.center
        if region is None or (np.isfinite(c).all() and np.linalg.norm(c - region[0]) <= region[1]):
            return est, "unverified"
    # "fallback": the field's name in logs written before it was called the stand-in
    return Pose.from_qt(row["qvec"], row["tvec"]), row.get("stand_in") or row.get("fallback") or "top retrieved image"
