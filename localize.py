"""Step 6: PnP-RANSAC localization of every query, and the benchmark's results file.

    python localize.py --dataset datasets/demo

For each query: SIFT features (same extractor and settings as the database), mutual nearest
neighbour + ratio-test matches against each retrieved database image, 2D-3D correspondences
through the database keypoints' triangulated points, optional covisibility clustering, then
`pycolmap.estimate_and_refine_absolute_pose` with the query's own camera. A query that cannot be
localized gets the pose of its top retrieved image (as hloc does) and is listed as failed.

Writes outputs/<name>/Pose_Estimation_Results.txt ("<basename> qw qx qy qz tx ty tz",
world-to-camera, the Visual Localization Benchmark's format) and localization_log.jsonl (one
row per query: retrieved images, matches, inliers, time). Interrupted runs resume from the log.
With ground truth (ground_truth/query_poses.txt), evaluate.py runs afterwards.

--retrieval oracle replaces the student's retrieval by ground truth: each query's candidates are
the database images sharing the most 3D points visible from its true pose (the ceiling that
retrieval can reach); --retrieval all uses every database image.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmcrossvit.colmap_io import read_pairs, write_poses
from mmcrossvit.errors import DataError, run_cli
from mmcrossvit.features import extract_features, feature_names, stored_config
from mmcrossvit.geometry import Pose
from mmcrossvit.layout import Dataset
from mmcrossvit.localization import SfMModel, localize_query
from mmcrossvit.paths import run_paths
from mmcrossvit.storage import write_json

log = logging.getLogger("localize")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True, help="dataset folder in the documented layout")
    p.add_argument("--name", help="run name (default: dataset folder name)")
    p.add_argument("--outputs", type=Path, default=Path("outputs"), help="root of per-run outputs")
    p.add_argument("--retrieval", choices=["pairs", "oracle", "all"], default="pairs",
                   help="candidates: the retrieval pairs file, ground-truth covisibility (oracle), or every db image")
    p.add_argument("--pairs", type=Path, help="pairs file (default outputs/<name>/pairs-query.txt)")
    p.add_argument("--num-retrieved", type=int, default=None, help="use only the first K candidates per query")
    p.add_argument("--covisibility", action="store_true", help="cluster candidates by covisibility (hloc's option)")
    p.add_argument("--ratio", type=float, default=0.8, help="Lowe's ratio test threshold")
    p.add_argument("--ransac-max-error", type=float, default=12.0, help="RANSAC inlier threshold in pixels")
    p.add_argument("--min-inliers", type=int, default=12, help="fewer PnP inliers count as a failure")
    p.add_argument("--seed", type=int, default=0, help="RANSAC seed (reset for every query)")
    p.add_argument("--tag", default="", help="write results under outputs/<name>/<tag>/ (e.g. for the oracle)")
    p.add_argument("--overwrite", action="store_true", help="ignore the log of an earlier run")
    return p.parse_args(argv)


def oracle_candidates(ds: Dataset, model: SfMModel, k: int) -> dict[str, list[str]]:
    """Database images ranked by the number of 3D points visible from each query's true pose."""
    from mmcrossvit.evaluation import visible_points
    if ds.gt_poses is None:
        raise DataError(ds.root / "ground_truth/query_poses.txt", "the oracle needs ground-truth query poses")
    out = {}
    db = sorted(model.point3d_ids)
    for q, query in ds.queries.items():
        if q not in ds.gt_poses:
            out[q] = []
            continue
        vis = visible_points(query.camera, ds.gt_poses[q], model.xyz)
        vis_ids = np.unique(model.point_ids[vis])
        counts = [(int(np.isin(model.point3d_ids[n], vis_ids).sum()), n) for n in db]
        out[q] = [n for c, n in sorted(counts, key=lambda t: -t[0])[:k] if c > 0]
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ds = Dataset(args.dataset)
    paths = run_paths(args.name or ds.name, args.outputs)
    out_dir = paths.out / args.tag if args.tag else paths.out
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path, log_path = out_dir / paths.results.name, out_dir / "localization_log.jsonl"
    if not (paths.sfm / "points3D.txt").exists():
        raise DataError(paths.sfm, "no SfM model; run preprocessing.py first")
    model = SfMModel.load(paths.sfm)
    queries = ds.queries

    # candidates per query
    if args.retrieval == "pairs":
        pairs_path = args.pairs or paths.pairs_query
        if not pairs_path.exists():
            raise DataError(pairs_path, "pairs file not found; run generate_localization_pairs.py first")
        cands: dict[str, list[str]] = {q: [] for q in queries}
        for lineno, (q, d) in enumerate(read_pairs(pairs_path), start=1):
            if q not in queries:
                raise DataError(pairs_path, f"{q!r} is not a query of {ds.root}", lineno)
            if d not in model.poses:
                raise DataError(pairs_path, f"{d!r} is not a database image of the SfM model", lineno)
            cands[q].append(d)
    elif args.retrieval == "oracle":
        cands = oracle_candidates(ds, model, args.num_retrieved or 20)
    else:
        cands = {q: sorted(model.point3d_ids) for q in queries}
    if args.num_retrieved:
        cands = {q: c[:args.num_retrieved] for q, c in cands.items()}
    empty = [q for q, c in cands.items() if not c]
    if empty:
        log.warning("%d queries have no candidates (e.g. %s); they get an identity pose and count as failed",
                    len(empty), empty[0])

    # query features, with the database's extraction settings
    missing = sorted(set(queries) - feature_names(paths.features))
    if missing:
        conf = stored_config(paths.features)
        log.info("extracting features for %d queries", len(missing))
        extract_features(ds.images_dir, missing, paths.features, conf)

    done: dict[str, dict] = {}
    if log_path.exists() and not args.overwrite:  # resume: rows of completed queries
        for line in log_path.read_text().splitlines():
            try:
                row = json.loads(line)
                done[row["query"]] = row
            except (ValueError, KeyError):
                break  # a torn last line from an interruption
    with open(log_path, "w" if args.overwrite or not done else "a") as logf:
        if done:  # rewrite cleanly, dropping any torn line
            logf.seek(0)
            logf.truncate()
            logf.writelines(json.dumps(r) + "\n" for r in done.values())
        for q in tqdm([q for q in sorted(queries) if q not in done], desc="localize", unit="query"):
            r = localize_query(q, queries[q].camera, cands[q], model, paths.features, args.ratio,
                               args.ransac_max_error, args.covisibility, args.min_inliers, args.seed)
            row = {**r.log_row(), "condition": queries[q].condition,
                   "qvec": r.pose.qvec.tolist(), "tvec": r.pose.t.tolist()}
            logf.write(json.dumps(row) + "\n")
            logf.flush()
            done[q] = row

    poses = {Path(q).name: Pose.from_qt(r["qvec"], r["tvec"]) for q, r in sorted(done.items())}
    write_poses(results_path, poses)
    failed = sorted(q for q, r in done.items() if not r["success"])
    times = np.array([sum(r["seconds"].values()) for r in done.values()])
    summary = {"queries": len(done), "localized": len(done) - len(failed), "failed": failed,
               "median_seconds_per_query": float(np.median(times)) if len(times) else 0.0,
               "mean_seconds": {k: float(np.mean([r["seconds"][k] for r in done.values()]))
                                for k in ("features", "matching", "pnp")} if done else {},
               "retrieval": args.retrieval, "results": str(results_path)}
    write_json(out_dir / "localization_summary.json", summary)
    print(f"{summary['localized']}/{summary['queries']} queries localized "
          f"({len(failed)} fell back to the top retrieved pose) -> {results_path}")
    if ds.gt_poses is None:
        print("No ground truth: submit this file at https://www.visuallocalization.net/ (Aachen Day-Night).")
    return summary


if __name__ == "__main__":
    run_cli(main)
