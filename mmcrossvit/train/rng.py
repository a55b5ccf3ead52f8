"""Randomness that does not depend on the number of processes, loader workers or restarts.

Every random choice of the data (the epoch's plan, each sample's augmentation, the night
simulation of validation images) comes from a numpy Generator derived from (seed, purpose,
epoch, sample), never from shared state: a resumed run redraws exactly what the uninterrupted
run drew. The global states (python, numpy, torch, CUDA) are still captured in each checkpoint
per rank and restored, for anything that uses them (e.g. drop-path, the DataLoader's seed).
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch
import torch.distributed as tdist

from .distributed import Dist


def derive_rng(seed: int, *keys) -> np.random.Generator:
    """A Generator that depends only on (seed, keys): strings are hashed, ints taken as they are."""
    words = [seed]
    for k in keys:
        words.append(int.from_bytes(hashlib.sha256(k.encode()).digest()[:4], 'little') if isinstance(k, str) else int(k))
    return np.random.default_rng(words)


def seed_all(seed: int, rank: int = 0) -> None:
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2 ** 32)
    torch.manual_seed(seed + rank)


def capture_rng() -> dict:
    """This process's global RNG states as tensors and plain types (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {'python': random.getstate(),
            'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                      'has_gauss': int(has_gauss), 'cached': float(cached)},
            'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict) -> None:
    v, internal, g = state['python']
    random.setstate((v, tuple(internal), g))
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['cached']))
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


def gather_rng(d: Dist) -> list:
    """Every rank's RNG states (a collective: all ranks must call it)."""
    mine = capture_rng()
    if not d.ddp:
        return [mine]
    out = [None] * d.world
    tdist.all_gather_object(out, mine)
    return out
