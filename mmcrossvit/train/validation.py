"""Validation: Recall@K and P@K (K = 1, 5, 10) of held-out anchors.

The anchors are fold --val-fold of the spatial DB's k-fold split, retrieving among all other
database images; a hit is a positive of the anchor (an image sharing >= min_shared 3D points).
Also with night-simulated anchors (metrics prefixed 'night_'). The best model is the one with
the highest Recall@1, ties broken by Recall@5.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn as nn

from ..evaluation import retrieval_metrics
from ..spatial_db import SpatialDB
from .distributed import Dist

KS = (1, 5, 10)


@torch.no_grad()
def embed_all(model: nn.Module, fn: Callable, n: int, dim: int, batch: int, d: Dist, autocast=contextlib.nullcontext,
              desc: str = "embedding", progress: bool = True) -> torch.Tensor:
    """(n, dim) float32 CPU embeddings fn(model, idx) of items 0..n-1 in eval mode; ranks split
    the items (rank r takes r, r + W, ...) and exchange results."""
    from tqdm import tqdm
    was = model.training
    model.eval()
    mine = np.arange(d.rank, n, d.world)
    parts = [torch.zeros(0, dim, device=d.device)]
    for s in tqdm(range(0, len(mine), batch), desc=desc, unit="batch", leave=False, disable=not (progress and d.main)):
        with autocast():
            parts.append(fn(model, mine[s:s + batch]).float())
    local = torch.cat(parts)
    model.train(was)
    if not d.ddp:
        return local.cpu()
    m = -(-n // d.world)
    padded = torch.zeros(m, dim, device=d.device)
    padded[:len(local)] = local
    gathered = [torch.zeros_like(padded) for _ in range(d.world)]
    tdist.all_gather(gathered, padded)
    out = torch.zeros(n, dim)
    for r, g in enumerate(gathered):
        out[r::d.world] = g[:len(range(r, n, d.world))].cpu()
    return out


def retrieval(gallery: torch.Tensor, anchors: np.ndarray, db: SpatialDB, queries: Optional[torch.Tensor] = None,
              ks=KS) -> dict:
    """R@K / P@K of each anchor (its own gallery row, or `queries`) among the other images."""
    sel = np.array([j for j, a in enumerate(anchors) if len(db.positives(int(a))[0])], dtype=np.int64)
    if not len(sel):
        return {'anchors': 0, 'P': {k: float('nan') for k in ks}, 'R': {k: float('nan') for k in ks}}
    keep = np.asarray(anchors, dtype=np.int64)[sel]
    q = gallery[keep] if queries is None else queries[sel]  # queries: one row per anchor, in order
    dist = torch.cdist(q.float(), gallery.float())
    dist[torch.arange(len(keep)), torch.from_numpy(keep)] = float('inf')  # an anchor never retrieves itself
    kmax = min(max(ks), gallery.shape[0] - 1)
    ranked = dist.topk(kmax, dim=1, largest=False).indices.numpy()
    positives = [set(db.positives(int(a))[0].tolist()) for a in keep]
    return retrieval_metrics(ranked, positives, [k for k in ks if k <= kmax])


def validate(raw: nn.Module, gallery: torch.Tensor, embed: Callable, val_idx: np.ndarray, db: SpatialDB,
             cfg, d: Dist, autocast, completed: int) -> dict:
    """Held-out anchors' R@K / P@K among the gallery, clean and night-simulated (prefix 'night_')."""
    night = embed_all(raw, lambda m, j: embed(m, val_idx[j], night_seed=cfg.seed), len(val_idx),
                      cfg.embed_dim, cfg.eval_batch_size, d, autocast, "embedding night anchors")
    return {**flat_metrics('', retrieval(gallery, val_idx, db)),
            **flat_metrics('night_', retrieval(gallery, val_idx, db, queries=night)), 'epoch': completed}


def flat_metrics(prefix: str, m: dict) -> dict:
    out = {f"{prefix}R@{k}": v for k, v in m['R'].items()}
    out.update({f"{prefix}P@{k}": v for k, v in m['P'].items()})
    return out


def is_better(metrics: dict, best: Optional[dict]) -> bool:
    """Recall@1, ties broken by Recall@5 (nan, e.g. no anchor with positives, counts as lowest)."""
    def key(m):
        return tuple(-math.inf if m.get(k) is None or math.isnan(m[k]) else m[k] for k in ('R@1', 'R@5'))
    return best is None or key(metrics) > key(best)


def describe(metrics: dict) -> str:
    return " ".join(f"{k}={metrics[k]:.3f}" for k in ('R@1', 'R@5', 'R@10', 'night_R@1') if k in metrics)
