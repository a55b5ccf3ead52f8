"""Step 7: accuracy tables, wherever ground truth exists.

    python evaluate.py --dataset datasets/demo

Localization: % of queries within (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°), per condition, and
median errors, for the student's retrieval and (when localize.py --retrieval oracle --tag oracle
was run) for the oracle. Retrieval: P@K and Recall@K for K in {1, 5, 20, 50, 100, 150, 200}
(capped by the database size) for held-out database anchors (positives: images sharing >= N 3D
points, as in training) and for queries (positives: database images sharing >= N of the 3D points
visible from the query's true pose).

Writes outputs/<name>/evaluation.json and evaluation.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mmcrossvit.colmap_io import read_poses
from mmcrossvit.errors import DataError, run_cli
from mmcrossvit.evaluation import (KS, format_localization, format_retrieval, localization_table,
                                   query_positives, retrieval_metrics)
from mmcrossvit.layout import GT_POSES, Dataset
from mmcrossvit.localization import SfMModel
from mmcrossvit.paths import run_paths
from mmcrossvit.spatial_db import SpatialDB
from mmcrossvit.storage import read_npz, write_json, write_text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True, help="dataset folder with ground_truth/query_poses.txt")
    p.add_argument("--name", help="run name (default: dataset folder name)")
    p.add_argument("--outputs", type=Path, default=Path("outputs"), help="root of per-run outputs")
    p.add_argument("--database-root", type=Path, default=Path("DataBase"), help="root of the spatial databases")
    p.add_argument("--val-fold", type=int, default=0, help="fold whose anchors are held out (as in training)")
    return p.parse_args(argv)


def load_results(path: Path, ds: Dataset):
    by_base = {Path(q).name: q for q in ds.queries}
    est = read_poses(path)
    unknown = sorted(set(est) - set(by_base))
    if unknown:
        raise DataError(path, f"{len(unknown)} results are not queries of {ds.root}, e.g. {unknown[0]!r}")
    return {by_base[b]: p for b, p in est.items()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    ds = Dataset(args.dataset)
    paths = run_paths(args.name or ds.name, args.outputs, args.database_root)
    if ds.gt_poses is None:
        raise DataError(ds.root / GT_POSES, "no ground truth; nothing to evaluate (submit the results file instead)")
    conditions = {q: v.condition for q, v in ds.queries.items()}
    report: dict = {"localization": {}, "retrieval": {}}
    md = [f"# Evaluation of `{paths.name}`\n"]
    for label, path in (("student retrieval", paths.results), ("oracle retrieval", paths.out / "oracle" / paths.results.name)):
        if path.exists():
            table = localization_table(load_results(path, ds), ds.gt_poses, conditions)
            report["localization"][label] = table
            md += [format_localization(table, label), ""]

    ret = paths.out / "retrieval.npz"
    if ret.exists():
        r = read_npz(ret)
        db_names = [str(n) for n in r["db_names"]]
        sdb = SpatialDB.load(paths.spatial_db)
        index = {str(n): i for i, n in enumerate(sdb.names)}
        to_ret = {n: j for j, n in enumerate(db_names)}
        anchors = [n for n in db_names if n in index and sdb.fold[index[n]] == args.val_fold]
        pos = [{to_ret[str(sdb.names[k])] for k in sdb.positives(index[n])[0] if str(sdb.names[k]) in to_ret}
               for n in anchors]
        ranked = r["db_ranked"][[to_ret[n] for n in anchors]]
        rows = {f"db anchors (fold {args.val_fold})": retrieval_metrics(ranked, pos, KS)}
        model = SfMModel.load(paths.sfm)
        qpos = query_positives(ds, model, db_names, sdb.min_shared)
        rows["queries"] = retrieval_metrics(r["query_ranked"], qpos, KS)
        for cond in ("day", "night"):
            sel = [i for i, q in enumerate(sorted(ds.queries)) if conditions[q] == cond]
            if sel:
                rows[f"queries ({cond})"] = retrieval_metrics(r["query_ranked"][sel], [qpos[i] for i in sel], KS)
        report["retrieval"] = rows
        md += [format_retrieval(rows), ""]
    out_json, out_md = paths.out / "evaluation.json", paths.out / "evaluation.md"
    write_json(out_json, report)
    write_text(out_md, "\n".join(md))
    print("\n".join(md))
    print(f"-> {out_json}, {out_md}")
    return report


if __name__ == "__main__":
    run_cli(main)
