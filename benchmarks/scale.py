"""Pipeline scale benchmarks: time and peak memory of the parts that grow with the dataset.

* spatial-contrastive database (mmcrossvit.spatial_db.build) at Aachen scale on a synthetic
  incidence (images along a path, each 3D point observed by a run of consecutive images), versus a
  direct per-point Python loop over image pairs (as in the authors' code) timed on a subsample of
  points and extrapolated linearly;
* retrieval: exact top-k inner-product search (mmcrossvit.retrieval.topk) of the queries against
  database descriptors, at Aachen's size and at 100k;
* database pairs from known poses (mmcrossvit.sfm.pairs_from_poses: a k-d tree) on synthetic
  cameras at Aachen's size and at 100k, against the dense n x n distance matrix it replaced;
* per-query localization time split into features / matching / PnP, read from a
  localization_log.jsonl written by localize.py;
* training throughput (samples/s) of teacher and student: timed optimiser steps on random tensors.

Every timed case (benchmarks/scale_cases.py) runs in its own subprocess, so its peak RSS
(resource.getrusage ru_maxrss) is its own: the peak is reported above the RSS the process held
just before the timed operation (inputs already in memory), and in absolute terms.

    python benchmarks/scale.py                       # all cases, writes benchmarks/results/scale.{md,json}
    python benchmarks/scale.py --cases db retrieval  # some cases
    python benchmarks/scale.py --log outputs/aachen/localization_log.jsonl
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import finish, machine_info, markdown_table, parser
from scale_cases import run_case

CASES = ("db", "retrieval", "pairs", "localization", "training")


def parse_args(argv=None):
    p = parser(__doc__, "scale")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="which benchmarks to run")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    g = p.add_argument_group("spatial database")
    g.add_argument("--images", type=int, default=4328, help="database images (Aachen: 4,328)")
    g.add_argument("--points", type=int, default=1_600_000, help="3D points (Aachen: ~1.6 M)")
    g.add_argument("--track", type=int, nargs=2, default=[3, 10], metavar=("MIN", "MAX"),
                   help="track length range: each point is observed by MIN..MAX consecutive images")
    g.add_argument("--outliers", type=float, default=0.005, help="fraction of points placed far off (box filtering)")
    g.add_argument("--min-shared", type=int, default=8, help="spatial_db.build min_shared")
    g.add_argument("--loop-fraction", type=float, default=0.01,
                   help="fraction of points the Python-loop baseline runs on (extrapolated to all points)")
    g = p.add_argument_group("retrieval")
    g.add_argument("--queries", type=int, default=922, help="query descriptors (Aachen v1.1: 922 queries)")
    g.add_argument("--db-sizes", type=int, nargs="+", default=[4328, 100_000], help="database descriptor counts")
    g.add_argument("--dim", type=int, default=1000, help="descriptor dimension (float32)")
    g.add_argument("--k", type=int, default=50, help="neighbours retrieved per query")
    g.add_argument("--runs", type=int, default=3, help="timed searches; the median is reported")
    g = p.add_argument_group("database pairs from poses")
    g.add_argument("--pair-sizes", type=int, nargs="+", default=[4328, 100_000], help="database cameras")
    g.add_argument("--dense-max", type=int, default=4328,
                   help="largest size the dense baseline runs at (its memory is ~61 n^2 bytes)")
    g.add_argument("--num-pairs", type=int, default=20, help="pairs per image (preprocessing.py --num-pairs)")
    g.add_argument("--max-pair-angle", type=float, default=60.0, help="preprocessing.py --max-pair-angle")
    g = p.add_argument_group("localization")
    g.add_argument("--log", default=None, help="outputs/<name>/localization_log.jsonl to summarise (skipped if absent)")
    g = p.add_argument_group("training")
    g.add_argument("--batch", type=int, default=8, help="training batch (images per step; even, for the teacher's pairs)")
    g.add_argument("--train-sizes", type=int, nargs="+", default=[240, 120], help="image sizes (paper 240, demo 120)")
    g.add_argument("--steps", type=int, default=3, help="timed optimiser steps; the median is reported")
    g.add_argument("--warmup-steps", type=int, default=1, help="untimed optimiser steps first")
    p.add_argument("--case", default=None,
                   help="internal: run this single case in this process and print its result (the parent "
                        "starts one subprocess per case so that each gets its own peak RSS)")
    p.add_argument("--workdir", default=None, help="internal: temporary folder shared by the case subprocesses")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# the parent: one subprocess per case

def spawn(argv: list[str], case: str, work: str, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--case", case, "--workdir", work]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    print(f"[{case}] {time.perf_counter() - t0:.1f} s wall (subprocess)", flush=True)
    if p.returncode != 0:
        raise RuntimeError(f"case {case} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"case {case} printed no result:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "case_wall_s": time.perf_counter() - t0}


def summarise_log(path: Path) -> dict:
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if isinstance(r.get("seconds"), dict)]
    out = {"log": str(path), "queries": len(rows), "succeeded": sum(bool(r.get("success")) for r in rows)}
    if not rows:
        return out
    for key in ("features", "matching", "pnp", "total"):
        v = np.array([sum(r["seconds"].values()) if key == "total" else r["seconds"].get(key, 0.0) for r in rows])
        out[key] = {"median_s": float(np.median(v)), "mean_s": float(v.mean()), "max_s": float(v.max()),
                    "sum_s": float(v.sum())}
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(run_case(args)), flush=True)
        return {}
    argv = list(sys.argv[1:] if argv is None else argv)
    result = {"config": {k: v for k, v in vars(args).items() if k not in ("out", "case", "workdir")},
              "machine": machine_info()}
    md = ["# Pipeline scale benchmarks", "",
          f"Machine: {result['machine']['cpu']} ({result['machine']['cpu_count']} logical CPUs), {args.threads} "
          f"threads; load average at start {result['machine'].get('load_average_1m_5m_15m')}. Each case runs in its "
          f"own subprocess; 'peak above start' is its peak RSS (ru_maxrss) minus the RSS it held just before the "
          f"timed operation (inputs already loaded).", ""]

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmcrossvit-scale-") as work:
        if "db" in args.cases:
            data = spawn(argv, "db-data", work, args.threads)
            build = spawn(argv, "db-build", work, args.threads)
            loop = spawn(argv, "db-loop", work, args.threads)
            speedup_full = loop["seconds_extrapolated"] / build["seconds"]
            speedup_shared = loop["seconds_extrapolated"] / build["shared_counts_seconds"]
            result["spatial_db"] = {"data": data, "vectorised": build, "python_loop": loop,
                                    "speedup_vs_full_build": speedup_full, "speedup_vs_shared_counts": speedup_shared}
            m = build["memory"]
            md += ["## Spatial-contrastive database", "",
                   f"Synthetic incidence: {data['images']:,} images along a path, {data['points']:,} points, "
                   f"{data['observations']:,} observations (track length {args.track[0]}-{args.track[1]}, mean "
                   f"{data['track_length_mean']:.2f}; {data['outlier_points']:,} outlier points); "
                   f"{build['image_pairs_sharing_points']:,} image pairs share points, "
                   f"{build['stats']['positives_per_anchor']['mean']:.1f} positives per anchor on average "
                   f"(min_shared {args.min_shared}).", "",
                   markdown_table(["method", "time (s)", "peak memory", "note"], [
                       ["spatial_db.build (vectorised, full)", f"{build['seconds']:.2f}",
                        f"{m['peak_above_start_mb']:.0f} MB above start ({m['peak_mb']:.0f} MB RSS)"
                        + ("" if m["new_peak"] else ", upper bound"),
                        f"incidence, A@A.T, robust boxes, IoU of positives; inputs {build['input_mb']:.0f} MB"],
                       ["incidence + A@A.T only", f"{build['shared_counts_seconds']:.2f}", "",
                        "the part the Python loop computes"],
                       ["robust_boxes only", f"{build['robust_boxes_seconds']:.2f}", "",
                        "per-image z-score filtering and min/max"],
                       [f"Python per-point pair loop, {loop['points_sampled']:,} points ({100 * args.loop_fraction:g}%)",
                        f"{loop['seconds_sample']:.2f}",
                        f"{loop['dict_traced_peak_mb_sample']:.1f} MB counter dict (tracemalloc, sample)",
                        f"{loop['pair_increments']:,} dict increments"],
                       [f"Python loop extrapolated to {loop['points_total']:,} points", f"{loop['seconds_extrapolated']:.1f}",
                        "", "linear in points (random sample)"]]), "",
                   f"Speed-up of the vectorised build over the Python loop: **{speedup_shared:.1f}x** on shared "
                   f"counts alone, **{speedup_full:.1f}x** counting the whole build (boxes and IoU included, which "
                   f"the loop does not compute). Timed separately, the robust boxes take "
                   f"{build['robust_boxes_seconds']:.2f} s and the shared counts {build['shared_counts_seconds']:.2f} s "
                   f"(separate runs on a shared machine, so they need not add up to the build's time).", ""]

        if "retrieval" in args.cases:
            rows, res = [], []
            for n in args.db_sizes:
                r = spawn(argv, f"retrieval:{n}", work, args.threads)
                res.append(r)
                rows.append([f"{r['queries']:,} x {r['db']:,}", r["dim"], r["k"], f"{r['seconds_median']:.3f}",
                             f"{r['ms_per_query']:.3f}", r["bytes_per_descriptor"], f"{r['db_mb']:.1f}",
                             f"{r['memory']['peak_above_start_mb']:.0f}" + ("" if r["memory"]["new_peak"] else " (upper bound)")])
            result["retrieval"] = res
            md += ["## Retrieval (exact inner-product top-k, mmcrossvit.retrieval.topk, float32)", "",
                   markdown_table(["queries x database", "dim", "k", "time (s, median)", "ms / query",
                                   "bytes / descriptor", "database (MB)", "search peak above start (MB)"], rows), ""]

        if "pairs" in args.cases:
            rows, res = [], []
            for n in args.pair_sizes:
                for method in ("kdtree", "dense") if n <= args.dense_max else ("kdtree",):
                    r = spawn(argv, f"pairs:{n}:{method}", work, args.threads)
                    res.append(r)
                    m = r["memory"]
                    label = "k-d tree (pairs_from_poses)" if method == "kdtree" else "dense n x n (replaced)"
                    peak = f"{m['peak_above_start_mb']:.0f}" + ("" if m["new_peak"] else " (upper bound)")
                    rows.append([f"{n:,}", label, f"{r['seconds']:.2f}", peak, f"{r['pairs']:,}", r["sha256"]])
            result["pairs"] = res
            md += ["## Database pairs from known poses (preprocessing.py --pairs poses)", "",
                   f"Synthetic cameras at the demo's density with random headings; the {args.num_pairs} nearest "
                   f"within {args.max_pair_angle:g}° of each. Equal hashes: the same pairs.", "",
                   markdown_table(["cameras", "method", "time (s)", "peak above start (MB)", "pairs",
                                   "sha256 of the pairs"], rows), ""]

        if "localization" in args.cases:
            path = Path(args.log) if args.log else None
            if path is None or not path.is_file():
                msg = ("no --log given" if path is None else f"{path} not found") + "; localization timing skipped"
                print(msg)
                result["localization"] = {"skipped": msg}
                md += ["## Localization", "", msg + ".", ""]
            else:
                loc = summarise_log(path)
                result["localization"] = loc
                rows = [[k, f"{loc[k]['median_s'] * 1000:.1f}", f"{loc[k]['mean_s'] * 1000:.1f}",
                         f"{loc[k]['max_s'] * 1000:.1f}"] for k in ("features", "matching", "pnp", "total") if k in loc]
                md += ["## Localization (per query, from localize.py's log)", "",
                       f"`{path}`: {loc['queries']} queries, {loc['succeeded']} localized. Times as logged by "
                       f"localize.py on the machine that ran it.", "",
                       markdown_table(["stage", "median (ms)", "mean (ms)", "max (ms)"], rows), ""]

        if "training" in args.cases:
            rows, res = [], []
            for size in args.train_sizes:
                for arch in ("teacher", "student"):
                    r = spawn(argv, f"training:{arch}:{size}", work, args.threads)
                    res.append(r)
                    rows.append([arch, size, r["batch"], f"{r['params_m']:.2f}", f"{r['seconds_per_step_median']:.3f}",
                                 f"{r['samples_per_s']:.2f}", f"{r['memory']['peak_above_start_mb']:.0f}"
                                 + ("" if r["memory"]["new_peak"] else " (upper bound)")])
            result["training"] = res
            md += ["## Training throughput (random tensors, AdamW, forward + backward + step)", "",
                   f"Teacher: build_teacher(img, grid=14) with random spatial tokens, contrastive loss over "
                   f"{args.batch // 2} pairs; student: build_student(img), relaxed contrastive loss against random "
                   f"targets. Warm-up {args.warmup_steps} step(s), median of {args.steps}.", "",
                   markdown_table(["model", "img", "batch", "params (M)", "s / step (median)", "samples/s",
                                   "peak above start (MB)"], rows), ""]

    result["total_wall_s"] = time.perf_counter() - t_start
    md.append(f"Total wall time of this run: {result['total_wall_s']:.0f} s.")
    return finish(args.out, md, result)


if __name__ == "__main__":
    main()
