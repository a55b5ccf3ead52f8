"""The inlier-coverage rule (localize.py --min-inlier-coverage) measured on a run's own logs.

    python studies/inlier_coverage.py --dataset datasets/demo --preset demo [--thresholds 0 0.02 0.05 0.1]

For every query a localization log (student retrieval and, if present, the oracle's) counted as
localized (or, in a run made with the rule or the place ratio test on, rejected by one of them), the
query is localized again from the same retrieved images (the same hypothesis, as localize.py finds
it) and the fraction of the image covered by the convex hull of its inliers is computed. A
threshold t turns every localized query with coverage < t into a failure, which gets the top
retrieved image's pose as any failure does; the place ratio test is not applied. Per threshold:
queries localized, wrong poses accepted (beyond 5 m / 10°), correct poses lost (within them) and
the recall at the three thresholds, computed with the project's evaluator. Localization is
replayed with the settings the run recorded (its seed included; --seed only where it recorded
none). Writes <results>/inlier_coverage.{md,json}.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import sys  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # report.py, shared with the benchmarks
from report import STUDY_RESULTS, finish, machine_info, markdown_table, open_replay, replay_command, run_parser  # noqa: E402  (puts the repository on sys.path)

from mmcrossvit.acceptance import inlier_coverage  # noqa: E402
from diagnosis import localization_logs, replay_accepted  # noqa: E402
from mmcrossvit.evaluation import THRESHOLDS, localization_table, pose_error  # noqa: E402
from mmcrossvit.geometry import Pose  # noqa: E402
from mmcrossvit.layout import Dataset  # noqa: E402
from mmcrossvit.localization import SfMModel  # noqa: E402
from mmcrossvit.paths import RunLayout  # noqa: E402


def coverages(run: RunLayout, ds: Dataset, model: SfMModel, s: dict, log: Path) -> list[dict]:
    """Each log row with its pose, and for localized ones the inliers' coverage and true error.
    `s`: the run's recorded localization settings (diagnosis.localization_settings)."""
    replayed = {r["query"]: res for r, res, _ in replay_accepted(ds, model, run.features, s, log)}
    rows = []
    for line in open(log):
        r = json.loads(line)
        q = ds.queries[r["query"]]
        row = {"query": r["query"], "condition": q.condition, "success": r["success"],
               "pose": Pose.from_qt(r["qvec"], r["tvec"]), "retrieved": r["retrieved"]}
        res = replayed.get(r["query"])
        if res is not None:  # a run made with the rule on logged the poses it rejected as failures
            row.update(success=True, pose=res.pose)
            row["coverage"] = inlier_coverage(res.points2d[np.asarray(res.inliers, bool)], q.camera)
            dt, dr = pose_error(row["pose"], ds.gt_poses[r["query"]])
            m, deg = THRESHOLDS[-1]
            row["wrong"] = bool(dt > m or dr > deg)
        rows.append(row)
    return rows


def at_threshold(rows: list[dict], t: float, model: SfMModel, ds: Dataset) -> dict:
    est, kept, wrong, lost = {}, 0, 0, 0
    for r in rows:
        ok = r["success"] and r["coverage"] >= t
        if ok:
            kept += 1
            wrong += r["wrong"]
        elif r["success"]:  # rejected now: the failure pose, the top retrieved image's
            lost += not r["wrong"]
        top = r["retrieved"][0] if r["retrieved"] else None
        est[r["query"]] = r["pose"] if ok or not r["success"] else model.poses[top]
    conds = {q: ds.queries[q].condition for q in est}
    table = localization_table(est, ds.gt_poses, conds)
    return {"threshold": t, "localized": kept, "wrong_accepted": wrong, "correct_lost": lost, "table": table}


def main(argv=None):
    p = run_parser(__doc__, STUDY_RESULTS)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1])
    args = p.parse_args(argv)
    run, ds, model, seed = open_replay(args)
    result = {"machine": machine_info(), "runs": {}}
    md = [f"# Inlier coverage on `{run.name}` ({args.preset} preset)", "",
          replay_command("inlier_coverage.py", args, run, seed, f" --thresholds {' '.join(map(str, args.thresholds))}"), "",
          "Coverage: the fraction of the query image inside the convex hull of the PnP inliers. A localized query "
          "below the threshold becomes a failure (the top retrieved image's pose). Wrong accepted: localized but "
          "beyond (5 m, 10°); correct lost: within it but rejected. Recall: day / night % at (0.25 m, 2°) / "
          "(0.5 m, 5°) / (5 m, 10°).", ""]
    for label, log, settings in localization_logs(run, args.preset, seed):
        rows = coverages(run, ds, model, settings, log)
        res = [at_threshold(rows, t, model, ds) for t in args.thresholds]
        wrong = sorted(round(r["coverage"], 3) for r in rows if r["success"] and r["wrong"])
        right = sorted(round(r["coverage"], 3) for r in rows if r["success"] and not r["wrong"])
        result["runs"][label] = {"log": str(log), "thresholds": res, "wrong_coverages": wrong,
                                 "correct_coverages": right}

        def pcts(t, c):
            return " / ".join(f"{v:.0f}" for v in t[c]["recall"]) if c in t else "-"
        md += [f"## {label} retrieval ({log})", "",
               f"Coverage of the wrong poses accepted: {wrong}; lowest of the correct ones: {right[:6]}.", "",
               markdown_table(["min coverage", "localized", "wrong accepted", "correct lost", "day %", "night %"],
                              [[r["threshold"], r["localized"], r["wrong_accepted"], r["correct_lost"],
                                pcts(r["table"], "day"), pcts(r["table"], "night")] for r in res]), ""]
    finish(str(Path(args.results) / "inlier_coverage"), md, result)


if __name__ == "__main__":
    main()
