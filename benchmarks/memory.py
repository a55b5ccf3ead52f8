"""Process memory as the benchmarks measure it (Linux: /proc/self/statm, ru_maxrss in KiB)."""
from __future__ import annotations

import gc
import resource


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2 ** 20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_before() -> dict:
    gc.collect()
    return {"rss_before_mb": rss_mb(), "peak_before_mb": peak_rss_mb()}


def memory_after(before: dict) -> dict:
    peak = peak_rss_mb()
    return {**before, "peak_mb": peak, "peak_above_start_mb": peak - before["rss_before_mb"],
            # False: the operation never exceeded the process's earlier peak, so peak_above_start is an upper bound
            "new_peak": peak > before["peak_before_mb"]}
