"""Global descriptors and nearest-neighbour retrieval.

Descriptors are cached in an HDF5 file, one dataset per image name (hloc's global-descriptor
layout), tagged with a fingerprint of the checkpoint that made them: a new checkpoint
invalidates the cache instead of silently mixing embedding spaces.

Ranking is exact (`topk`: every query against every database descriptor) up to
AUTO_EXACT_MAX_DB database descriptors; `search(..., index="auto")` switches to an approximate
faiss index above that (benchmarks/retrieval_index.py measures both, with recall against exact):

    exact  torch matmul + top-k; memory stays chunk x N
    ivf    faiss IndexIVFFlat, inner product: spherical k-means cells (seeded: deterministic),
           uncompressed vectors, `nprobe` cells scanned per query
    hnsw   faiss IndexHNSWFlat, inner product: graph search, `ef_search` candidates per query
           (faiss builds the graph with several threads: identical across runs only on one thread)
    auto   exact up to AUTO_EXACT_MAX_DB database descriptors, ivf above

faiss is imported only when an index needs it (pip install faiss-cpu).
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from .data import load_resized, to_tensor
from .errors import DataError
from .storage import h5_file


def file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@torch.no_grad()
def compute_descriptors(model: torch.nn.Module, paths: dict[str, Path], size: int, cache: Path,
                        fingerprint: str, batch_size: int = 16, device: str = "cpu") -> dict[str, np.ndarray]:
    """{name: descriptor} for every image in `paths`, computing only what the cache lacks."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.exists():
        try:
            with h5py.File(cache, "r") as f:
                stale = f.attrs.get("fingerprint", "") != fingerprint
        except OSError:
            stale = True  # unreadable: an interrupted write
        if stale:
            cache.unlink()
    out: dict[str, np.ndarray] = {}
    if cache.exists():
        with h5py.File(cache, "r") as f:
            out = {n: f[n][()] for n in paths if n in f}
    todo = [n for n in paths if n not in out]
    if not todo:
        return out  # all cached: nothing written
    with h5_file(cache) as f:  # not h5py's own driver: a full disk must not crash the process
        f.attrs["fingerprint"] = fingerprint
        for i in tqdm(range(0, len(todo), batch_size), desc="descriptors", unit="batch", disable=not todo):
            names = todo[i:i + batch_size]
            x = torch.stack([to_tensor(load_resized(paths[n], size)) for n in names]).to(device)
            d = model(x).float().cpu().numpy()
            for n, v in zip(names, d):
                f.create_dataset(n, data=v)
                out[n] = v
            f.flush()
    return out


def stack(desc: dict[str, np.ndarray], names: list[str]) -> torch.Tensor:
    missing = [n for n in names if n not in desc]
    if missing:
        raise DataError(None, f"no descriptor for {len(missing)} images, e.g. {missing[0]!r}")
    return torch.from_numpy(np.stack([desc[n] for n in names]).astype(np.float32))


def topk(query: torch.Tensor, db: torch.Tensor, k: int, exclude_self: bool = False,
         chunk: int = 4096, max_elements: int = 1 << 28) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, in chunks of queries: the similarity block stays under
    `max_elements` floats (1 GiB), so chunks shrink only above 65,536 database descriptors."""
    k = min(k, db.shape[0] - int(exclude_self))
    chunk = max(1, min(chunk, max_elements // max(1, db.shape[0])))
    idx, val = [], []
    for s in range(0, query.shape[0], chunk):
        sim = query[s:s + chunk] @ db.T
        if exclude_self:
            r = torch.arange(sim.shape[0])
            sim[r, r + s] = -torch.inf
        v, i = sim.topk(k, dim=1)
        idx.append(i.numpy())
        val.append(v.numpy())
    return np.concatenate(idx), np.concatenate(val)


# ---------------------------------------------------------------------------------------------
# approximate indexes (faiss) for city-scale databases

INDEXES = ("auto", "exact", "ivf", "hnsw")
# `auto` searches exactly up to this many database descriptors and builds an IVF index above:
# benchmarks/results/retrieval_index.md (922 queries, 1000-d)
AUTO_EXACT_MAX_DB = 50_000
AUTO_APPROXIMATE = "ivf"
DEFAULT_NPROBE = 16      # IVF cells scanned per query
DEFAULT_EF_SEARCH = 128  # HNSW candidate list per query (at least k)
HNSW_M = 32              # HNSW graph degree
HNSW_EF_CONSTRUCTION = 80
IVF_TRAIN_PER_LIST = 64  # k-means training descriptors per cell (faiss asks for at least 39)
IVF_KMEANS_ITERATIONS = 10


class MissingFaiss(ImportError):
    """An approximate index was asked for and faiss is not installed."""


def _openblas_coretype() -> str | None:
    """The OpenBLAS kernel family this CPU runs, for faiss-cpu's bundled OpenBLAS (0.3.15), which
    does not recognise recent CPUs and falls back to its slowest (Prescott) kernels: k-means and
    IVF assignment ran 4.5x slower here (benchmarks/results/retrieval_index.md). None: leave it."""
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("flags")), [])
    except OSError:
        return None
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= set(flags):
        return "SkylakeX"
    if {"avx2", "fma"} <= set(flags):
        return "Haswell"
    return None


def import_faiss():
    """faiss, imported on first use: exact search never needs it."""
    if "faiss" not in sys.modules and "OPENBLAS_CORETYPE" not in os.environ:
        core = _openblas_coretype()  # read once, when faiss loads its OpenBLAS; a user's setting wins
        if core:
            os.environ["OPENBLAS_CORETYPE"] = core
    try:
        import faiss
    except ImportError as e:
        raise MissingFaiss("approximate retrieval indexes (ivf, hnsw; auto above "
                           f"{AUTO_EXACT_MAX_DB:,} database images) need faiss: pip install faiss-cpu "
                           "(pinned in requirements.txt), or use --index exact") from e
    return faiss


def resolve_index(index: str, n_db: int) -> str:
    """The index `search` uses for `n_db` database descriptors: `auto` resolved by size."""
    if index not in INDEXES:
        raise ValueError(f"unknown index {index!r}; choose from {', '.join(INDEXES)}")
    if index == "auto":
        return "exact" if n_db <= AUTO_EXACT_MAX_DB else AUTO_APPROXIMATE
    return index


def ivf_nlist(n_db: int) -> int:
    """IVF cells for `n_db` descriptors: the largest power of two up to 4 sqrt(N) (512 at 50k,
    1,024 at 100k, 2,048 at 1M), with at least IVF_TRAIN_PER_LIST descriptors per cell for k-means."""
    nlist = 1 << int(np.floor(np.log2(4.0 * np.sqrt(max(1, n_db)))))
    return int(max(1, min(nlist, n_db // IVF_TRAIN_PER_LIST)))


def _as_float32(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def build_index(db, index: str, seed: int = 0, nlist: int | None = None, hnsw_m: int = HNSW_M,
                ef_construction: int = HNSW_EF_CONSTRUCTION):
    """A faiss inner-product index over `db` (N x D): "ivf" (k-means on a seeded sample of
    nlist x IVF_TRAIN_PER_LIST descriptors, deterministic) or "hnsw"."""
    faiss = import_faiss()
    x = _as_float32(db)
    n, d = x.shape
    if index == "ivf":
        nlist = nlist or ivf_nlist(n)
        ix = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ix.cp.seed = seed
        ix.cp.spherical = True  # unit-norm centroids: cells by cosine, like the descriptors
        ix.cp.niter = IVF_KMEANS_ITERATIONS
        ix.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST
        m = min(n, nlist * IVF_TRAIN_PER_LIST)
        sample = np.sort(np.random.default_rng(seed).choice(n, m, replace=False)) if m < n else slice(None)
        ix.train(x[sample])
        ix.add(x)
        return ix
    if index == "hnsw":
        ix = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        ix.hnsw.efConstruction = ef_construction
        ix.add(x)
        return ix
    raise ValueError(f"no faiss index for {index!r}; choose ivf or hnsw")


def index_bytes(ix) -> int:
    """Memory an index holds (vectors, ids, centroids, graph), from its own sizes."""
    faiss = import_faiss()
    ix = faiss.downcast_index(ix)
    if isinstance(ix, faiss.IndexIVF):
        return int(ix.ntotal * (ix.code_size + 8) + ix.nlist * ix.d * 4)
    if isinstance(ix, faiss.IndexHNSW):
        h = ix.hnsw
        return int(ix.ntotal * ix.d * 4 + h.neighbors.size() * 4 + h.levels.size() * 4
                   + h.offsets.size() * 8 + h.assign_probas.size() * 8 + h.cum_nneighbor_per_level.size() * 4)
    return int(ix.ntotal * ix.d * 4)


def search_index(ix, query, k: int, nprobe: int = DEFAULT_NPROBE,
                 ef_search: int = DEFAULT_EF_SEARCH) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (ids, inner products) from a faiss index; id -1 where it found fewer than k."""
    faiss = import_faiss()
    ix = faiss.downcast_index(ix)
    if isinstance(ix, faiss.IndexIVF):
        ix.nprobe = min(nprobe, ix.nlist)
    elif isinstance(ix, faiss.IndexHNSW):
        ix.hnsw.efSearch = max(ef_search, k)
    val, idx = ix.search(_as_float32(query), k)
    return idx, val


def search(query, db, k: int, index: str = "auto", exclude_self: bool = False, seed: int = 0,
           nprobe: int = DEFAULT_NPROBE, ef_search: int = DEFAULT_EF_SEARCH,
           built=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k database rows by inner product for each query, exact or from an index (see the
    module's docstring): (indices, scores), each Q x k, best first.

    `exclude_self`: the queries are the database itself, row i never returns i. `built`: an index
    of `db` already built by build_index (reused, e.g. for queries and then database neighbours).
    A query for which an approximate index finds fewer than k candidates is searched exactly,
    so every row has k results."""
    n = db.shape[0]
    if built is None:
        kind = resolve_index(index, n)
        if kind == "exact":
            return topk(_as_tensor(query), _as_tensor(db), k, exclude_self)
        built = build_index(db, kind, seed)
    k = min(k, n - int(exclude_self))
    idx, val = search_index(built, query, min(n, k + int(exclude_self)), nprobe, ef_search)
    if exclude_self:
        idx, val = _drop_self(idx, val, k)
    short = np.flatnonzero((idx < 0).any(axis=1))
    if len(short):  # too few candidates in the probed cells / visited graph: exact for these rows
        idx[short], val[short] = _exact_rows(query, db, short, k, exclude_self)
    return idx, val


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(_as_float32(x))


def _exact_rows(query, db, rows: np.ndarray, k: int, exclude_self: bool,
                max_elements: int = 1 << 28) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of the queries `rows` (row i of the database itself when `exclude_self`)."""
    q, d = _as_tensor(query), _as_tensor(db)
    chunk = max(1, max_elements // max(1, d.shape[0]))
    idx, val = [], []
    for s in range(0, len(rows), chunk):
        r = torch.from_numpy(np.asarray(rows[s:s + chunk], dtype=np.int64))
        sim = q[r] @ d.T
        if exclude_self:
            sim[torch.arange(len(r)), r] = -torch.inf
        v, i = sim.topk(k, dim=1)
        idx.append(i.numpy())
        val.append(v.numpy())
    return np.concatenate(idx), np.concatenate(val)


def _drop_self(idx: np.ndarray, val: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows i of a (k+1)-deep ranking of the database against itself, without i."""
    rows = np.arange(idx.shape[0])[:, None]
    keep = idx != rows
    # where i was not retrieved, drop the last candidate instead
    keep[~(~keep).any(axis=1), -1] = False
    keep &= np.cumsum(keep, axis=1) <= k
    return idx[keep].reshape(-1, k), val[keep].reshape(-1, k)
