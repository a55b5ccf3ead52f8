"""The machine's peak as a probe curve: N x N matmuls at several sizes (the best point is the peak),
and the fraction of it that a measured model reaches. Used by benchmarks/throughput.py."""
from __future__ import annotations

import math
import statistics
import time

import torch


def median_seconds(fn, warmup: int, runs: int, sync=lambda: None) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def matmul_gflops(n: int, runs: int, device: str, dtype=torch.float32, sync=lambda: None,
                  min_seconds: float = 0.05) -> dict:
    """One point of the probe curve: the median of `runs` timed N x N matmuls after a warm-up; small
    sizes are repeated within a timed run so that each run lasts at least `min_seconds`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    mm = lambda: torch.mm(a, b, out=c)  # noqa: E731
    _, (once,) = median_seconds(mm, 1, 1, sync)
    reps = max(1, math.ceil(min_seconds / max(once, 1e-9)))
    t, times = median_seconds(lambda: [mm() for _ in range(reps)], 1, runs, sync)
    return {"n": n, "repeats_per_run": reps, "seconds_median": t / reps, "seconds": [s / reps for s in times],
            "gflops_per_s": 2 * n ** 3 / (t / reps) / 1e9}


def matmul_probe(sizes: list[int], runs: int, device: str, dtype=torch.float32, sync=lambda: None,
                 label: str = "") -> dict:
    """The probe curve over `sizes` and its best point, at the current thread count."""
    curve = []
    for n in sizes:
        curve.append(matmul_gflops(n, runs, device, dtype, sync))
        print(f"  {label}{device} {str(dtype).replace('torch.', '')} matmul {n}^3: "
              f"{curve[-1]['gflops_per_s']:.1f} GFLOP/s", flush=True)
    best = max(curve, key=lambda r: r["gflops_per_s"])
    return {"dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads() if device == "cpu" else None,
            "curve": curve, "best_n": best["n"], "gflops_per_s": best["gflops_per_s"]}


def combine_passes(passes: list[dict]) -> dict:
    """The peak over probe passes (before / after the models): the best point of any pass."""
    best = max(passes, key=lambda p: p["gflops_per_s"])
    return {"gflops_per_s": best["gflops_per_s"], "best_n": best["best_n"], "dtype": best["dtype"],
            "passes": passes}


def apply_peak(records: list[dict], probe_gflops: float) -> dict:
    """Fractions of the peak for `records` (each with achieved_gflops_per_s). The peak is the probe;
    if a model beats it, the peak becomes that model's figure and the result says so."""
    best = max((r["achieved_gflops_per_s"] for r in records), default=0.0)
    peak = max(probe_gflops, best)
    for r in records:
        r["fraction_of_matmul_peak"] = r["achieved_gflops_per_s"] / peak
        r["fraction_of_probe"] = r["achieved_gflops_per_s"] / probe_gflops
    return {"probe_gflops_per_s": probe_gflops, "peak_gflops_per_s": peak, "model_exceeded_probe": best > probe_gflops}
