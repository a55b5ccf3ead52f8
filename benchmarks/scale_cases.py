"""The cases of benchmarks/scale.py, each run in its own subprocess (`scale.py --case KIND[:ARGS]`)
so that its peak RSS is its own: the spatial database, exact retrieval, pairs from poses and
training steps, on synthetic inputs. `run_case` dispatches on the case's name.
"""
from __future__ import annotations

import gc
import itertools
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
from memory import memory_after, memory_before



def case_db_data(args, work: Path) -> dict:
    """Synthetic Aachen-scale observations: a camera path; each point seen by a run of consecutive images."""
    rng = np.random.default_rng(args.seed)
    N, P = args.images, args.points
    t0 = time.perf_counter()
    heading = np.cumsum(rng.normal(0, 0.05, N))                       # a smoothly turning walk, 1.5 m steps
    cam = np.cumsum(1.5 * np.stack([np.cos(heading), np.sin(heading)], 1), 0)
    L = rng.integers(args.track[0], args.track[1] + 1, P)
    start = rng.integers(0, N - L + 1)
    ends = np.cumsum(L)
    offset = np.arange(ends[-1]) - np.repeat(ends - L, L)               # 0..L-1 within each run
    image_idx = np.repeat(start, L) + offset
    point_idx = np.repeat(np.arange(P), L)
    mid = start + L // 2                                                # seen from the middle of its run
    ang = heading[mid] + rng.uniform(-0.6, 0.6, P)
    depth = rng.uniform(2, 40, P)
    xyz = np.column_stack([cam[mid, 0] + depth * np.cos(ang), cam[mid, 1] + depth * np.sin(ang),
                           rng.uniform(-1, 15, P)])
    far = rng.random(P) < args.outliers
    xyz[far] += rng.normal(0, 200, (far.sum(), 3))
    np.save(work / "image_idx.npy", image_idx, allow_pickle=False)
    np.save(work / "point_idx.npy", point_idx, allow_pickle=False)
    np.save(work / "xyz.npy", xyz, allow_pickle=False)
    return {"images": N, "points": P, "observations": int(len(image_idx)), "track_length_mean": float(L.mean()),
            "outlier_points": int(far.sum()), "seconds": time.perf_counter() - t0}


def load_db_data(work: Path):
    return (np.load(work / "image_idx.npy", allow_pickle=False), np.load(work / "point_idx.npy", allow_pickle=False),
            np.load(work / "xyz.npy", allow_pickle=False))


def case_db_build(args, work: Path) -> dict:
    from mmcrossvit import spatial_db
    image_idx, point_idx, xyz = load_db_data(work)
    names = [f"db/{i:05d}.jpg" for i in range(args.images)]
    mem = memory_before()
    t0 = time.perf_counter()
    db = spatial_db.build(names, image_idx, point_idx, xyz, min_shared=args.min_shared)
    seconds = time.perf_counter() - t0
    mem = memory_after(mem)
    stats = spatial_db.stats(db)
    del db
    gc.collect()
    # the shared-count part alone (what the Python loop computes): incidence + A @ A.T
    t0 = time.perf_counter()
    A = spatial_db.incidence(image_idx, point_idx, args.images, len(xyz))
    S = spatial_db.shared_counts(A)
    shared_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    spatial_db.robust_boxes(A, xyz)
    boxes_seconds = time.perf_counter() - t0
    return {"seconds": seconds, "shared_counts_seconds": shared_seconds,
            "robust_boxes_seconds": boxes_seconds, "memory": mem,
            "input_mb": (image_idx.nbytes + point_idx.nbytes + xyz.nbytes) / 2 ** 20,
            "image_pairs_sharing_points": int(S.nnz), "stats": stats}


def case_db_loop(args, work: Path) -> dict:
    """The direct approach: for each point, for each pair of its observing images, count in a dict."""
    image_idx, point_idx, _ = load_db_data(work)
    P = int(point_idx.max()) + 1
    rng = np.random.default_rng(args.seed + 1)
    n = max(1, int(round(args.loop_fraction * P)))
    sample = np.sort(rng.choice(P, n, replace=False))
    sel = np.isin(point_idx, sample)
    ii, pp = image_idx[sel], point_idx[sel]
    order = np.argsort(pp, kind="stable")
    tracks = [t.tolist() for t in np.split(ii[order], np.flatnonzero(np.diff(pp[order])) + 1)]
    del image_idx, point_idx, sel, ii, pp, order
    mem = memory_before()
    t0 = time.perf_counter()
    counts = {}
    for track in tracks:
        for a, b in itertools.combinations(track, 2):
            key = (a, b) if a < b else (b, a)
            counts[key] = counts.get(key, 0) + 1
    seconds = time.perf_counter() - t0
    mem = memory_after(mem)
    del counts
    # the counter's own memory: a second, untimed pass under tracemalloc (which would slow the timed one)
    tracemalloc.start()
    counts = {}
    for track in tracks:
        for a, b in itertools.combinations(track, 2):
            key = (a, b) if a < b else (b, a)
            counts[key] = counts.get(key, 0) + 1
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"points_sampled": n, "points_total": P, "pair_increments": int(sum(len(t) * (len(t) - 1) // 2 for t in tracks)),
            "seconds_sample": seconds, "seconds_extrapolated": seconds * P / n, "dict_entries_sample": len(counts),
            "dict_traced_peak_mb_sample": traced_peak / 2 ** 20, "memory_sample": mem}


def case_retrieval(args, n_db: int) -> dict:
    import torch

    from mmcrossvit.retrieval import topk
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    q = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=g), dim=1)
    db = torch.empty(n_db, args.dim)
    for s in range(0, n_db, 8192):  # in chunks: no transient copy of the whole database
        db[s:s + 8192] = torch.nn.functional.normalize(torch.randn(min(8192, n_db - s), args.dim, generator=g), dim=1)
    mem = memory_before()
    times = []
    for _ in range(args.runs + 1):                                      # the first one is a warm-up
        t0 = time.perf_counter()
        idx, _ = topk(q, db, args.k)
        times.append(time.perf_counter() - t0)
    mem = memory_after(mem)
    t = statistics.median(times[1:])
    return {"queries": args.queries, "db": n_db, "dim": args.dim, "k": idx.shape[1], "seconds_median": t,
            "seconds": times[1:], "ms_per_query": 1000 * t / args.queries,
            "bytes_per_descriptor": db.element_size() * db.shape[1], "db_mb": db.element_size() * db.nelement() / 2 ** 20,
            "memory": mem}


def synthetic_cameras(n: int, seed: int) -> dict:
    """n cameras at the demo's density (about 30 m of street per 10 images), random headings."""
    from mmcrossvit.geometry import Pose
    rng = np.random.default_rng(seed)
    side = 30.0 * np.sqrt(n / 10)
    out = {}
    for i in range(n):
        c = np.array([*rng.uniform(0, side, 2), rng.uniform(1.4, 1.8)])
        yaw = rng.uniform(0, 2 * np.pi)
        z = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        x = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
        R = np.stack([x, np.cross(z, x), z])
        out[f"db/{i:06d}.jpg"] = Pose(R, -R @ c)
    return out


def dense_pairs(poses: dict, num: int, max_angle: float) -> list:
    """The replaced method: the whole n x n distance matrix, masked by angle, argsorted."""
    names = sorted(poses)
    C = np.stack([poses[n].center for n in names])
    D = np.stack([poses[n].viewing_direction for n in names])
    dist = np.linalg.norm(C[:, None] - C[None], axis=-1)
    dist[np.clip(D @ D.T, -1, 1) < np.cos(np.radians(max_angle))] = np.inf
    np.fill_diagonal(dist, np.inf)
    idx = np.argsort(dist, axis=1, kind="stable")[:, :min(num, len(names) - 1)]
    return sorted({(names[min(i, j)], names[max(i, j)]) for i, row in enumerate(idx) for j in row
                   if np.isfinite(dist[i, j])})


def case_pairs(args, n: int, method: str) -> dict:
    from mmcrossvit.sfm import pairs_from_poses
    poses = synthetic_cameras(n, args.seed)
    mem = memory_before()
    t0 = time.perf_counter()
    fn = pairs_from_poses if method == "kdtree" else dense_pairs
    pairs = fn(poses, args.num_pairs, args.max_pair_angle)
    t = time.perf_counter() - t0
    mem = memory_after(mem)
    import hashlib
    digest = hashlib.sha256("\n".join(f"{a} {b}" for a, b in pairs).encode()).hexdigest()[:16]
    return {"cameras": n, "method": method, "seconds": t, "pairs": len(pairs), "sha256": digest, "memory": mem}


def case_training(args, arch: str, size: int) -> dict:
    import torch

    from mmcrossvit.losses import contrastive_loss, relaxed_contrastive_loss
    from models.build import build_student, build_teacher
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    B = args.batch
    x = torch.randn(B, 3, size, size)
    if arch == "teacher":
        model = build_teacher(size, grid=14)
        tokens = torch.randn(B, 1 + 14 * 14, model.token_embed.token_dim)
        valid = torch.rand(B, 14 * 14) > 0.2
        y = torch.rand(B // 2)

        def loss_fn():
            emb = model(x, tokens, valid)
            return contrastive_loss(emb[:B // 2], emb[B // 2:], y)
    else:
        model = build_student(size)
        target = torch.nn.functional.normalize(torch.randn(B, 1000), dim=1)

        def loss_fn():
            return relaxed_contrastive_loss(model(x), target)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mem = memory_before()
    times = []
    for _ in range(args.warmup_steps + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    mem = memory_after(mem)
    t = statistics.median(times[args.warmup_steps:])
    return {"arch": arch, "img_size": size, "batch": B, "seconds_per_step_median": t,
            "seconds_per_step": times[args.warmup_steps:], "samples_per_s": B / t,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "memory": mem}


def run_case(args) -> dict:
    work = Path(args.workdir) if args.workdir else None
    kind, *rest = args.case.split(":")
    if kind == "db-data":
        return case_db_data(args, work)
    if kind == "db-build":
        return case_db_build(args, work)
    if kind == "db-loop":
        return case_db_loop(args, work)
    if kind == "retrieval":
        return case_retrieval(args, int(rest[0]))
    if kind == "pairs":
        return case_pairs(args, int(rest[0]), rest[1])
    if kind == "training":
        return case_training(args, rest[0], int(rest[1]))
    raise ValueError(f"unknown case {args.case!r}")
