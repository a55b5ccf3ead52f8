"""The descriptor-matching kernel on a run's own features: the project's `match_descriptors`
with int8 and with float32 products, against the plain float32 kernel it replaced (full column
argmax), same pairs, same answers.

    python benchmarks/matching_kernel.py --features outputs/demo/features.h5 --pairs outputs/demo/pairs-db.txt

All kernels compute the same exact integer dot products (below 2**24, so float32 holds them
exactly), the same normalisation, the same top-2 ratio test and the same mutual check;
`match_descriptors` takes the column argmax only for the rows that pass the ratio test, and its
`auto` kernel multiplies in int8 only on CPUs with VNNI or AMX (the report names the CPU, its
flags and the kernel `auto` picks there). Every pair's matches must be identical; the report gives
milliseconds per pair for each, after one warm-up pair, timed interleaved in rounds.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from report import finish, machine_info, markdown_table, parser  # noqa: E402  (puts the repository on sys.path)

from mmcrossvit.colmap_io import read_pairs  # noqa: E402
from mmcrossvit.features import INT8_FLAGS, FeatureStore, cpu_flags, match_descriptors, resolve_kernel  # noqa: E402


def float32_full_argmax(desc0: np.ndarray, desc1: np.ndarray, ratio: float = 0.8) -> np.ndarray:
    """The kernel before: float32 products and argmax over every column."""
    d0, d1 = torch.from_numpy(np.asarray(desc0)).float(), torch.from_numpy(np.asarray(desc1)).float()
    sim = (d0 @ d1.T) / (d0.square().sum(1).sqrt().clamp_min(1e-12)[:, None]
                         * d1.square().sum(1).sqrt().clamp_min(1e-12)[None, :])
    top = sim.topk(2, dim=1)
    dist = torch.sqrt(torch.clamp(2 - 2 * top.values, min=0))
    ok = (dist[:, 0] < ratio * dist[:, 1]) & (sim.argmax(dim=0)[top.indices[:, 0]] == torch.arange(len(d0)))
    i0 = torch.nonzero(ok).squeeze(1)
    return torch.stack([i0, top.indices[i0, 0]], 1).numpy()


def main() -> dict:
    p = parser(__doc__, "matching_kernel")
    p.add_argument("--features", required=True, help="a run's features.h5")
    p.add_argument("--pairs", required=True, help="a pairs file over images in it (e.g. pairs-db.txt)")
    p.add_argument("--num-pairs", type=int, default=300, help="the first N pairs of the file")
    p.add_argument("--rounds", type=int, default=3, help="timed passes over the pairs, kernels interleaved")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    store = FeatureStore(a.features, max_bytes=1 << 40)
    pairs = read_pairs(a.pairs)[: a.num_pairs]
    descs = [(store[x]["descriptors"], store[y]["descriptors"]) for x, y in pairs]
    kernels = {"float32, full column argmax (before)": float32_full_argmax,
               "match_descriptors, int8 products": lambda a, b: match_descriptors(a, b, kernel="int8"),
               "match_descriptors, float32 products": lambda a, b: match_descriptors(a, b, kernel="float32")}
    auto = resolve_kernel("auto")
    flags = sorted(cpu_flags() & (INT8_FLAGS | {"avx2", "avx512f", "avx512bw"}))
    out, secs = {}, {k: [] for k in kernels}
    for k, f in kernels.items():
        f(*descs[0])  # warm-up
        out[k] = [f(d0, d1) for d0, d1 in descs]
    for _ in range(a.rounds):
        for k, f in kernels.items():
            t = time.perf_counter()
            for d0, d1 in descs:
                f(d0, d1)
            secs[k].append((time.perf_counter() - t) / len(descs) * 1000)
    ref = next(iter(out.values()))
    identical = all(all(np.array_equal(x, y) for x, y in zip(ref, o)) for o in out.values())
    kp = float(np.mean([len(d) for pair in descs for d in pair]))
    ms = {k: float(np.median(v)) for k, v in secs.items()}
    first = next(iter(ms.values()))
    rows = [[k, f"{v:.1f}", f"{first / v:.2f}x"] for k, v in ms.items()]
    md = ["# Descriptor-matching kernel", "",
          f"`python benchmarks/matching_kernel.py --features {a.features} --pairs {a.pairs} --num-pairs {a.num_pairs}`", "",
          f"{len(pairs)} pairs, {kp:.0f} keypoints per image on average, {a.threads} torch threads; the median of "
          f"{a.rounds} interleaved rounds. Matches identical for every pair: **{identical}** "
          f"({sum(len(m) for m in ref)} matches).", "",
          f"CPU: {machine_info().get('cpu', '?')}; flags that matter here: {', '.join(flags) or 'none'}. "
          f"`auto` (what every step uses) picks **{auto} products** on this CPU.", "",
          markdown_table(["kernel", "ms per pair", "speed-up"], rows)]
    result = {"machine": machine_info(), "pairs": len(pairs), "mean_keypoints": kp, "threads": a.threads,
              "ms_per_pair": ms, "rounds": secs, "identical": identical,
              "matches": int(sum(len(m) for m in ref)), "cpu_flags": flags, "auto_kernel": auto}
    if not identical:
        raise SystemExit("the kernels disagree: " + str(result["ms_per_pair"]))
    return finish(a.out, md, result)


if __name__ == "__main__":
    main()
