"""Why a query's localization failed: a per-query breakdown against ground truth.

For each query with a true pose, the localization is re-run exactly as the run did it
(`localize_query` reseeds RANSAC per query, so the same arguments give the same pose and
inliers) and each stage is checked against the truth:

    raw matches -> 2D-3D correspondences -> GT-consistent ones (the 3D point projects within
    `px` pixels of its keypoint under the true pose) -> RANSAC inliers -> GT-consistent inliers

plus what retrieval handed over: how many retrieved images see >= `min_shared` of the 3D points
visible from the true pose (`evaluation.gt_covisibility`), the rank of the first, and the
viewpoint change from the true pose to the best covisible database image, overall and among the
retrieved. Each query gets one failure kind (KINDS); `summarise` counts them per condition.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mmcrossvit.colmap_io import CameraSpec
from mmcrossvit.errors import DataError
from mmcrossvit.evaluation import THRESHOLDS, project, visible_points
from mmcrossvit.features import read_features
from mmcrossvit.geometry import Pose, pose_error
from mmcrossvit.localization import LocalizeOptions, SfMModel, correspondences, localize_query

FINEST, COARSEST = THRESHOLDS[0], THRESHOLDS[-1]
KINDS = ("localized", "inaccurate", "wrong pose accepted", "retrieval miss", "no correspondences", "few inliers",
         "pose rejected")
MIN_PNP = 4  # fewer 2D-3D correspondences than this and PnP cannot run (estimate_pose's limit)
ALL = "all"
# the localization settings the diagnosis re-runs with (as localize.main passes them)
SETTINGS = ("ratio", "ransac_max_error", "ransac_ref_size", "covisibility", "min_inliers", "seed")
# settings a run records only when they are on (their 'off' value otherwise)
# rival_radius None: a run from before --rival-radius, whose radius was --rerank-agree (filled in below)
OPTIONAL = {"min_coverage": 0.0, "max_rival_ratio": 0.0, "rerank_agree": 5.0, "rerank_points": False,
            "rival_radius": None}
# per-query columns that are numbers (medians are taken of these)
NUMERIC = ("retrieved", "matches", "correspondences", "gt_correspondences", "inliers", "gt_inliers",
           "distinct_inliers", "inlier_keypoints",
           "position_error_m", "rotation_error_deg", "visible_points", "covisible_retrieved",
           "first_covisible_rank", "best_db_shared", "best_db_distance_m", "best_db_angle_deg",
           "best_retrieved_shared", "best_retrieved_distance_m", "best_retrieved_angle_deg")


def gt_consistent(points2d: np.ndarray, points3d: np.ndarray, camera: CameraSpec, gt_pose: Pose,
                  px: float) -> np.ndarray:
    """Mask of correspondences whose 3D point projects under the true pose (`project`: in front,
    through the query's own camera model, distortion included, on the image's branch of it) within
    `px` pixels of its keypoint."""
    points2d = np.asarray(points2d, np.float64).reshape(-1, 2)
    uv = project(camera, gt_pose.transform(np.asarray(points3d, np.float64).reshape(-1, 3)), margin=px)
    err = np.linalg.norm(uv - points2d, axis=1)
    ok = np.isfinite(err) & (err <= px)
    return ok


def failure_kind(success: bool, position_error: float, rotation_error: float, num_correspondences: int,
                 covisible_retrieved: int, rejected_by: str | None = None) -> str:
    """One of KINDS. Accepted poses are judged by the benchmark's finest and coarsest thresholds;
    failures by the first stage that broke: retrieval, then matching, then RANSAC, then a rule
    beyond the inlier count (coverage, place ratio) rejecting the pose RANSAC found."""
    if success:
        if position_error <= FINEST[0] and rotation_error <= FINEST[1]:
            return "localized"
        if position_error <= COARSEST[0] and rotation_error <= COARSEST[1]:
            return "inaccurate"
        return "wrong pose accepted"
    if covisible_retrieved == 0:
        return "retrieval miss"
    if num_correspondences < MIN_PNP:
        return "no correspondences"
    if rejected_by not in (None, "inliers"):
        return "pose rejected"
    return "few inliers"


def _viewpoint(model: SfMModel, name: str | None, gt_pose: Pose) -> tuple[float | None, float | None]:
    """(metres, degrees) between the true pose and a database image's pose."""
    if name is None or name not in model.poses:
        return None, None
    return pose_error(model.poses[name], gt_pose)


def localization_settings(run, tag: str, preset: str, seed: int | None) -> tuple[dict, str]:
    """The settings (SETTINGS and OPTIONAL) the tagged localization of `run` ran with, and where they came from:
    its recorded settings file, else the preset's (with `seed` if given), with a warning."""
    import argparse
    from mmcrossvit import presets
    from mmcrossvit.steps import localize
    from mmcrossvit.storage import read_json
    path = run.settings(localize.record_name(argparse.Namespace(tag=tag, retrieval=None)))
    if path.exists():
        recorded = read_json(path).get("settings", {})
        if all(k in recorded for k in SETTINGS):
            s = {**{k: recorded[k] for k in SETTINGS}, **{k: recorded.get(k, off) for k, off in OPTIONAL.items()}}
            if s["rival_radius"] is None:
                s["rival_radius"] = s["rerank_agree"]
            return s, str(path)
    s = presets.step_settings(preset, "localize")
    s = {k: s[k] for k in (*SETTINGS, *OPTIONAL)}
    if seed is not None:
        s["seed"] = seed
    print(f"warning: no recorded settings at {path}; using preset {preset!r}'s (the pose may differ from the run's)")
    return s, f"preset {preset}"


def diagnose_query(name: str, camera: CameraSpec, gt_pose: Pose, retrieved: list[str], model: SfMModel,
                   features: Path, settings: dict, shared: dict[str, int], px: float = 4.0,
                   min_shared: int = 8, condition: str = "unknown", rejected_by: str | None = None) -> dict:
    """One query's diagnosis row (see the module docstring).

    `rejected_by`: the logged rule that rejected the run's pose. The replay redoes the inlier count
    and the coverage rule; the place ratio test needs every candidate's own PnP, so for it the
    run's verdict is taken from the log.

    `settings`: the run's recorded localization settings (SETTINGS); `shared`: for each database
    image, how many of the 3D points visible from the true pose it observes (a row of
    `evaluation.gt_covisibility` over the model's images)."""
    s = {k: settings[k] for k in SETTINGS}
    r = localize_query(name, camera, retrieved, model, features,  # min_coverage: recorded only when on
                       LocalizeOptions.of(s, min_coverage=settings.get("min_coverage", 0.0)))
    if rejected_by == "place ratio" and r.success:
        r.success, r.rejected_by, r.estimate = False, rejected_by, r.pose
    # every retrieved image's correspondences at once: without clustering these are the ones the
    # hypothesis was fitted to (no second matching pass); clusters partition the retrieved list,
    # so with them, matching all at once gives what RANSAC saw, summed over clusters
    if not s["covisibility"] and r.points2d is not None:
        p2, p3 = r.points2d, r.points3d
    else:
        try:
            qf = read_features(features, name)
        except DataError:  # as localize_query: an unreadable query has no features
            qf = {"keypoints": np.zeros((0, 2), np.float32), "descriptors": np.zeros((0, 128), np.uint8)}
        p2, p3, _, _ = correspondences(model, qf, features, retrieved, s["ratio"])
    hyp = None if r.points2d is None else (r.points2d, r.points3d, np.asarray(r.inliers, bool))
    gt_corr = gt_consistent(p2, p3, camera, gt_pose, px)
    gt_inl = 0 if hyp is None else int((gt_consistent(hyp[0], hyp[1], camera, gt_pose, px) & hyp[2]).sum())
    inliers = 0 if hyp is None else int(hyp[2].sum())
    # SIFT puts several keypoints (orientations) at one position, so one image position can support a
    # 3D point more than once: how many different (position, point) pairs and positions the inliers are
    in2, in3 = (np.zeros((0, 2)), np.zeros((0, 3))) if hyp is None else (hyp[0][hyp[2]], hyp[1][hyp[2]])

    dt, dr = pose_error(r.pose, gt_pose)
    counts = np.array([shared.get(n, 0) for n in retrieved], dtype=np.int64)
    covisible = np.flatnonzero(counts >= min_shared)
    best_db = min(shared, key=lambda n: (-shared[n], n)) if shared else None  # ties by name, as the oracle
    best_db = best_db if best_db is not None and shared[best_db] > 0 else None
    best_ret = retrieved[int(np.argmax(counts))] if len(counts) and counts.max() > 0 else None
    db_m, db_deg = _viewpoint(model, best_db, gt_pose)
    ret_m, ret_deg = _viewpoint(model, best_ret, gt_pose)
    row = {
        "query": name, "condition": condition, "success": bool(r.success), "retrieved": len(retrieved),
        "matches": int(r.num_matches), "correspondences": int(len(p2)), "gt_correspondences": int(gt_corr.sum()),
        "inliers": int(r.num_inliers), "gt_inliers": gt_inl,
        "distinct_inliers": int(len(np.unique(np.c_[in2, in3], axis=0))),
        "inlier_keypoints": int(len(np.unique(in2, axis=0))),
        "position_error_m": dt, "rotation_error_deg": dr,
        "visible_points": int(len(visible_points(camera, gt_pose, model.xyz))),
        "covisible_retrieved": int(len(covisible)),
        "first_covisible_rank": int(covisible[0]) + 1 if len(covisible) else None,
        "best_db": best_db, "best_db_shared": shared[best_db] if best_db else 0,
        "best_db_distance_m": db_m, "best_db_angle_deg": db_deg,
        "best_retrieved": best_ret, "best_retrieved_shared": int(counts.max()) if best_ret else 0,
        "best_retrieved_distance_m": ret_m, "best_retrieved_angle_deg": ret_deg,
        # the hypothesis rebuilt here must be the one the run scored (a check of the reproduction)
        "reproduced": inliers == int(r.num_inliers),
        "qvec": r.pose.qvec.tolist(), "tvec": r.pose.t.tolist(),
    }
    row["kind"] = failure_kind(r.success, dt, dr, row["correspondences"], row["covisible_retrieved"], r.rejected_by)
    return row


def _median(values) -> float | None:
    v = [float(x) for x in values if x is not None and np.isfinite(x)]
    return float(np.median(v)) if v else None


def summarise(rows: list[dict]) -> dict:
    """{"kinds", "counts": {condition: {kind: n, "total": n}}, "medians": {condition: {kind:
    {column: median}}}} over conditions (day, night, ..., 'all') and kinds (KINDS, 'all');
    a kind no query of a condition has is counted 0 and has no medians."""
    conds = sorted({r.get("condition", "unknown") for r in rows}) + [ALL]
    counts, medians = {}, {}
    for c in conds:
        sel = [r for r in rows if c == ALL or r.get("condition", "unknown") == c]
        counts[c] = {k: sum(r["kind"] == k for r in sel) for k in KINDS}
        counts[c]["total"] = len(sel)
        medians[c] = {}
        for k in (*KINDS, ALL):
            group = [r for r in sel if k == ALL or r["kind"] == k]
            if group:
                medians[c][k] = {col: _median(r.get(col) for r in group) for col in NUMERIC}
    return {"kinds": list(KINDS), "counts": counts, "medians": medians}


def replay_accepted(ds, model: SfMModel, features: Path, settings: dict, log: Path):
    """Every query of a localization log that was accepted, or that a run made with an acceptance
    rule on (the coverage rule, the place ratio test) rejected by a rule alone, localized again
    without the rules (the same hypothesis): yields (log row, QueryResult, rejected by a rule). A
    row that does not reproduce is an error naming the log: the features or the model changed
    since the run."""
    import json
    s = settings
    for line in open(log):
        r = json.loads(line)
        rules = s.get("min_coverage", 0.0) > 0 or s.get("max_rival_ratio", 0.0) > 0
        rejected = not r["success"] and rules and r["inliers"] >= s["min_inliers"]
        if not (r["success"] or rejected):
            continue
        q = ds.queries[r["query"]]
        res = localize_query(r["query"], q.camera, r["retrieved"], model, features,
                             LocalizeOptions.of({k: s[k] for k in SETTINGS}))
        if res.num_inliers != r["inliers"] or not res.success:
            raise SystemExit(f"{log}: {r['query']} does not reproduce ({res.num_inliers} inliers, "
                             f"logged {r['inliers']}); run localize.py again")
        yield r, res, rejected


def localization_logs(run, preset: str, seed: int | None):
    """The run's localization logs that exist, student retrieval first, then the oracle's: yields
    (label, log path, the settings it ran with) for the benchmarks that replay them."""
    for label, tag in (("student", ""), ("oracle", "oracle")):
        log = run.localization_log(tag)
        if log.exists():
            yield label, log, localization_settings(run, tag, preset, seed)[0]
