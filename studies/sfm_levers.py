"""The localization ceiling, lever by lever: for each variant of the SfM, SIFT and PnP settings,
preprocessing and the oracle (ground-truth retrieval) localization, on a dataset with ground truth.

    python studies/sfm_levers.py --dataset datasets/demo --preset demo [--variants A B ...]

Each variant is the preset plus a few overrides (VARIANTS below), run under its own run name
(outputs/<name>-lever-<key>/); variants with the same SIFT settings share one feature extraction.
Reported per variant: the map (points, observations per image, track length, reprojection
error), preprocessing time, and the oracle's accuracy by day and night with the queries accepted
as localized but more than 5 m / 10° off ("wrong accepted"). Writes studies/results/sfm_levers.{md,json}.
"""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
from pathlib import Path  # noqa: E402
import sys  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # report.py, shared with the benchmarks
from report import STUDY_RESULTS, finish, markdown_table, run_parser  # noqa: E402  (puts the repository on sys.path)

from mmcrossvit import cli  # noqa: E402
from mmcrossvit.evaluation import load_results, localization_table, wrong_accepted  # noqa: E402
from mmcrossvit.layout import Dataset  # noqa: E402
from mmcrossvit.paths import ORACLE_TAG, RunLayout  # noqa: E402
from mmcrossvit.steps import execute, localize, preprocess  # noqa: E402
from mmcrossvit.storage import read_json  # noqa: E402

SIFT_KEYS = ("max_image_size", "max_num_features", "first_octave", "peak_threshold", "contrast", "affine_shape",
             "domain_size_pooling")
COLMAP_SIFT = dict(first_octave=-1, peak_threshold=0.02 / 3, max_image_size=1600)
DENSE = dict(min_pair_matches=5, two_view_tracks=True)
# key: (what it is, preprocess overrides, localize overrides)
VARIANTS = {
    "preset": ("the preset", {}, {}),
    "dense": ("two-view tracks, >= 5 verified matches a pair", DENSE, {}),
    "pairs30": ("dense, 30 pairs per image", dict(DENSE, num_pairs=30), {}),
    "ratio09": ("dense, ratio test 0.9", dict(DENSE, ratio=0.9), {}),
    "colmap": ("COLMAP's SIFT defaults", COLMAP_SIFT, {}),
    "colmap_dense": ("COLMAP's SIFT defaults, dense", dict(COLMAP_SIFT, **DENSE), {}),
    "colmap_dense_clahe": ("COLMAP's SIFT defaults, dense, CLAHE", dict(COLMAP_SIFT, **DENSE, contrast="clahe"), {}),
    "affine": ("the preset, affine-adapted SIFT", dict(affine_shape=True), {}),
    "dsp": ("the preset, DSP-SIFT", dict(domain_size_pooling=True), {}),
    "affine_dsp": ("the preset, affine-adapted DSP-SIFT", dict(affine_shape=True, domain_size_pooling=True), {}),
    "dense_covis": ("dense, covisibility clusters", DENSE, dict(covisibility=True)),
    "dense_inl30": ("dense, >= 30 inliers", DENSE, dict(min_inliers=30)),
    "dense_scaled": ("dense, RANSAC threshold scaled to the image size", DENSE, dict(ransac_ref_size=1600)),
    "colmap_dense_scaled": ("COLMAP's SIFT defaults, dense, scaled threshold", dict(COLMAP_SIFT, **DENSE),
                            dict(ransac_ref_size=1600)),
}


def main(argv=None) -> dict:
    p = run_parser(__doc__, STUDY_RESULTS)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="which variants to run (default: all): " + "; ".join(f"{k}: {v[0]}" for k, v in VARIANTS.items()))
    args = p.parse_args(argv)
    base = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    ds = Dataset(base.dataset)
    if ds.gt_poses is None:
        raise SystemExit("error: the levers are measured against ground_truth/query_poses.txt, which this dataset lacks")
    seed = getattr(args, "seed", 0)
    features_of: dict[tuple, RunLayout] = {}
    runs: dict[str, RunLayout] = {}  # one map per distinct preprocessing; variants of PnP share it
    table = {}
    for key in args.variants:
        label, pre_over, loc_over = VARIANTS[key]
        pre_key = json.dumps(pre_over, sort_keys=True)
        run = runs.setdefault(pre_key, RunLayout.create(base.dataset, f"{base.name}-lever-{key}", base.outputs,
                                                        base.database_root))
        pcfg = cli.settings(preprocess, args.preset, seed=seed, **pre_over)
        sift = tuple(getattr(pcfg, k) for k in SIFT_KEYS)
        if sift in features_of and not run.features.exists():  # same SIFT settings: extract once
            run.out.mkdir(parents=True, exist_ok=True)
            shutil.copy2(features_of[sift].features, run.features)
        print(f"== {label} -> {run.out}", flush=True)
        t0 = time.perf_counter()
        execute(preprocess, run, pcfg)  # skipped when this map was built for an earlier variant
        t_pre = time.perf_counter() - t0
        features_of.setdefault(sift, run)
        tag = f"{ORACLE_TAG}-{key}"
        execute(localize, run, cli.settings(localize, args.preset, seed=seed, retrieval="oracle", tag=tag,
                                            **loc_over))
        sfm = read_json(run.sfm_summary)
        loc = read_json(run.localization_summary(tag))
        acc = localization_table(load_results(run.results_file(tag), ds), ds.gt_poses,
                                 {q: v.condition for q, v in ds.queries.items()})
        log_rows = [json.loads(x) for x in run.localization_log(tag).read_text().splitlines()]
        table[key] = {"label": label, "preprocess": pre_over, "localize": loc_over, "run": run.name,
                      "points": sfm["points"], "observations": sfm["observations"],
                      "obs_per_image": sfm["observations"] / max(1, sfm["registered_images"]),
                      "track": sfm["mean_track_length"], "reproj_px": sfm["mean_reprojection_error"],
                      "preprocess_s": t_pre, "s_per_query": loc["median_seconds_per_query"],
                      "recall": {c: r["recall"] for c, r in acc.items()},
                      "wrong_accepted": wrong_accepted(log_rows, ds.gt_poses)}
    conds = [c for c in ("day", "night") if any(c in r["recall"] for r in table.values())]
    head = ["variant", "points", "obs/img", "track", "reproj px", "preprocess s", "s/query"]
    head += [f"{c} oracle %" for c in conds] + [f"{c} wrong accepted" for c in conds]
    rows = []
    for key, r in table.items():
        rows.append([f"{key}: {r['label']}", r["points"], f"{r['obs_per_image']:.0f}", f"{r['track']:.2f}", f"{r['reproj_px']:.2f}",
                     f"{r['preprocess_s']:.0f}", f"{r['s_per_query']:.2f}"]
                    + [" / ".join(f"{v:.0f}" for v in r["recall"].get(c, [np.nan] * 3)) for c in conds]
                    + [r["wrong_accepted"].get(c, 0) for c in conds])
    md = [f"Oracle localization on `{base.name}` (preset `{args.preset}`) at (0.25 m, 2°) / (0.5 m, 5°) / (5 m, 10°); "
          "'wrong accepted': counted as localized but more than 5 m or 10° off. Features are shared between "
          "variants with the same SIFT settings (and maps between variants with the same preprocessing), so "
          "'preprocess s' of a later variant excludes what it reused.", "",
          markdown_table(head, rows)]
    return finish(str(args.results / "sfm_levers"), md, table)


if __name__ == "__main__":
    main()
