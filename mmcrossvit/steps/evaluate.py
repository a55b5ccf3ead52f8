"""Step 7: accuracy tables, wherever ground truth exists.

Localization: % of queries within (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°), per condition, and
median errors, for the student's retrieval and (when the oracle localization was run) for the
oracle. Retrieval: P@K and Recall@K for K in {1, 5, 20, 50, 100, 150, 200} (capped by the
database size) for held-out database anchors (positives: images sharing >= N 3D points, as in
training) and for queries (positives: database images sharing >= N of the 3D points visible from
the query's true pose).

Writes outputs/<name>/evaluation.json and evaluation.md.
"""
from __future__ import annotations

import argparse
from ..errors import DataError
from ..evaluation import (EVAL_KS, format_localization, format_retrieval, load_results, localization_table,
                          query_positives, retrieval_metrics)
from ..layout import GT_POSES, Dataset
from ..localization import SfMModel
from ..paths import RunLayout
from ..spatial_db import SpatialDB
from ..storage import read_npz, write_json, write_text

STEP = "evaluate"
S = argparse.SUPPRESS


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-fold", type=int, default=S, help="fold whose anchors are held out (as in training)")


def main(run: RunLayout, cfg: argparse.Namespace) -> dict:
    ds = Dataset(run.dataset)
    if ds.gt_poses is None:
        raise DataError(ds.root / GT_POSES, "no ground truth; nothing to evaluate (submit the results file instead)")
    conditions = {q: v.condition for q, v in ds.queries.items()}
    report: dict = {"localization": {}, "retrieval": {}}
    md = [f"# Evaluation of `{run.name}`\n"]
    for label, path in (("student retrieval", run.results), ("oracle retrieval", run.oracle_results)):
        if path.exists():
            table = localization_table(load_results(path, ds), ds.gt_poses, conditions)
            report["localization"][label] = table
            md += [format_localization(table, label), ""]
    if run.retrieval.exists():
        r = read_npz(run.retrieval)
        db_names = [str(n) for n in r["db_names"]]
        sdb = SpatialDB.load(run.spatial_db)
        index = {str(n): i for i, n in enumerate(sdb.names)}
        to_ret = {n: j for j, n in enumerate(db_names)}
        anchors = [n for n in db_names if n in index and sdb.fold[index[n]] == cfg.val_fold]
        pos = [{to_ret[str(sdb.names[k])] for k in sdb.positives(index[n])[0] if str(sdb.names[k]) in to_ret}
               for n in anchors]
        ranked = r["db_ranked"][[to_ret[n] for n in anchors]]
        rows = {f"db anchors (fold {cfg.val_fold})": retrieval_metrics(ranked, pos, EVAL_KS)}
        model = SfMModel.load(run.sfm)
        qpos = query_positives(ds, model, db_names, sdb.min_shared)
        rows["queries"] = retrieval_metrics(r["query_ranked"], qpos, EVAL_KS)
        for cond in ("day", "night"):
            sel = [i for i, q in enumerate(sorted(ds.queries)) if conditions[q] == cond]
            if sel:
                rows[f"queries ({cond})"] = retrieval_metrics(r["query_ranked"][sel], [qpos[i] for i in sel], EVAL_KS)
        report["retrieval"] = rows
        md += [format_retrieval(rows), ""]
    write_json(run.evaluation_json, report)
    write_text(run.evaluation_md, "\n".join(md))
    print("\n".join(md))
    print(f"-> {run.evaluation_json}, {run.evaluation_md}")
    return report
