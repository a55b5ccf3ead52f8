"""Re-ranking by local verification against a weak retrieval descriptor, on one run with ground truth.

    python studies/rerank.py --dataset datasets/demo --preset demo [--depths 50 100] [--keep 20]

Localizes the run's queries from the student's retrieval four ways, each under its own tag
(outputs/<name>/rerank-top/, rerank-covis/, rerank-pool<N>/, rerank-<N>/, rerank-count<N>/):

    top        the pairs file without re-ranking (pairs-query.txt, top K): the paper's pipeline
    covis      the same candidates, clustered by covisibility (hloc's option)
    rerank<N>  the top N of the student's ranking re-ranked with the preset's verification
               (localize --rerank N; with the presets' --rerank-pnp, the candidates whose own PnP
               pose agrees with the best-verified one's, at most --keep of them, default K)
    count<N>   the same N re-ranked by their number of distinct 2D-3D correspondences alone, the
               best --keep localized (--rerank-pnp 0: tells the gain of PnP verification)
    pool<N>    the control: all top N pooled without re-ranking (as many images matched as
               rerank<N>; tells the gain of verification from that of matching deeper)

and evaluates each with the project's evaluator (mmcrossvit.evaluation, as evaluate.py does):
% of day / night queries within (0.25 m, 2°) / (0.5 m, 5°) / (5 m, 10°), the queries counted as
localized but more than 5 m / 10° off ("wrong accepted"), how many queries have a covisible
database image (>= the run's min_shared of the 3D points visible from the true pose) among the
images localization used, and seconds per query (features + matching + PnP, from the logs;
matching includes the verification of every candidate).

The deeper candidates come from the pairs step's full ranking (outputs/<name>/pairs-query-ranked.txt)
when the run has it, else from outputs/<name>/retrieval.npz, written as a pairs file under
outputs/<name>/rerank-pairs/ (the same ranking: its top K must equal pairs-query.txt). Depths
beyond the ranking's are skipped. Logs are reused when their inputs match (--overwrite redoes
them); timings depend on the machine's load (recorded). Writes <results>/rerank.{md,json}.
"""
from __future__ import annotations

import json

import numpy as np
from pathlib import Path  # noqa: E402
import sys  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # report.py, shared with the benchmarks
from report import STUDY_RESULTS, finish, machine_info, markdown_table, run_parser  # noqa: E402  (puts the repository on sys.path)

from mmcrossvit import cli  # noqa: E402
from mmcrossvit.colmap_io import read_pairs, write_pairs  # noqa: E402
from mmcrossvit.errors import DataError  # noqa: E402
from mmcrossvit.evaluation import gt_covisibility, load_results, localization_table, wrong_accepted  # noqa: E402
from mmcrossvit.layout import GT_POSES, Dataset  # noqa: E402
from mmcrossvit.localization import SfMModel  # noqa: E402
from mmcrossvit.paths import RunLayout  # noqa: E402
from mmcrossvit.spatial_db import SpatialDB  # noqa: E402
from mmcrossvit.steps import execute, localize  # noqa: E402
from mmcrossvit.storage import read_npz  # noqa: E402

PAIRS_TAG = "rerank-pairs"  # where the ranking from retrieval.npz is written when the run lacks the pairs step's


def per_query(pairs) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for q, d in pairs:
        out.setdefault(q, []).append(d)
    return out


def deep_pairs(run: RunLayout, top: dict[str, list[str]]) -> tuple[str, int]:
    """(path, depth) of the student's full ranking as a pairs file: the pairs step's, else one
    written from retrieval.npz; its head must be the pairs file the run localizes with."""
    path = run.pairs_query_ranked
    if path.exists():
        ranked = per_query(read_pairs(path))
    else:
        if not run.retrieval.exists():
            raise DataError(run.retrieval, "no retrieval ranking; run generate_localization_pairs.py first")
        r = read_npz(run.retrieval)
        db = [str(n) for n in r["db_names"]]
        ranked = {str(q): [db[j] for j in row] for q, row in zip(r["query_names"], r["query_ranked"])}
        path = run.localization_dir(PAIRS_TAG) / run.pairs_query_ranked.name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_pairs(path, [(q, d) for q, c in ranked.items() for d in c])
    for q, c in top.items():
        if ranked.get(q, [])[:len(c)] != c:
            raise DataError(path, f"the ranking of {q!r} does not start with its pairs in {run.pairs_query}: "
                                  "the two come from different retrievals; re-run generate_localization_pairs.py")
    return str(path), max(map(len, ranked.values()), default=0)


def main(argv=None) -> dict:
    p = run_parser(__doc__, STUDY_RESULTS)
    p.add_argument("--depths", type=int, nargs="+", default=[50, 100],
                   help="candidates re-ranked (--rerank), one variant each (default: 50 100)")
    p.add_argument("--keep", type=int, default=None,
                   help="candidates kept after re-ranking (default: as many as pairs-query.txt lists per query)")
    p.add_argument("--no-controls", action="store_true", help="skip the pool<N> controls")
    p.add_argument("--overwrite", action="store_true", help="re-localize even where a tag's log is up to date")
    args = p.parse_args(argv)
    run = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    ds = Dataset(run.dataset)
    if ds.gt_poses is None:
        raise DataError(ds.root / GT_POSES, "re-ranking is measured against ground truth, which this dataset lacks")
    if not run.pairs_query.exists():
        raise DataError(run.pairs_query, "no retrieval pairs; run the pipeline (make demo) first")
    seed = getattr(args, "seed", 0)
    top = per_query(read_pairs(run.pairs_query))
    k = max(map(len, top.values()))
    keep = args.keep or k
    ranked_path, depth = deep_pairs(run, top)
    info = machine_info()

    # rerank=0 where not re-ranking: the preset may re-rank (the demo's does)
    variants = {"top": (f"student top-{k} (the paper's pipeline)", dict(rerank=0)),
                "covis": (f"student top-{k}, covisibility clusters", dict(covisibility=True, rerank=0))}
    skipped = []
    for n in args.depths:
        if n > depth:
            skipped.append(n)
            continue
        if not args.no_controls:
            variants[f"pool{n}"] = (f"top-{n} pooled, no re-ranking (control)", dict(num_retrieved=n, rerank=0,
                                                                                         pairs=ranked_path))
        pre = cli.settings(localize, args.preset)
        if pre.rerank_pnp:
            variants[f"count{n}"] = (f"top-{n} re-ranked by matches, best {keep} kept",
                                     dict(rerank=n, rerank_keep=keep, rerank_pnp=0, pairs=ranked_path))
        how = f"best {pre.rerank_pnp} verified by PnP, the agreeing kept (<= {keep})" if pre.rerank_pnp \
            else f"best {keep} kept"
        variants[f"rerank{n}"] = (f"top-{n} re-ranked, {how}", dict(rerank=n, rerank_keep=keep, pairs=ranked_path))

    model = SfMModel.load(run.sfm)
    db = sorted(model.point3d_ids)
    covis = gt_covisibility(ds, model, db)
    min_shared = SpatialDB.load(run.spatial_db).min_shared if run.spatial_db.exists() else 8
    conditions = {q: v.condition for q, v in ds.queries.items()}
    table = {}
    for key, (label, over) in variants.items():
        tag = "rerank-" + key.removeprefix("rerank")  # rerank-top, rerank-covis, rerank-pool50, rerank-50, ...
        print(f"== {label} -> {run.localization_dir(tag)}", flush=True)
        s = execute(localize, run, cli.settings(localize, args.preset, seed=seed, tag=tag, overwrite=args.overwrite,
                                                **over))
        rows = [json.loads(line) for line in run.localization_log(tag).read_text().splitlines()]
        acc = localization_table(load_results(run.results_file(tag), ds), ds.gt_poses, conditions)
        secs = np.array([sum(r["seconds"].values()) for r in rows])
        used_covisible: dict[str, int] = {}
        for r in rows:
            if r["query"] in covis:
                shared = dict(zip(db, covis[r["query"]].tolist()))
                hit = any(shared.get(n, 0) >= min_shared for n in r["retrieved"])
                used_covisible[r["condition"]] = used_covisible.get(r["condition"], 0) + hit
        table[key] = {"label": label, "tag": tag, "settings": {k2: str(v) for k2, v in over.items()},
                      "localized": s["localized"], "queries": s["queries"],
                      "recall": {c: r["recall"] for c, r in acc.items()},
                      "n": {c: r["n"] for c, r in acc.items()},
                      "wrong_accepted": wrong_accepted(rows, ds.gt_poses), "used_covisible": used_covisible,
                      "candidates_matched": float(np.mean([len(r.get("candidates", r["retrieved"])) for r in rows])),
                      "mean_s_per_query": float(secs.mean()), "median_s_per_query": float(np.median(secs)),
                      "mean_seconds": s["mean_seconds"]}
    # the variant with the preset's own settings must reproduce the pipeline's results file
    pre = cli.settings(localize, args.preset)
    own = f"rerank{pre.rerank}" if pre.rerank and pre.rerank_keep == keep and f"rerank{pre.rerank}" in table else "top"
    same = run.results.exists() and run.results.read_bytes() == run.results_file(table[own]["tag"]).read_bytes()

    conds = [c for c in ("day", "night") if any(c in r["recall"] for r in table.values())]
    head = ["variant", "images matched"] + [f"{c} % (n={table['top']['n'][c]})" for c in conds]
    head += [f"{c} wrong accepted" for c in conds] + [f"{c} covisible used" for c in conds]
    head += ["s/query mean", "s/query median", "matching s", "PnP s"]
    rows = []
    for key, r in table.items():
        rows.append([f"{key}: {r['label']}", f"{r['candidates_matched']:.0f}"]
                    + [" / ".join(f"{v:.0f}" for v in r["recall"].get(c, [np.nan] * 3)) for c in conds]
                    + [r["wrong_accepted"].get(c, 0) for c in conds]
                    + [r["used_covisible"].get(c, 0) for c in conds]
                    + [f"{r['mean_s_per_query']:.2f}", f"{r['median_s_per_query']:.2f}",
                       f"{r['mean_seconds']['matching']:.2f}", f"{r['mean_seconds']['pnp']:.2f}"])
    md = [f"Localization from the student's retrieval on `{run.name}` (preset `{args.preset}`), % of queries "
          "within (0.25 m, 2°) / (0.5 m, 5°) / (5 m, 10°). 'images matched': database images the query is "
          f"SIFT-matched to; 'wrong accepted': localized but beyond (5 m, 10°); 'covisible used': queries "
          f"with an image seeing >= {min_shared} of the 3D points visible from the true pose among the images "
          "localization used; seconds per query: features + matching (the verification of every candidate "
          f"included) + PnP, on {info['cpu_count']} CPU cores (load at start {info.get('load_average_1m_5m_15m')}). "
          f"Deeper candidates: {ranked_path} (ranking depth {depth}).", "",
          markdown_table(head, rows), ""]
    if skipped:
        md.append(f"Skipped: re-ranking depths {skipped}, deeper than the ranking ({depth}).")
    md.append(f"The `{own}` variant (the preset's settings) reproduces the pipeline's own localization ({run.results}): "
              f"{'identical results file' if same else 'results differ (or the pipeline has not localized)'}.")
    result = {"run": run.name, "preset": args.preset, "ranked_pairs": ranked_path, "ranking_depth": depth,
              "keep": keep, "min_shared": min_shared, "variants": table, "skipped_depths": skipped,
              "preset_variant": own, "reproduces_pipeline": same, "machine": info}
    return finish(str(args.results / "rerank"), md, result)


if __name__ == "__main__":
    cli.run_cli(main)
