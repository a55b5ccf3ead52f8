"""Does the database's 3D structure help retrieval at query time, with no training?

    python studies/database_aggregation.py --dataset datasets/town1200 --preset demo
    python studies/database_aggregation.py --dataset datasets/demo --preset demo --extra-queries datasets/demo-q200

Reads the descriptors that benchmarks/student_retrieval.py cached for every model it measured
(outputs/<name>/ablation/student_study/<variant>_s<seed>/descriptors.h5) and ranks the database
for each query three ways:
  plain        the descriptors as they are
  covis t, a   each database descriptor plus `a` times the mean of its covisible neighbours' (images
               sharing >= t triangulated points in the spatial database), re-normalised: the
               database's 3D, which the queries never see, spread into its descriptors
  knn k        database-side augmentation by descriptor neighbours (the k most similar images,
               weighted by similarity cubed): the classical trick without 3D, for comparison
Query positives are the benchmark's: database images sharing >= min_shared of the 3D points
visible from the true pose. Reports R@1 by day and by night, mean +- sd over the seeds of each
variant. Writes studies/results/database_aggregation[_<tag>].{md,json}.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # report.py, shared with the benchmarks
from report import STUDY_RESULTS, finish, run_parser  # noqa: E402  (puts the repository on sys.path)

from mmcrossvit.evaluation import query_positives  # noqa: E402
from mmcrossvit.layout import Dataset  # noqa: E402
from mmcrossvit.paths import RunLayout  # noqa: E402
from mmcrossvit.spatial_db import SpatialDB  # noqa: E402


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def covisibility_aggregate(D: np.ndarray, shared, min_shared: int, alpha: float) -> np.ndarray:
    """Each row plus alpha times the mean of the rows sharing >= min_shared points with it."""
    W = (shared >= min_shared).astype(np.float32)
    count = np.asarray(W.sum(1)).reshape(-1, 1)
    return normalise(D + alpha * (W @ D) / np.maximum(count, 1))


def knn_aggregate(D: np.ndarray, k: int) -> np.ndarray:
    """Each row replaced by its own and its k nearest rows' weighted mean (weights: similarity^3)."""
    sim = D @ D.T
    idx = np.argsort(-sim, 1, kind="stable")[:, :k + 1]  # itself first
    w = np.take_along_axis(sim, idx, 1).clip(0) ** 3
    return normalise((w[..., None] * D[idx]).sum(1))


def r1_by_condition(Q: np.ndarray, D: np.ndarray, positives: list[set[int]], conditions: list[str]) -> dict:
    top = np.argmax(Q @ D.T, 1)
    out = {}
    for cond in ("day", "night"):
        sel = [i for i, c in enumerate(conditions) if c == cond and positives[i]]
        out[cond] = float(np.mean([top[i] in positives[i] for i in sel])) if sel else float("nan")
    return out


def misses(Q: np.ndarray, D: np.ndarray, positives: list[set[int]], q_poses: list, db_poses: list) -> dict:
    """Where the top-1 goes when it is wrong: its camera's distance (m) from the query's true camera
    and the angle (degrees) between their viewing directions."""
    top = np.argmax(Q @ D.T, 1)
    wrong = [i for i in range(len(Q)) if positives[i] and top[i] not in positives[i]]
    if not wrong:
        return {"count": 0}
    dist = np.array([np.linalg.norm(q_poses[i].center - db_poses[top[i]].center) for i in wrong])
    cos = np.array([q_poses[i].R[2] @ db_poses[top[i]].R[2] for i in wrong])
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    return {"count": len(wrong), "median_m": float(np.median(dist)), "median_deg": float(np.median(angle)),
            "over_30m": float(np.mean(dist > 30))}


def read_descriptors(path: Path, names: list[str]) -> np.ndarray:
    with h5py.File(path, "r") as f:
        missing = [n for n in names if n not in f]
        if missing:
            raise SystemExit(f"error: {path} has no descriptor for {len(missing)} images, e.g. {missing[0]!r}; "
                             f"run benchmarks/student_retrieval.py on this run first")
        return normalise(np.stack([f[n][()] for n in names]).astype(np.float32))


def main(argv=None) -> dict:
    p = run_parser(__doc__, STUDY_RESULTS)
    p.add_argument("--extra-queries", type=Path, default=None, metavar="DATASET",
                   help="rank this dataset's queries instead (same database images; descriptors cached by "
                        "student_retrieval.py --extra-queries as descriptors_<folder>.h5)")
    p.add_argument("--min-shared", type=int, nargs="+", default=[8, 30, 100],
                   help="covisibility thresholds t: neighbours share at least t points")
    p.add_argument("--alpha", type=float, nargs="+", default=[0.5, 1.0], help="neighbours' weights a")
    p.add_argument("--knn", type=int, nargs="+", default=[1, 2], help="descriptor-neighbour counts k")
    p.add_argument("--tag", default="", help="suffix of the result files")
    args = p.parse_args(argv)
    run = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    sdb = SpatialDB.load(run.spatial_db)
    names = [str(n) for n in sdb.names]
    qds = Dataset(args.extra_queries) if args.extra_queries else Dataset(run.dataset)
    queries = sorted(qds.queries)
    conditions = [qds.queries[q].condition for q in queries]
    from mmcrossvit.localization import SfMModel  # needs pycolmap
    gt = qds.gt_poses
    if gt is None:
        raise SystemExit(f"error: {qds.root} has no ground-truth query poses")
    sfm = SfMModel.load(run.sfm)
    positives = query_positives(qds, sfm, names, sdb.min_shared)
    q_poses, db_poses = [gt[q] for q in queries], [sfm.poses[n] for n in names]
    qfile = "descriptors.h5" if args.extra_queries is None else f"descriptors_{args.extra_queries.name}.h5"

    study = run.ablation("student_study")
    folders = sorted(f for f in study.glob("*_s*") if (f / "descriptors.h5").is_file() and (f / qfile).is_file())
    if not folders:
        raise SystemExit(f"error: no model under {study} has cached descriptors ({qfile}); "
                         f"run benchmarks/student_retrieval.py on this run first")
    methods = ["plain"] + [f"covis {t}, a {a:g}" for t in args.min_shared for a in args.alpha] + \
              [f"knn {k}" for k in args.knn]
    per_model = {}
    for folder in folders:
        D = read_descriptors(folder / "descriptors.h5", names)
        Q = read_descriptors(folder / qfile, queries)
        dbs = {"plain": D}
        dbs.update({f"covis {t}, a {a:g}": covisibility_aggregate(D, sdb.shared, t, a)
                    for t in args.min_shared for a in args.alpha})
        dbs.update({f"knn {k}": knn_aggregate(D, k) for k in args.knn})
        per_model[folder.name] = {m: r1_by_condition(Q, dbs[m], positives, conditions) for m in methods}
        per_model[folder.name]["misses"] = misses(Q, D, positives, q_poses, db_poses)
        print(folder.name, {m: per_model[folder.name][m] for m in ("plain",)}, flush=True)

    variants: dict[str, list[str]] = {}
    for model in per_model:
        variants.setdefault(re.sub(r"_s\d+$", "", model), []).append(model)

    def cell(models, m, cond):
        v = np.array([per_model[x][m][cond] for x in models])
        return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"

    n_day = sum(c == "day" and bool(p_) for c, p_ in zip(conditions, positives))
    n_night = sum(c == "night" and bool(p_) for c, p_ in zip(conditions, positives))
    md = [f"R@1 by day ({n_day} queries) / by night ({n_night}) on `{run.name}` ({len(names)} database images), "
          f"queries of `{qds.root.name}`; mean ± sd over seeds. Rows: the models student_retrieval.py measured "
          f"(seeds in brackets); columns: how the database descriptors were aggregated.\n",
          "| model (seeds) | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for v, models in variants.items():
        md.append(f"| {v} ({len(models)}) | " + " | ".join(
            f"{cell(models, m, 'day')} / {cell(models, m, 'night')}" for m in methods) + " |")
    gains = {m: {c: float(np.mean([per_model[x][m][c] - per_model[x]["plain"][c] for x in per_model]))
                 for c in ("day", "night")} for m in methods[1:]}
    md += ["", "Mean change against `plain` over every model and seed (day / night): " + "; ".join(
        f"{m}: {g['day']:+.3f} / {g['night']:+.3f}" for m, g in gains.items())]
    md += ["", "Plain ranking, the queries whose top-1 is wrong: how far its camera is from the query's true camera, "
           "and how far it is turned (median over the misses of every seed):", "",
           "| model | misses | median distance m | median angle ° | over 30 m |", "|---|---|---|---|---|"]
    for v, models in variants.items():
        ms = [per_model[x]["misses"] for x in models if per_model[x]["misses"]["count"]]
        if ms:
            md.append(f"| {v} | {sum(m['count'] for m in ms)} | {np.mean([m['median_m'] for m in ms]):.1f} | "
                      f"{np.mean([m['median_deg'] for m in ms]):.0f} | {np.mean([m['over_30m'] for m in ms]):.2f} |")
    stem = "database_aggregation" + (f"_{args.tag}" if args.tag else "")
    return finish(str(args.results / stem), md, {"run": run.name, "queries": qds.root.name, "database": len(names),
                                                 "per_model": per_model, "mean_gain": gains})


if __name__ == "__main__":
    main()
