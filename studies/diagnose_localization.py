"""Why each query's localization failed, on one localized run with ground truth.

    python studies/diagnose_localization.py --dataset datasets/demo --preset demo [--tag oracle] [--px 4]

Reads the localization log of the run (outputs/<name>/[<tag>/]localization_log.jsonl) and, for
every query with a true pose (ground_truth/query_poses.txt), re-runs its localization with the
settings the run recorded (outputs/<name>/settings/localize[_<tag>].json; the same seed gives the
same result) and checks each stage against the truth (studies/diagnosis.py): matches, 2D-3D
correspondences, GT-consistent ones, RANSAC inliers, GT-consistent inliers, covisible retrieved
images and the viewpoint change. Each query gets a failure kind:

    localized            accepted, within (0.25 m, 2°)
    inaccurate           accepted, within (5 m, 10°) but not (0.25 m, 2°)
    wrong pose accepted  accepted, beyond (5 m, 10°)
    retrieval miss       failed; no retrieved image sees >= --min-shared of the query's points
    no correspondences   failed; fewer than 4 2D-3D correspondences
    few inliers          failed otherwise (RANSAC found too few inliers)
    pose rejected        failed: RANSAC found a pose that a rule beyond the inlier count
                         (--min-inlier-coverage, --max-rival-ratio) rejected

Writes outputs/<name>/[<tag>/]diagnosis/ (queries.csv, summary.json, summary.md, failures.png)
and the table as <results>/diagnosis_<name>[_<tag>].{md,json}. Without a recorded settings file
the --preset's localization settings (and --seed) are used, and the report says so.
"""
from __future__ import annotations

import csv

import numpy as np
from pathlib import Path  # noqa: E402
import sys  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # report.py, shared with the benchmarks
from report import STUDY_RESULTS, finish, markdown_table, run_parser  # noqa: E402  (puts the repository on sys.path)
from tqdm import tqdm

from mmcrossvit import cli, presets  # noqa: E402
from diagnosis import (ALL, COARSEST, FINEST, KINDS, MIN_PNP, SETTINGS, diagnose_query,
                                  localization_settings,  # noqa: E402
                                  summarise)
from mmcrossvit.errors import DataError  # noqa: E402
from mmcrossvit.evaluation import gt_covisibility  # noqa: E402
from mmcrossvit.layout import GT_POSES, Dataset  # noqa: E402
from mmcrossvit.localization import SfMModel  # noqa: E402
from mmcrossvit.paths import RunLayout  # noqa: E402
from mmcrossvit.steps import localize  # noqa: E402
from mmcrossvit.storage import atomic_path, read_json, write_json, write_text  # noqa: E402

CSV_COLUMNS = ("query", "condition", "kind", "success", "retrieved", "matches", "correspondences",
               "gt_correspondences", "inliers", "gt_inliers", "distinct_inliers", "inlier_keypoints",
               "position_error_m", "rotation_error_deg", "visible_points", "covisible_retrieved",
               "first_covisible_rank", "best_db", "best_db_shared",
               "best_db_distance_m", "best_db_angle_deg", "best_retrieved", "best_retrieved_shared",
               "best_retrieved_distance_m", "best_retrieved_angle_deg", "reproduced")
# the medians table: (column, header, format)
MEDIANS = (("correspondences", "corr.", ".0f"), ("gt_correspondences", "GT-consistent corr.", ".0f"),
           ("inliers", "inliers", ".0f"), ("gt_inliers", "GT-consistent inliers", ".0f"),
           ("distinct_inliers", "distinct inliers", ".0f"),
           ("position_error_m", "error m", ".3f"), ("rotation_error_deg", "error °", ".2f"),
           ("covisible_retrieved", "covisible retrieved", ".0f"),
           ("first_covisible_rank", "first covisible rank", ".0f"),
           ("best_retrieved_distance_m", "to best retrieved m", ".1f"),
           ("best_retrieved_angle_deg", "to best retrieved °", ".1f"),
           ("best_db_distance_m", "to best db m", ".1f"), ("best_db_angle_deg", "to best db °", ".1f"))
COLOURS = {"localized": "#2ca02c", "inaccurate": "#bcbd22", "wrong pose accepted": "#d62728",
           "retrieval miss": "#9467bd", "no correspondences": "#7f7f7f", "few inliers": "#ff7f0e",
           "pose rejected": "#17becf"}


def min_shared_of(run: RunLayout, preset: str) -> tuple[int, str]:
    """Covisibility threshold: the run's recorded preprocessing setting, else the preset's."""
    path = run.settings("preprocess")
    if path.exists() and "min_shared" in read_json(path).get("settings", {}):
        return int(read_json(path)["settings"]["min_shared"]), str(path)
    return int(presets.step_settings(preset, "preprocess")["min_shared"]), f"preset {preset}"


def _cell(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(summary: dict, title: str) -> list[str]:
    counts, medians = summary["counts"], summary["medians"]
    md = [f"## {title}", "", "Queries per failure kind:", "",
          markdown_table(["condition", *KINDS, "total"], [[c, *(n[k] for k in KINDS), n["total"]]
                                                          for c, n in counts.items()]),
          "", "Medians per condition and kind (viewpoint change: from the true pose to the database image "
          "sharing most of its visible 3D points):", ""]
    rows = [[c, k, counts[c]["total"] if k == ALL else counts[c][k], *(_cell(m[col], f) for col, _, f in MEDIANS)]
            for c, by_kind in medians.items() for k, m in by_kind.items()]
    md.append(markdown_table(["condition", "kind", "n", *(h for _, h, _ in MEDIANS)], rows))
    return md


def figure(rows: list[dict], summary: dict, min_inliers: int, path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (bar, sc) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.4]})
    conds = list(summary["counts"])
    bottom = np.zeros(len(conds))
    for k in KINDS:
        n = np.array([summary["counts"][c][k] for c in conds], dtype=float)
        bar.bar(conds, n, bottom=bottom, color=COLOURS[k], label=k)
        for i, v in enumerate(n):
            if v:
                bar.text(i, bottom[i] + v / 2, str(int(v)), ha="center", va="center", fontsize=8)
        bottom += n
    bar.set_ylabel("queries")
    bar.set_title("failure kinds per condition")
    markers = {"day": "o", "night": "^"}
    top = max([1] + [r["inliers"] for r in rows])
    for k in KINDS:
        for c in sorted({r["condition"] for r in rows}):
            sel = [r for r in rows if r["kind"] == k and r["condition"] == c]
            if sel:
                sc.scatter([r["inliers"] for r in sel], [r["gt_inliers"] for r in sel], color=COLOURS[k],
                           marker=markers.get(c, "s"), s=28, alpha=0.8, edgecolors="none")
    sc.plot([0, top], [0, top], "k:", lw=0.8, label="all inliers GT-consistent")
    sc.axvline(min_inliers, color="k", ls="--", lw=0.8, label=f"min_inliers ({min_inliers})")
    sc.set_xscale("symlog", linthresh=10)
    sc.set_yscale("symlog", linthresh=10)
    lim = max(top, min_inliers) * 1.5 + 1  # counts are >= 0: no negative half of the symlog axes
    sc.set_xlim(-0.5, lim)
    sc.set_ylim(-0.5, lim)
    sc.set_xlabel("RANSAC inliers")
    sc.set_ylabel("GT-consistent inliers")
    sc.set_title("inliers (o day, ^ night)")
    handles = [plt.Line2D([], [], color=COLOURS[k], marker="o", ls="", label=k) for k in KINDS]
    sc.legend(handles=handles + sc.get_legend_handles_labels()[0], fontsize=8, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_csv(path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        w.writerows([["" if r[c] is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c])
                      for c in CSV_COLUMNS] for r in rows])


def main(argv=None) -> dict:
    p = run_parser(__doc__, STUDY_RESULTS)
    p.add_argument("--tag", default="", help="the localization to diagnose: outputs/<name>/<tag>/ "
                   "(e.g. 'oracle'; default: the run's own, with the student's retrieval)")
    p.add_argument("--px", type=float, default=4.0,
                   help="a correspondence is GT-consistent when its 3D point projects within this many pixels "
                        "of its keypoint under the true pose (default: 4)")
    p.add_argument("--min-shared", type=int, default=None,
                   help="a retrieved image is covisible when it observes at least this many of the 3D points "
                        "visible from the true pose (default: the run's preprocessing min_shared)")
    args = p.parse_args(argv)
    run = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    ds = Dataset(run.dataset)
    if ds.gt_poses is None:
        raise DataError(ds.root / GT_POSES, "the diagnosis needs ground truth: this dataset has no "
                                            "ground_truth/query_poses.txt (true query poses)")
    log_path = run.localization_log(args.tag)
    if not log_path.exists():
        cmd = ["localize.py", "--dataset", str(args.dataset)] + (["--name", run.name] if args.name else []) \
            + (["--retrieval", "oracle"] if args.tag == "oracle" else ["--tag", args.tag] if args.tag else [])
        raise DataError(log_path, f"no localization log; run {' '.join(cmd)} first")
    if not run.sfm_points.exists():
        raise DataError(run.sfm, "no SfM model; run preprocessing.py first")
    logged = localize._read_log(log_path)
    settings, settings_from = localization_settings(run, args.tag, args.preset, getattr(args, "seed", None))
    min_shared, min_shared_from = (args.min_shared, "--min-shared") if args.min_shared is not None \
        else min_shared_of(run, args.preset)
    model = SfMModel.load(run.sfm)
    db = sorted(model.point3d_ids)
    covis = gt_covisibility(ds, model, db)
    names = sorted(q for q in logged if q in covis)
    unlogged = sorted(set(covis) - set(logged))
    rows = []
    for q in tqdm(names, desc="diagnose", unit="query"):
        query = ds.queries[q]
        rows.append(diagnose_query(q, query.camera, ds.gt_poses[q], logged[q]["retrieved"], model, run.features,
                                   settings, dict(zip(db, covis[q].tolist())), args.px, min_shared, query.condition,
                                   logged[q].get("rejected_by")))
    # the log's verdict is what the run reported: a re-run that disagrees means the model, the
    # features or the settings changed since (localize.py would recompute those rows)
    differ = [r["query"] for r in rows if (r["success"], r["inliers"]) != (logged[r["query"]]["success"],
                                                                           logged[r["query"]]["inliers"])]
    differ += [r["query"] for r in rows if not r["reproduced"] and r["query"] not in differ]
    summary = summarise(rows)
    result = {"run": run.name, "tag": args.tag, "log": str(log_path), "queries": len(rows), "px": args.px,
              "min_shared": min_shared, "min_shared_from": min_shared_from, "settings": settings,
              "settings_from": settings_from, "not_in_log": unlogged, "differ_from_log": sorted(differ),
              **summary}
    title = f"Localization diagnosis of `{run.name}`" + (f" ({args.tag})" if args.tag else "")
    md = markdown(summary, title)
    notes = [f"{len(rows)} queries with ground truth from `{log_path}`; GT-consistent: within {args.px:g} px under "
             f"the true pose; covisible: >= {min_shared} shared points; settings from {settings_from}."]
    notes.append(f"Kinds: *localized* accepted within ({FINEST[0]:g} m, {FINEST[1]:g}°); *inaccurate* accepted within "
                 f"({COARSEST[0]:g} m, {COARSEST[1]:g}°) only; *wrong pose accepted* beyond it; failures: *retrieval "
                 f"miss* (no covisible image retrieved), *no correspondences* (< {MIN_PNP}), else *few inliers* "
                 f"(< min_inliers = {settings['min_inliers']}), or *pose rejected* (by the coverage rule or the place "
                 "ratio test). Distinct inliers: different (image position, 3D point) "
                 "pairs; SIFT can put several keypoints (orientations) at one image position.")
    if unlogged:
        notes.append(f"**{len(unlogged)} queries with ground truth are not in the log** (e.g. {unlogged[0]}).")
    if differ:
        notes.append(f"**{len(differ)} queries re-localize differently from the log** (e.g. {differ[0]}): the "
                     "model, features or settings changed since the run; re-run localize.py.")
    md = md[:2] + [line for n in notes for line in (n, "")] + md[2:]
    write_csv(run.diagnosis_csv(args.tag), rows)
    write_json(run.diagnosis_json(args.tag), result)
    write_text(run.diagnosis_md(args.tag), "\n".join(md) + "\n")
    figure(rows, summary, settings["min_inliers"], run.diagnosis_figure(args.tag), title.replace("`", ""))
    print(f"-> {run.diagnosis_dir(args.tag)} (queries.csv, summary.json, summary.md, failures.png)")
    stem = f"diagnosis_{run.name}" + (f"_{args.tag}" if args.tag else "")
    finish(str(args.results / stem), md, result)
    return {**result, "rows": rows}


if __name__ == "__main__":
    cli.run_cli(main)
