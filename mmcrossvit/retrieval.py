"""Global descriptors and nearest-neighbour retrieval.

Descriptors are cached in an HDF5 file, one dataset per image name (hloc's global-descriptor
layout), tagged with a fingerprint of the checkpoint that made them: a new checkpoint
invalidates the cache instead of silently mixing embedding spaces.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from .data import load_resized, to_tensor
from .errors import DataError


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
    with h5py.File(cache, "a") as f:
        f.attrs["fingerprint"] = fingerprint
        todo = [n for n in paths if n not in f]
        for n in paths:
            if n in f:
                out[n] = f[n][()]
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
         chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, in chunks of queries (memory stays chunk x N)."""
    k = min(k, db.shape[0] - int(exclude_self))
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
