"""Retrieval at city scale: exact top-k versus approximate faiss indexes (IVF, HNSW).

For each database size, synthetic L2-normalised 1000-d float32 descriptors with a city's
structure (a hierarchical mixture of Gaussians on the sphere: districts > places > images, in a
low-dimensional subspace plus isotropic noise) and 922 queries that are perturbed database
descriptors (another view of a known place). For exact search (mmcrossvit.retrieval.topk) and for
each index (mmcrossvit.retrieval.build_index / search_index) it measures build time, search time
for the queries (median of --runs after a warm-up), ms / query, index memory, and recall@1/@10/@50
of the approximate top-50 against the exact top-50 (|approx top-k & exact top-k| / k, averaged over
queries), over a sweep of nprobe (IVF) and efSearch (HNSW). It also projects what the pairs step
would spend on retrieval: the queries plus every database image's own neighbours (Q + N searches)
plus the build, which is what `--index auto` weighs.

Every size runs in its own subprocess, so the memory of one does not stay with the next.

    python benchmarks/retrieval_index.py                       # 4,328 / 25k / 50k / 100k / 1M
    python benchmarks/retrieval_index.py --sizes 4328 100000   # some sizes
    python benchmarks/retrieval_index.py --quick               # smoke run, seconds
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from memory import memory_after, memory_before, rss_mb
from report import finish, machine_info, markdown_table, parser

RECALL_KS = (1, 10, 50)


def parse_args(argv=None):
    p = parser(__doc__, "retrieval_index")
    p.add_argument("--sizes", type=int, nargs="+", default=[4328, 25_000, 50_000, 100_000, 1_000_000],
                   help="database descriptor counts (Aachen: 4,328)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: sizes 2,000 and 20,000, 200 queries, 1 timed run, a short sweep "
                        "(writes <out>_quick unless --out is given)")
    p.add_argument("--indexes", nargs="+", choices=["ivf", "hnsw"], default=["ivf", "hnsw"],
                   help="approximate indexes to measure (exact always runs: it is the reference)")
    p.add_argument("--hnsw-max-size", type=int, default=200_000,
                   help="skip HNSW above this size: its build (N graph insertions on 2 cores) is the slowest "
                        "part; pass 1000000 to include it at 1M")
    p.add_argument("--queries", type=int, default=922, help="query descriptors (Aachen v1.1: 922)")
    p.add_argument("--dim", type=int, default=1000, help="descriptor dimension (float32)")
    p.add_argument("--k", type=int, default=50, help="neighbours retrieved (recall is measured at 1, 10 and k)")
    p.add_argument("--runs", type=int, default=3, help="timed searches after a warm-up; the median is reported")
    p.add_argument("--nprobes", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="IVF cells scanned per query")
    p.add_argument("--ef-searches", type=int, nargs="+", default=[64, 128, 256], help="HNSW efSearch values")
    p.add_argument("--nlist", type=int, default=None, help="IVF cells (default: mmcrossvit.retrieval.ivf_nlist(N))")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of the IVF k-means")
    g = p.add_argument_group("synthetic descriptors (a city: districts > places > images)")
    g.add_argument("--latent-dim", type=int, default=256, help="dimension of the subspace the structure lives in")
    g.add_argument("--images-per-place", type=int, default=8, help="database images per place, on average")
    g.add_argument("--places-per-district", type=int, default=200, help="places per district, on average")
    g.add_argument("--place-spread", type=float, default=1.5, help="places around their district centre (norm)")
    g.add_argument("--image-spread", type=float, default=0.6, help="images around their place (norm, latent)")
    g.add_argument("--noise", type=float, default=0.4, help="isotropic noise over all dimensions (norm)")
    g.add_argument("--query-spread", type=float, default=0.6, help="query around its database image (norm, latent)")
    p.add_argument("--case", default=None,
                   help="internal: run this one size (or 'blas': faiss's BLAS speed) in this process")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.runs = [2000, 20_000], 200, 1
        args.nprobes, args.ef_searches = [4, 16], [64]
        if args.out == p.get_default("out"):
            args.out += "_quick"
    return args


# ---------------------------------------------------------------------------------------------
# data

def make_descriptors(args, n: int, chunk: int = 32768) -> tuple[np.ndarray, np.ndarray, dict]:
    """(database N x D, queries Q x D), float32, unit norm, generated in chunks (no N x D temporaries)."""
    rng = np.random.default_rng(args.seed)
    d, r = args.dim, args.latent_dim
    basis = np.linalg.qr(rng.standard_normal((d, r)))[0].T.astype(np.float32)  # r orthonormal rows in R^d
    n_places = max(1, -(-n // args.images_per_place))
    n_districts = max(1, -(-n_places // args.places_per_district))
    districts = rng.standard_normal((n_districts, r), dtype=np.float32)
    districts /= np.linalg.norm(districts, axis=1, keepdims=True)
    places = districts[rng.integers(0, n_districts, n_places)]
    places += args.place_spread / np.sqrt(r) * rng.standard_normal((n_places, r), dtype=np.float32)
    places /= np.linalg.norm(places, axis=1, keepdims=True)
    place_of = rng.integers(0, n_places, n)
    db = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        lat = places[place_of[s:e]] + args.image_spread / np.sqrt(r) * rng.standard_normal((e - s, r), dtype=np.float32)
        x = lat @ basis
        x += args.noise / np.sqrt(d) * rng.standard_normal((e - s, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        db[s:e] = x
    src = rng.choice(n, args.queries, replace=False)
    q = db[src] + (args.query_spread / np.sqrt(r) * rng.standard_normal((args.queries, r), dtype=np.float32)) @ basis
    q += args.noise / np.sqrt(d) * rng.standard_normal((args.queries, d), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return db, np.ascontiguousarray(q, dtype=np.float32), {"places": n_places, "districts": n_districts}


def recall(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top-k & exact top-k| / k."""
    return float(np.mean([len(np.intersect1d(a[:k], e[:k], assume_unique=True)) / k for a, e in zip(approx, exact)]))


def timed(fn, runs: int, warmup: bool = True):
    out, times = None, []
    for i in range(runs + int(warmup)):
        t0 = time.perf_counter()
        out = fn()
        if i >= int(warmup):
            times.append(time.perf_counter() - t0)
    return out, statistics.median(times), times


# ---------------------------------------------------------------------------------------------
# one size (its own subprocess)

def run_size(args, n: int) -> dict:
    import torch

    from mmcrossvit import retrieval
    faiss = retrieval.import_faiss()  # through the project: it picks faiss's OpenBLAS kernels first
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    db, q, info = make_descriptors(args, n)
    out = {"db": n, "queries": args.queries, "dim": args.dim, "k": args.k, **info,
           "generate_s": time.perf_counter() - t0, "db_mb": db.nbytes / 2 ** 20}
    # large databases: a search takes seconds to tens of seconds, one run without a warm-up is enough
    runs, warmup = (args.runs, True) if n <= 200_000 else (1, False)
    Q, D = torch.from_numpy(q), torch.from_numpy(db)
    mem = memory_before()
    (e_idx, e_val), t, times = timed(lambda: retrieval.topk(Q, D, args.k), runs, warmup)
    out["exact"] = {"search_s": t, "search_runs_s": times, "ms_per_query": 1000 * t / args.queries,
                    "index_mb": db.nbytes / 2 ** 20, "memory": memory_after(mem),
                    "sim_top1_top10_topk": [float(e_val[:, 0].mean()), float(e_val[:, min(9, args.k - 1)].mean()),
                                            float(e_val[:, -1].mean())]}
    print(f"[{n}] exact {t:.3f} s", flush=True)
    for kind in args.indexes:
        if kind == "hnsw" and n > args.hnsw_max_size:
            out[kind] = {"skipped": f"N > --hnsw-max-size {args.hnsw_max_size}"}
            continue
        mem = memory_before()
        t0 = time.perf_counter()
        ix = retrieval.build_index(db, kind, seed=args.seed, nlist=args.nlist)
        build = time.perf_counter() - t0
        res = {"build_s": build, "index_mb": retrieval.index_bytes(ix) / 2 ** 20, "memory": memory_after(mem),
               "rss_mb": rss_mb(), "sweep": []}
        if kind == "ivf":
            res["nlist"] = int(ix.nlist)
            knobs = [("nprobe", v) for v in args.nprobes if v <= ix.nlist]
        else:
            res["M"] = retrieval.HNSW_M
            res["ef_construction"] = retrieval.HNSW_EF_CONSTRUCTION
            knobs = [("ef_search", v) for v in args.ef_searches]
        print(f"[{n}] {kind} build {build:.1f} s", flush=True)
        for name, v in knobs:
            kw = {name: v}
            (a_idx, _), t, times = timed(lambda: retrieval.search_index(ix, q, args.k, **kw), runs, warmup)
            row = {name: v, "search_s": t, "search_runs_s": times, "ms_per_query": 1000 * t / args.queries,
                   "missing": int((a_idx < 0).sum()),
                   **{f"recall@{k}": recall(a_idx, e_idx, k) for k in RECALL_KS if k <= args.k}}
            res["sweep"].append(row)
            print(f"[{n}] {kind} {name}={v}: {t:.3f} s, recall@{args.k} {row.get(f'recall@{args.k}', 0):.3f}", flush=True)
        out[kind] = res
        del ix
    return out


def run_blas(args) -> dict:
    """faiss's BLAS at k-means assignment (the bulk of an IVF build): 16,384 descriptors against
    1,024 centroids, with the OpenBLAS kernels this process loaded."""
    from mmcrossvit import retrieval
    faiss = retrieval.import_faiss()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((16384, args.dim), dtype=np.float32)
    ix = faiss.IndexFlatIP(args.dim)
    ix.add(rng.standard_normal((1024, args.dim), dtype=np.float32))
    _, t, _ = timed(lambda: ix.search(x, 1), 3)
    return {"openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "seconds": t,
            "gflops": 2 * 16384 * 1024 * args.dim / t / 1e9}


# ---------------------------------------------------------------------------------------------
# the parent

def spawn(argv: list[str], n, threads: int, **env_extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), **env_extra}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--case", str(n)]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    result = None
    for line in p.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
        else:
            print(line, end="", flush=True)
    rc = p.wait()
    print(f"[{n}] {time.perf_counter() - t0:.1f} s wall (subprocess)", flush=True)
    if rc != 0 or result is None:
        raise RuntimeError(f"size {n} failed (exit {rc})")
    return {**result, "case_wall_s": time.perf_counter() - t0}


def pairs_step_s(build_s: float, search_s: float, queries: int, n: int) -> float:
    """Retrieval time of the pairs step: build, then the queries and all N database images as queries."""
    return build_s + search_s * (queries + n) / queries


def secs(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def pick(sweep: list[dict], k: int, target: float = 0.95) -> dict | None:
    """The fastest setting whose recall@k reaches `target`."""
    ok = [r for r in sweep if r.get(f"recall@{k}", 0) >= target]
    return min(ok, key=lambda r: r["search_s"]) if ok else None


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.case is not None:
        out = run_blas(args) if args.case == "blas" else run_size(args, int(args.case))
        print("RESULT " + json.dumps(out), flush=True)
        return {}
    from mmcrossvit import retrieval
    faiss = retrieval.import_faiss()
    argv = [a for a in (sys.argv[1:] if argv is None else argv)]
    result = {"config": {k: v for k, v in vars(args).items() if k not in ("out", "case")},
              "machine": {**machine_info(), "faiss": faiss.__version__,
                          "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")},
              "auto_exact_max_db": retrieval.AUTO_EXACT_MAX_DB, "sizes": []}
    t_start = time.perf_counter()
    # faiss-cpu's bundled OpenBLAS left to detect the CPU (OPENBLAS_CORETYPE empty), and with the
    # kernels import_faiss picked (above, in this process: inherited by the subprocesses)
    result["blas"] = {"openblas_detects": spawn(argv, "blas", args.threads, OPENBLAS_CORETYPE=""),
                      "import_faiss": spawn(argv, "blas", args.threads)}
    for n in args.sizes:
        result["sizes"].append(spawn(argv, n, args.threads))
    result["total_wall_s"] = time.perf_counter() - t_start

    K = args.k
    rc = [k for k in RECALL_KS if k <= K]
    rows, proj = [], []
    for s in result["sizes"]:
        n, nq = s["db"], s["queries"]
        ex = s["exact"]
        rows.append([f"{n:,}", "exact (torch)", "-", "0", f"{ex['search_s']:.3f}", f"{ex['ms_per_query']:.3f}",
                     f"{ex['index_mb']:.0f}", *["1" for _ in rc]])
        proj_row = [f"{n:,}", f"{ex['search_s']:.2f}", secs(pairs_step_s(0, ex["search_s"], nq, n))]
        for kind in ("ivf", "hnsw"):
            r = s.get(kind)
            if r is None:
                continue
            if "skipped" in r:
                rows.append([f"{n:,}", kind, r["skipped"], "", "", "", "", *["" for _ in rc]])
                continue
            name = "ivf" if kind == "ivf" else "hnsw"
            label = f"IVF-Flat nlist {r['nlist']}" if kind == "ivf" else f"HNSW-Flat M {r['M']}"
            for w in r["sweep"]:
                knob = f"nprobe {w['nprobe']}" if kind == "ivf" else f"efSearch {w['ef_search']}"
                rows.append([f"{n:,}", label, knob, f"{r['build_s']:.1f}", f"{w['search_s']:.3f}",
                             f"{w['ms_per_query']:.3f}", f"{r['index_mb']:.0f}",
                             *[f"{w[f'recall@{k}']:.3f}" for k in rc]])
            best = pick(r["sweep"], K)
            proj_row.append("recall@%d < 0.95 in the sweep" % K if best is None else
                            f"{secs(pairs_step_s(r['build_s'], best['search_s'], nq, n))} "
                            f"({'nprobe' if name == 'ivf' else 'efSearch'} "
                            f"{best.get('nprobe', best.get('ef_search'))}, {best['search_s']:.2f} s for the queries)")
        proj.append(proj_row)

    m = result["machine"]
    first = result["sizes"][0]
    b = result["blas"]
    fast = [s["db"] for s in result["sizes"] if s["exact"]["search_s"] < 1.0]
    slow = [s for s in result["sizes"] if s["exact"]["search_s"] >= 1.0]
    wins = [s["db"] for s in result["sizes"] if "ivf" in s and pick(s["ivf"].get("sweep", []), K) is not None
            and pairs_step_s(s["ivf"]["build_s"], pick(s["ivf"]["sweep"], K)["search_s"], s["queries"], s["db"])
            < pairs_step_s(0, s["exact"]["search_s"], s["queries"], s["db"])]
    auto = [f"Exact search of the {args.queries} queries took under 1 s "
            + (f"up to {max(fast):,} database descriptors" if fast else "at no measured size")
            + (f" and {slow[0]['exact']['search_s']:.2f} s at {slow[0]['db']:,}" if slow else "") + "; "
            + (f"for the whole pairs step (queries + database neighbours), IVF at recall@{K} >= 0.95 beat exact "
               f"from {min(wins):,} on." if wins else "IVF did not beat exact on the pairs step at the measured sizes.")]
    md = ["# Retrieval at city scale: exact top-k versus faiss indexes", "",
          f"Machine: {m['cpu']} ({m['cpu_count']} logical CPUs), {args.threads} threads; load average at start "
          f"{m.get('load_average_1m_5m_15m')}; faiss {m['faiss']}, torch {m['torch']}. **Timings on a shared "
          f"machine are noisy**: compare rows of one run, not across runs.", "",
          f"Data: synthetic unit-norm {args.dim}-d float32 descriptors, a city as a hierarchical mixture of "
          f"Gaussians on the sphere (districts of ~{args.places_per_district} places of ~{args.images_per_place} "
          f"images, structure in a {args.latent_dim}-d subspace plus isotropic noise {args.noise}); "
          f"{args.queries} queries are perturbed database descriptors. Mean exact similarity of the query's "
          f"1st / 10th / {K}th neighbour at {first['db']:,}: "
          + " / ".join(f"{v:.2f}" for v in first["exact"]["sim_top1_top10_topk"]) + ". "
          f"Recall@k = |approximate top-k & exact top-k| / k, mean over queries. Search time: median of "
          f"{args.runs} run(s) after a warm-up ({args.queries} queries in one batch; above 200k: one run, no warm-up). "
          f"Memory: what the index holds (exact: the descriptor matrix itself; IVF: vectors, ids, centroids; "
          f"HNSW: vectors and graph).", "",
          markdown_table(["database", "method", "setting", "build (s)", f"search {args.queries} q (s)", "ms / query",
                          "memory (MB)", *[f"recall@{k}" for k in rc]], rows), "",
          "## What the pairs step would spend on retrieval", "",
          f"The pairs step ranks the database for the queries and for every database image (its "
          f"database-to-database neighbours): Q + N searches. Projected from the times above as build + "
          f"search time x (Q + N) / Q, with the fastest setting of each index whose recall@{K} >= 0.95.", "",
          markdown_table(["database", f"exact: {args.queries} queries (s)", "exact: pairs step (s)",
                          *[f"{k}: pairs step (s)" for k in ("ivf", "hnsw") if k in args.indexes]], proj), "",
          "## `--index auto`", "",
          f"`auto` searches exactly up to {retrieval.AUTO_EXACT_MAX_DB:,} database descriptors and builds "
          f"IVF-Flat above (mmcrossvit.retrieval.AUTO_EXACT_MAX_DB; nlist = largest power of two <= 4 sqrt(N), "
          f"the pairs step's --nprobe 16). In this run: " + auto[0] + " Exact while it is fast: below the "
          f"threshold the index would cost more to build than it saves on 922 queries, and exact is exact.", "",
          "## faiss-cpu's OpenBLAS", "",
          f"faiss-cpu {m['faiss']} bundles its own OpenBLAS (0.3.15), which does not recognise recent CPUs and "
          f"falls back to its slowest kernels; k-means and IVF assignment are BLAS. mmcrossvit.retrieval."
          f"import_faiss sets OPENBLAS_CORETYPE from the CPU's flags before loading faiss (here "
          f"{b['import_faiss']['openblas_coretype']}; a value the user set wins). Assignment of 16,384 "
          f"descriptors to 1,024 centroids: {b['openblas_detects']['gflops']:.1f} GFLOP/s as OpenBLAS detects "
          f"the CPU, {b['import_faiss']['gflops']:.1f} GFLOP/s with import_faiss's setting.", "",
          f"Total wall time of this run: {result['total_wall_s']:.0f} s.", ""]
    return finish(args.out, md, result)


if __name__ == "__main__":
    main()
