"""Step 7: accuracy tables, wherever ground truth exists; without it, the map's hold-out check
(database images localized from the others' matches: mmcrossvit/holdout.py, --holdout-images).

Localization: % of queries within (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°), per condition, and
median errors, for the student's retrieval and (when the oracle localization was run) for the
oracle. Retrieval: P@K and Recall@K for K in {1, 5, 20, 50, 100, 150, 200} (capped by the
database size) for held-out database anchors (positives: images sharing >= N 3D points, as in
training) and for queries (positives: database images sharing >= N of the 3D points visible from
the query's true pose).

--results [LABEL=]PATH (repeatable) adds any results file in the benchmark's format, e.g.
hloc's, beside the run's own (which are included when present); with --results the run needs no
outputs of its own. A query with no pose in a file counts as a failure, and the report says how
many there were and names the first few. Each file is also checked against the benchmark's own
format (`layout.check_results_file`: one line per query, its basename, a unit quaternion): the
verdict is under "benchmark_format" in evaluation.json ("ok" or the first problem, with its
line), and a file that could not be submitted as is gets a warning. Nothing to evaluate, an empty
or absent results file, or a run name with no outputs folder (a typo) is an error naming what it
looked for.

Writes outputs/<name>/evaluation.json (strict JSON: a median of unlocalized queries, inf, is
null) and evaluation.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .. import presets
from ..errors import DataError
from ..evaluation import (EVAL_KS, format_localization, format_retrieval, format_status, load_results,
                          localization_table, missing_queries, pose_status, query_positives, ranked_queries,
                          retrieval_metrics)
from ..layout import GT_POSES, Dataset, check_results_file
from ..localization import SfMModel
from ..paths import ORACLE_TAG, RunLayout
from ..spatial_db import SpatialDB
from ..storage import read_json, read_jsonl, read_npz, write_json, write_text

STEP = "evaluate"
S = argparse.SUPPRESS
RUN_TAGS = {"student retrieval": "", "oracle retrieval": ORACLE_TAG}  # label: the run's localization tag
NAMED_MISSING = 5  # missing queries named in the report


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-fold", type=int, default=S, help="fold whose anchors are held out (as in training)")
    p.add_argument("--holdout-images", type=int, default=S,
                   help="without query ground truth: database images localized from the others' matches and "
                        "compared with their poses in the map (the hold-out check; 0: off)")
    p.add_argument("--results", action="append", default=[], metavar="[LABEL=]PATH",
                   help="also evaluate this results file in the benchmark's format ('<basename> qw qx qy qz tx "
                        "ty tz', e.g. hloc's), its table titled LABEL (default: the path); repeatable; the "
                        "run's own results are evaluated too when present")


def given_results(cfg: argparse.Namespace) -> list[tuple[str, Path]]:
    """The --results files as (label, path); LABEL=PATH unless the whole text names a file."""
    out = []
    for spec in getattr(cfg, "results", None) or []:
        label, sep, rest = str(spec).partition("=")
        if sep and label and rest and "/" not in label and not Path(spec).exists():
            out.append((label, Path(rest)))
        else:
            out.append((str(spec), Path(spec)))
    return out


def check(run: RunLayout, cfg: argparse.Namespace) -> None:
    """Before anything is written (steps.execute): ground truth, the --results files, the run folder."""
    ds = Dataset(run.dataset)
    given = given_results(cfg)
    if ds.gt_poses is None:
        if given:
            raise DataError(ds.root / GT_POSES, "no ground truth: --results files cannot be evaluated here")
        if not run.sfm_points.exists():
            raise DataError(run.sfm, "no ground truth, and no map for the hold-out check; run preprocessing.py first")
        return
    labels = list(RUN_TAGS)
    for label, path in given:
        if not path.is_file():
            raise DataError(path, "results file not found (--results)")
        if label in labels:
            raise DataError(path, f"table title {label!r} is taken; pass --results OTHER_TITLE={path}")
        labels.append(label)
    if not given and not run.out.is_dir():
        runs = sorted(p.name for p in run.outputs.iterdir() if p.is_dir()) if run.outputs.is_dir() else []
        hint = f"runs there: {', '.join(runs[:10])}" if runs else "nothing has been run there yet"
        raise DataError(run.out, f"no outputs of run {run.name!r} in this folder; check --name and --outputs "
                                 f"({hint})")


def _retrieval_of(run: RunLayout) -> str | None:
    """The candidates the run's own localization used (its recorded settings)."""
    try:
        return read_json(run.settings("localize"))["settings"].get("retrieval")
    except (OSError, ValueError, KeyError):
        return None


def holdout_report(run: RunLayout, cfg: argparse.Namespace) -> dict:
    """Without query ground truth: the map's hold-out check (mmcrossvit/holdout.py)."""
    from .. import holdout
    try:
        settings = read_json(run.settings("localize"))["settings"]  # as the run localized its queries
    except (OSError, ValueError, KeyError):
        settings = presets.step_settings(cfg.preset, "localize")
    model = SfMModel.load(run.sfm)
    table, rows = holdout.check(model, run.features, settings, cfg.holdout_images, run.pairs_db_retrieval)
    wrong = holdout.wrong_localized(rows)
    md = [f"# Hold-out check of `{run.name}` (no query ground truth)\n",
          f"{len(rows)} database images, each localized from the others' matches and compared with its pose in "
          "the map (mmcrossvit/holdout.py): a check that the map, the retrieval and the pose solver work. "
          "The map's points were triangulated with these images too, so the errors are optimistic.", "",
          format_localization(table, holdout.LABEL), "",
          f"Localized: {sum(r['success'] for r in rows)} of {len(rows)}; of them beyond (5 m, 10°): {wrong}.", ""]
    report = {"ground_truth": None, "holdout": {"table": table, "rows": rows, "wrong_localized": wrong,
                                                 "label": holdout.LABEL}}
    write_json(run.evaluation_json, report)
    write_text(run.evaluation_md, "\n".join(md))
    print("\n".join(md))
    print(f"-> {run.evaluation_json}, {run.evaluation_md}")
    return report


def main(run: RunLayout, cfg: argparse.Namespace) -> dict:
    ds = Dataset(run.dataset)
    if ds.gt_poses is None:
        return holdout_report(run, cfg)
    conditions = {q: v.condition for q, v in ds.queries.items()}
    sources = [(label, run.results_file(tag)) for label, tag in RUN_TAGS.items() if run.results_file(tag).exists()]
    sources += given_results(cfg)
    if not sources and not run.retrieval.exists():
        raise DataError(run.results, "no results file to evaluate (and no retrieval); run localize.py first, "
                                     "or name one with --results")
    report: dict = {"localization": {}, "pose_status": {}, "retrieval": {}, "results": {}, "benchmark_format": {}}
    md = [f"# Evaluation of `{run.name}`\n"]
    photos = ds.root / "photos.json"  # datasets/photos.py: the "ground truth" is the SfM's own
    if photos.exists():
        report["ground_truth"] = read_json(photos).get("ground_truth")
        md += [f"Ground truth: {report['ground_truth']} (a check of the map and the retrieval in the SfM's "
               f"own frame and units, not an independent measurement); {len(ds.gt_poses)} of "
               f"{len(ds.queries)} queries have one.", ""]
    for label, path in sources:
        if label == "student retrieval" and _retrieval_of(run) == "all":
            label = "every database image (small map)"
        est = load_results(path, ds)
        missing = missing_queries(est, ds.gt_poses)
        table = localization_table(est, ds.gt_poses, conditions)
        report["localization"][label] = table
        report["results"][label] = {"file": str(path), "poses": len(est), "queries": len(ds.gt_poses),
                                    "missing": len(missing), "missing_first": missing[:NAMED_MISSING]}
        md += [format_localization(table, label), ""]
        tag = next((t for lab, t in RUN_TAGS.items() if run.results_file(t) == path), None)
        log_path = run.localization_log(tag) if tag is not None else None
        if log_path is not None and log_path.exists():  # what the run trusted, and how right it was
            status = pose_status(read_jsonl(log_path), ds.gt_poses)
            report["pose_status"][label] = status
            md += [format_status(status, label), ""]
        if missing:
            note = (f"{len(missing)} of {len(ds.gt_poses)} queries have no pose in {path} (counted as failures), "
                    f"e.g. {', '.join(missing[:NAMED_MISSING])}")
            print(f"warning: {note}", file=sys.stderr, flush=True)
            md += [f"**Warning:** {note}", ""]
        try:  # could it be submitted as is? (evaluation itself is more lenient: full names, missing queries)
            check_results_file(path, ds)
            report["benchmark_format"][label] = "ok"
        except DataError as e:
            report["benchmark_format"][label] = str(e)
            print(f"warning: not in the benchmark's format: {e}", file=sys.stderr, flush=True)
            md += [f"**Not in the benchmark's format (fix before submitting):** {e}", ""]
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
        ranked_q = ranked_queries(r, sorted(ds.queries))
        rows["queries"] = retrieval_metrics(ranked_q, qpos, EVAL_KS)
        for cond in ("day", "night"):
            sel = [i for i, q in enumerate(sorted(ds.queries)) if conditions[q] == cond]
            if sel:
                rows[f"queries ({cond})"] = retrieval_metrics(ranked_q[sel], [qpos[i] for i in sel], EVAL_KS)
        report["retrieval"] = rows
        md += [format_retrieval(rows), ""]
    write_json(run.evaluation_json, report)
    write_text(run.evaluation_md, "\n".join(md))
    print("\n".join(md))
    print(f"-> {run.evaluation_json}, {run.evaluation_md}")
    return report
