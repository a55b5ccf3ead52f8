"""The teacher's negatives: for each anchor, an allowed image that shares no 3D point with it.

Modes (--negatives): 'hard' samples close (confusable) negatives most, with the distances of
the model at the last refresh; 'authors' favours far (easy) ones, as the authors' code does;
'uniform'. `Miner` keeps the embeddings behind the current weights and when they were taken,
so a resumed run samples from the same distances.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from ..spatial_db import SpatialDB


def negative_weights(dist: Optional[np.ndarray], mask: np.ndarray, mode: str, tau: float = 0.1) -> np.ndarray:
    """Sampling probabilities over candidates (rows: anchors), zero outside `mask`.

    dist: descriptor distances anchor -> candidate from the last refresh (None before the
    first one: uniform). 'hard': softmax(-d / tau) over the anchor's negatives, so close (hard)
    negatives come up most; 'authors': proportional to d / max d, which favours far (easy)
    negatives, as the authors' code does; 'uniform'. Rows without candidates are all zero.
    """
    mask = np.asarray(mask, dtype=bool)
    if mode == 'uniform' or dist is None:
        w = mask.astype(np.float64)
    elif mode == 'hard':
        d = np.where(mask, dist, np.inf)
        dmin = d.min(axis=-1, keepdims=True)
        w = np.where(mask, np.exp(-(d - np.where(np.isfinite(dmin), dmin, 0)) / tau), 0.0)
    elif mode == 'authors':
        d = np.where(mask, dist, 0.0)
        w = d / np.maximum(d.max(axis=-1, keepdims=True), 1e-12)
        # all candidates at distance 0 (a collapsed model): fall back to uniform
        w = np.where((w.sum(axis=-1, keepdims=True) > 0), w, mask.astype(np.float64))
    else:
        raise ValueError(f"unknown negative mining {mode!r}")
    s = w.sum(axis=-1, keepdims=True)
    return np.divide(w, s, out=np.zeros_like(w, dtype=np.float64), where=s > 0)


def sample_negatives(rng: np.random.Generator, anchors: np.ndarray, db: SpatialDB, allowed: np.ndarray,
                     mined: Optional[torch.Tensor], mode: str, tau: float, chunk: int = 1024) -> np.ndarray:
    """One negative per anchor (an allowed image sharing no 3D point with it), -1 where none;
    anchors are processed in chunks so memory stays O(chunk x N)."""
    out = np.full(len(anchors), -1, dtype=np.int64)
    u = rng.random(len(anchors))
    for s in range(0, len(anchors), chunk):
        a = np.asarray(anchors[s:s + chunk])
        mask = allowed[None, :] & (db.shared[a].toarray() == 0)
        mask[np.arange(len(a)), a] = False
        dist = None if mined is None else torch.cdist(mined[a].float(), mined.float()).numpy()
        cum = np.cumsum(negative_weights(dist, mask, mode, tau), axis=1)
        # inverse CDF: the first candidate whose cumulative weight exceeds u (zero-weight ones never do)
        pick = (cum <= u[s:s + chunk, None] * cum[:, -1:]).sum(axis=1)
        ok = cum[:, -1] > 0
        out[s:s + chunk][ok] = np.minimum(pick[ok], len(allowed) - 1)
    return out


class Miner:
    """The database embeddings behind the negative weights, refreshed every `every` epochs
    (never for 'uniform'); saved in the checkpoint's 'extra' as 'mined' and 'mined_epoch'."""

    def __init__(self, mode: str, every: int, tau: float):
        self.mode, self.every, self.tau = mode, every, tau
        self.mined: Optional[torch.Tensor] = None
        self.epoch = -1

    def refresh(self, epoch: int, embeddings: Callable[[], torch.Tensor]) -> None:
        """Before `epoch`: take the current model's embeddings if a refresh is due."""
        if self.mode != 'uniform' and epoch > 0 and epoch % self.every == 0 and self.epoch != epoch:
            self.mined, self.epoch = embeddings(), epoch

    def sample(self, rng: np.random.Generator, anchors: np.ndarray, db: SpatialDB, allowed: np.ndarray) -> np.ndarray:
        return sample_negatives(rng, anchors, db, allowed, self.mined, self.mode, self.tau)

    def state(self) -> dict:
        return {'mined': self.mined, 'mined_epoch': self.epoch}

    def load(self, extra: dict) -> None:
        self.mined, self.epoch = extra.get('mined'), extra.get('mined_epoch', -1)
