"""Evaluation: localization recall at the benchmark's thresholds, and retrieval P@K / Recall@K.

Localization: a query counts at threshold (m, deg) when its position error <= m and its rotation
error <= deg (the Visual Localization Benchmark's definition), per condition (day/night).
Retrieval: for an anchor with positive set P and ranked list r, P@K = |r[:K] & P| / K and
Recall@K = 1 if r[:K] & P else 0, averaged over anchors that have positives.
"""
from __future__ import annotations

import numpy as np

from pathlib import Path

from .colmap_io import CameraSpec, read_poses
from .errors import DataError
from .geometry import Pose, pose_error

THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))
EVAL_KS = (1, 5, 20, 50, 100, 150, 200)  # the retrieval tables (training validates at 1, 5, 10)


def localization_table(estimates: dict[str, Pose], truth: dict[str, Pose], conditions: dict[str, str],
                       thresholds=THRESHOLDS) -> dict:
    """{condition: {"n", "recall": [% per threshold], "median_m", "median_deg"}}; 'all' included.
    A query with no estimate counts as a failure."""
    rows: dict[str, list[tuple[float, float]]] = {}
    for name, gt in truth.items():
        err = pose_error(estimates[name], gt) if name in estimates else (np.inf, np.inf)
        for c in (conditions.get(name, "unknown"), "all"):
            rows.setdefault(c, []).append(err)
    out = {}
    for c, errs in sorted(rows.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        e = np.array(errs, dtype=np.float64)
        out[c] = {"n": len(e),
                  "recall": [float(100.0 * np.mean((e[:, 0] <= m) & (e[:, 1] <= d))) for m, d in thresholds],
                  "median_m": float(np.median(e[:, 0])), "median_deg": float(np.median(e[:, 1]))}
    return out


def load_results(path: Path, ds):
    """{query name: pose} of a results file in the benchmark's format. Names are basenames (the
    benchmark's and hloc's convention) or names relative to images/images_upright/. A missing or
    empty file, or a name that is not a query of `ds`, is a DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "results file not found")
    by_base: dict[str, str | None] = {}
    for q in ds.queries:
        by_base[Path(q).name] = None if Path(q).name in by_base else q  # None: two queries share it
    est = read_poses(path)
    if not est:
        raise DataError(path, "empty results file: no poses to evaluate")
    out = {}
    for name, pose in est.items():
        q = name if name in ds.queries else by_base.get(name)
        if q is None:
            why = "matches several queries" if name in by_base else f"is not a query of {ds.root}"
            raise DataError(path, f"{name!r} {why}")
        if q in out:
            raise DataError(path, f"query {q!r} has two poses")
        out[q] = pose
    return out


def wrong_accepted(rows: list[dict], truth: dict[str, Pose]) -> dict[str, int]:
    """Per condition, the localization-log rows counted as localized but beyond the loosest
    threshold (5 m, 10°) from the true pose: wrong poses that passed the inlier rule."""
    return {c: t["localized"]["wrong"] for c, t in pose_status(rows, truth).items()
            if c != "all" and t["localized"]["wrong"]}


STATUSES = ("localized", "unverified", "stand-in")


def pose_status(rows: list[dict], truth: dict[str, Pose]) -> dict[str, dict[str, dict[str, int]]]:
    """{condition: {status: {"n", "fine", "wrong"}}} of localization-log rows, 'all' included:
    localized (every rule passed), unverified (a pose a rule rejected: its estimate is judged) and
    stand-in (no PnP pose: the top retrieved image's, or the identity, is judged). fine: within the finest threshold; wrong:
    beyond the loosest (5 m, 10°). Wrong localized poses are the ones the rules failed to catch."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    (fm, fd), (wm, wd) = THRESHOLDS[0], THRESHOLDS[-1]
    for r in rows:
        if r["query"] not in truth:
            continue
        if r["success"]:
            status, qt = "localized", (r["qvec"], r["tvec"])
        elif r.get("estimate"):
            status, qt = "unverified", (r["estimate"]["qvec"], r["estimate"]["tvec"])
        else:
            status, qt = "stand-in", (r["qvec"], r["tvec"])
        dt, dr = pose_error(Pose.from_qt(*qt), truth[r["query"]])
        for c in (r.get("condition", "unknown"), "all"):
            cell = out.setdefault(c, {k: {"n": 0, "fine": 0, "wrong": 0} for k in STATUSES})[status]
            cell["n"] += 1
            cell["fine"] += int(dt <= fm and dr <= fd)
            cell["wrong"] += int(dt > wm or dr > wd)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] == "all", kv[0])))


def format_status(table: dict, title: str) -> str:
    lines = [f"| {title} | localized | of them wrong | unverified | of them within (0.25m, 2°) | of them wrong "
             "| stand-in |", "|---|---|---|---|---|---|---|"]
    for c, t in table.items():
        lo, un, fb = (t[k] for k in STATUSES)
        lines.append(f"| {c} | {lo['n']} | {lo['wrong']} | {un['n']} | {un['fine']} | {un['wrong']} | {fb['n']} |")
    return "\n".join(lines)


def missing_queries(estimates: dict, truth: dict) -> list[str]:
    """Queries with a true pose but no estimate (sorted): localization_table counts them failed."""
    return sorted(set(truth) - set(estimates))


def retrieval_metrics(ranked: np.ndarray, positives: list[set[int]], ks=EVAL_KS) -> dict:
    """P@K and Recall@K for ranked (A, >= max K) gallery indices; anchors without positives skipped."""
    keep = [i for i, p in enumerate(positives) if p]
    ks = [k for k in ks if k <= ranked.shape[1]]
    out = {"anchors": len(keep), "P": {}, "R": {}}
    for k in ks:
        hits = [len(set(ranked[i, :k].tolist()) & positives[i]) for i in keep]
        out["P"][k] = float(np.mean([h / k for h in hits])) if keep else float("nan")
        out["R"][k] = float(np.mean([h > 0 for h in hits])) if keep else float("nan")
    return out


def project(camera: CameraSpec, Xc: np.ndarray, margin: float = 0.0, lens_branch: bool = True) -> np.ndarray:
    """Pixels of camera-frame points through the camera's model, distortion included; NaN for a point
    behind the camera, outside the image grown by `margin` pixels, or on the far branch of the lens
    model: a radial term k < 0 folds points far off the axis back into the image (r(1 + k r^2)
    turns down beyond r^2 = -1/(3k)), and their pixels do not undistort to their own rays.
    lens_branch=False skips that last check (the definition before it, for studies/visible_points.py)."""
    Xc = np.asarray(Xc, np.float64).reshape(-1, 3)
    out = np.full((len(Xc), 2), np.nan)
    idx = np.flatnonzero(Xc[:, 2] > 1e-6)  # img_from_cam gives NaN behind; don't rely on it
    if not len(idx):
        return out
    cam = camera.to_pycolmap()
    uv = np.asarray(cam.img_from_cam(Xc[idx]))
    ok = ((uv[:, 0] >= -margin) & (uv[:, 0] < camera.width + margin)
          & (uv[:, 1] >= -margin) & (uv[:, 1] < camera.height + margin))
    idx, uv = idx[ok], uv[ok]
    if len(idx) and lens_branch:
        ray = Xc[idx, :2] / Xc[idx, 2:3]
        back = np.asarray(cam.cam_from_img(uv))[:, :2]
        ok = np.all(np.abs(back - ray) <= 1e-4 * (1 + np.abs(ray)), axis=1)
        idx, uv = idx[ok], uv[ok]
    out[idx] = uv
    return out


def visible_points(camera: CameraSpec, pose: Pose, xyz: np.ndarray, cell: int = 16, slack: float = 0.1,
                   lens_branch: bool = True) -> np.ndarray:
    """Indices of 3D points a camera sees: projected into the image (`project`) and not behind a
    nearer point in the same cell x cell pixel bin (a point-splat z-buffer for occlusion)."""
    Xc = pose.transform(xyz)
    uv = project(camera, Xc, lens_branch=lens_branch)
    front = np.flatnonzero(np.isfinite(uv[:, 0]))
    if not len(front):
        return front
    uv, z = uv[front], Xc[front, 2]
    nx = int(np.ceil(camera.width / cell))
    b = (uv[:, 1] // cell).astype(np.int64) * nx + (uv[:, 0] // cell).astype(np.int64)
    zmin = np.full(b.max() + 1, np.inf)
    np.minimum.at(zmin, b, z)
    return front[z <= zmin[b] * (1 + slack)]


def _num(v, fmt: str, unit: str = "") -> str:
    """A table cell; '-' for None (how strict JSON stores NaN and inf) and NaN, 'inf' stays."""
    return "-" if v is None or v != v else format(v, fmt) + unit


def format_localization(table: dict, title: str) -> str:
    lines = [f"| {title} | n | (0.25m, 2°) | (0.5m, 5°) | (5m, 10°) | median m | median ° |",
             "|---|---|---|---|---|---|---|"]
    for c, r in table.items():
        lines.append(f"| {c} | {r['n']} | " + " | ".join(_num(v, ".1f", "%") for v in r["recall"])
                     + f" | {_num(r['median_m'], '.3f')} | {_num(r['median_deg'], '.2f')} |")
    return "\n".join(lines)


def format_retrieval(rows: dict[str, dict]) -> str:
    ks = sorted({int(k) for r in rows.values() for k in r["P"]})
    head = "| retrieval | anchors | " + " | ".join(f"P@{k}" for k in ks) + " | " + " | ".join(f"R@{k}" for k in ks) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(ks))]
    for name, r in rows.items():
        P = {int(k): v for k, v in r["P"].items()}
        R = {int(k): v for k, v in r["R"].items()}
        cell = lambda d, k: _num(d[k], ".3f") if k in d else "-"  # noqa: E731 (K beyond the ranked list)
        lines.append(f"| {name} | {r['anchors']} | " + " | ".join(cell(P, k) for k in ks) + " | "
                     + " | ".join(cell(R, k) for k in ks) + " |")
    return "\n".join(lines)


def gt_covisibility(ds, model, db_names: list[str], lens_branch: bool = True) -> dict[str, np.ndarray]:
    """For each query with a true pose: how many of the 3D points visible from that pose each
    database image in `db_names` observes (the ground truth of retrieval)."""
    # observations grouped by 3D point (rows of model.xyz), once: a query then counts the
    # observations of the points it sees, not every image's, so it costs O(points seen x track)
    img, pts = [], []
    for j, n in enumerate(db_names):
        if n in model.point3d_ids:
            ids = model.point3d_ids[n]
            p = model.point_index(ids[ids >= 0])
            img.append(np.full(len(p), j, np.int64))
            pts.append(p)
    img = np.concatenate(img) if img else np.zeros(0, np.int64)
    pts = np.concatenate(pts) if pts else np.zeros(0, np.int64)
    order = np.argsort(pts, kind="stable")
    img = img[order]
    start = np.searchsorted(pts[order], np.arange(len(model.xyz) + 1))
    out = {}
    for q, query in ds.queries.items():
        if ds.gt_poses is None or q not in ds.gt_poses:
            continue
        vis = visible_points(query.camera, ds.gt_poses[q], model.xyz, lens_branch=lens_branch)
        lo, hi = start[vis], start[vis + 1]
        # the observation rows of every visible point: lo..hi-1 for each, concatenated
        lens = hi - lo
        sel = np.repeat(lo - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        out[q] = np.bincount(img[sel], minlength=len(db_names)).astype(np.int64)
    return out


def oracle_candidates(ds, model, k: int, lens_branch: bool = True) -> dict[str, list[str]]:
    """Database images ranked by the number of 3D points visible from each query's true pose
    (ties by name); only images that see at least one. Queries without a true pose get none."""
    db = sorted(model.point3d_ids)
    counts = gt_covisibility(ds, model, db, lens_branch)
    out = {}
    for q in ds.queries:
        c = counts.get(q, np.zeros(len(db), dtype=np.int64))
        order = np.argsort(-c, kind="stable")[:k]
        out[q] = [db[j] for j in order if c[j] > 0]
    return out


def ranked_queries(retrieval: dict, queries: list[str]) -> np.ndarray:
    """The retrieval step's ranking (retrieval.npz: query_names, query_ranked) as one row per query
    of `queries`; a query the retrieval left out (unreadable) retrieves nothing (-1)."""
    row_of = {str(q): i for i, q in enumerate(retrieval["query_names"])}
    out = np.full((len(queries), retrieval["query_ranked"].shape[1]), -1, dtype=np.int64)
    for i, q in enumerate(queries):
        if q in row_of:
            out[i] = retrieval["query_ranked"][row_of[q]]
    return out


def query_positives(ds, model, db_names: list[str], min_shared: int, lens_branch: bool = True) -> list[set[int]]:
    """For each query (sorted by name), the indices into `db_names` of database images that see at
    least `min_shared` of the 3D points visible from the query's true pose."""
    counts = gt_covisibility(ds, model, db_names, lens_branch)
    return [set(np.flatnonzero(counts[q] >= min_shared).tolist()) if q in counts else set()
            for q in sorted(ds.queries)]
