"""What a visible point's definition changes on one run with ground truth: the lens-aware one
(`evaluation.project`: a point the lens folds back into the image does not count) against the
lens-blind one before it.

    python studies/visible_points.py --dataset datasets/demo --preset demo

A radial k < 0 folds points far off the axis back into the image, mirrored; the lens-blind
definition counted them visible, and, being near the camera, they hid real points behind them in
the occlusion test. For every query with a true pose, it reports the (query, point) pairs that each
definition counts visible, the folded ones, the ones they hid, which queries get another oracle
top K (--k, default: the preset's oracle_num_retrieved) or other positives (--min-shared, default:
the spatial database's), and, where the run has the retrieval step's ranking, the distilled
student's query P@K / R@K under each definition. The oracle's poses themselves need the
localization re-run: `localize.py --retrieval oracle` on a checkout of each definition.
Writes <results>/visible_points_<name>.{md,json}.
"""
from __future__ import annotations

import time

import numpy as np
from pathlib import Path  # noqa: E402
import sys  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # report.py, shared with the benchmarks
from report import STUDY_RESULTS, finish, markdown_table, run_parser  # noqa: E402  (puts the repository on sys.path)
from tqdm import tqdm

from mmcrossvit import presets  # noqa: E402
from mmcrossvit.evaluation import (oracle_candidates, query_positives, ranked_queries,  # noqa: E402
                                   retrieval_metrics, visible_points)
from mmcrossvit.errors import DataError  # noqa: E402
from mmcrossvit.layout import GT_POSES, Dataset  # noqa: E402
from mmcrossvit.localization import SfMModel  # noqa: E402
from mmcrossvit.paths import RunLayout  # noqa: E402
from mmcrossvit.spatial_db import SpatialDB  # noqa: E402
from mmcrossvit.storage import read_npz  # noqa: E402

DEFINITIONS = {"lens-aware (current)": True, "lens-blind (before)": False}
KS = (1, 5, 20)


def main(argv=None) -> dict:
    p = run_parser(__doc__, STUDY_RESULTS)
    p.add_argument("--k", type=int, default=None, help="oracle candidates per query (default: the preset's)")
    p.add_argument("--min-shared", type=int, default=None,
                   help="shared points that make a positive (default: the spatial database's)")
    args = p.parse_args(argv)
    run = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    ds = Dataset(run.dataset)
    if ds.gt_poses is None:
        raise DataError(ds.root / GT_POSES, "this benchmark needs ground-truth query poses")
    model = SfMModel.load(run.sfm)
    k = args.k or presets.step_settings(args.preset, "localize")["oracle_num_retrieved"]
    min_shared = args.min_shared or SpatialDB.load(run.spatial_db).min_shared
    queries = sorted(q for q in ds.queries if q in ds.gt_poses)

    seen, seconds = {}, {}
    for label, branch in DEFINITIONS.items():
        t = time.perf_counter()
        seen[label] = [set(visible_points(ds.queries[q].camera, ds.gt_poses[q], model.xyz, lens_branch=branch).tolist())
                       for q in tqdm(queries, desc=f"visible points, {label}", unit="query")]
        seconds[label] = (time.perf_counter() - t) / max(len(queries), 1)
    aware, blind = seen["lens-aware (current)"], seen["lens-blind (before)"]
    folded = [len(b - a) for a, b in zip(aware, blind)]  # counted by the blind definition only
    hidden = [len(a - b) for a, b in zip(aware, blind)]  # seen, but hidden behind a folded point
    angles = []  # how far off the optical axis the folded points lie
    for q, a, b in zip(queries, aware, blind):
        if b - a:
            Xc = ds.gt_poses[q].transform(model.xyz[sorted(b - a)])
            angles += np.degrees(np.arctan(np.linalg.norm(Xc[:, :2], axis=1) / Xc[:, 2])).tolist()

    db = sorted(model.point3d_ids)
    oracle = {lab: oracle_candidates(ds, model, k, br) for lab, br in DEFINITIONS.items()}
    positives = {lab: query_positives(ds, model, db, min_shared, br) for lab, br in DEFINITIONS.items()}
    changed_oracle = sum(oracle["lens-aware (current)"][q] != oracle["lens-blind (before)"][q] for q in queries)
    changed_pos = sum(a != b for a, b in zip(*positives.values()))

    result = {"queries": len(queries), "oracle_k": k, "min_shared": min_shared,
              "visible_pairs": {lab: sum(map(len, s)) for lab, s in seen.items()},
              "folded_pairs_counted_visible": int(sum(folded)), "queries_with_folded": int(sum(f > 0 for f in folded)),
              "pairs_hidden_by_folded": int(sum(hidden)),
              "folded_off_axis_deg": [round(min(angles), 1), round(max(angles), 1)] if angles else None,
              "oracle_lists_changed": int(changed_oracle), "positives_changed": int(changed_pos),
              "ms_per_query": {lab: round(1000 * s, 2) for lab, s in seconds.items()}, "retrieval": {}}

    rows = [[lab, f"{result['visible_pairs'][lab]:,}", f"{result['ms_per_query'][lab]:.1f}"] for lab in DEFINITIONS]
    md = [f"Visible points on `{run.name}` ({len(queries)} queries with a true pose, {len(model.xyz):,} 3D points), "
          f"lens-aware against lens-blind. Command: `python studies/visible_points.py --dataset {args.dataset} "
          f"--preset {args.preset}{f' --name {run.name}' if args.name else ''}`", "",
          markdown_table(["definition", "(query, point) pairs visible", "ms per query"], rows), "",
          f"- folded points the lens-blind definition counted visible: {sum(folded):,} (query, point) pairs, "
          f"in {result['queries_with_folded']} queries"
          + (f", {min(angles):.1f}° to {max(angles):.1f}° off the optical axis" if angles else ""),
          f"- points really seen that they hid in the occlusion test: {sum(hidden):,}",
          f"- queries whose oracle top {k} changes: {changed_oracle}; whose positives (>= {min_shared} shared "
          f"points) change: {changed_pos}", ""]

    if run.retrieval.exists():
        r = read_npz(run.retrieval)
        names = [str(n) for n in r["db_names"]]
        ranked = ranked_queries(r, sorted(ds.queries))
        conds = {q: v.condition for q, v in ds.queries.items()}
        head = ["definition", "condition", "queries with a positive"] + [f"P@{x}" for x in KS] + [f"R@{x}" for x in KS]
        rrows = []
        for lab, br in DEFINITIONS.items():
            qpos = query_positives(ds, model, names, min_shared, br)
            for cond in ("day", "night"):
                sel = [i for i, q in enumerate(sorted(ds.queries)) if conds[q] == cond]
                m = retrieval_metrics(ranked[sel], [qpos[i] for i in sel], KS)
                result["retrieval"][f"{lab}, {cond}"] = m
                rrows.append([lab, cond, sum(1 for i in sel if qpos[i])]
                             + [f"{m['P'][x]:.3f}" for x in KS] + [f"{m['R'][x]:.3f}" for x in KS])
        md += ["The run's retrieval (the distilled student's ranking, `retrieval.npz`) against each definition's positives:", "",
               markdown_table(head, rrows), ""]
    return finish(str(args.results / f"visible_points_{run.name}"), md, result)


if __name__ == "__main__":
    main()
