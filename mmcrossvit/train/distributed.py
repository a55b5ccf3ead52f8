"""Devices and processes: one code path for a single CPU process and a torchrun DDP job.

`setup()` picks CUDA when there is one (else CPU) and, under torchrun, joins the process group
(nccl on GPU, gloo on CPU). Rank 0 alone writes files and logs. `--batch-size` is the global
batch: each step, rank r takes rows r, r + W, ... of it (train/data.py), so a W-process run sees
the same samples per step as a single process.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as tdist
import torch.nn as nn

from ..device import pick


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1


def setup(device: str = 'auto', threads: Optional[int] = None) -> Dist:
    """Pick the device and, when started by torchrun (WORLD_SIZE > 1), join the process group."""
    cuda = pick(device).type == 'cuda'  # the rule every step shares
    world = int(os.environ.get('WORLD_SIZE', 1))
    rank, local = int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0))
    dev = torch.device('cuda', local) if cuda else torch.device('cpu')
    if cuda:
        torch.cuda.set_device(dev)
    if world > 1:
        tdist.init_process_group(backend='nccl' if cuda else 'gloo', device_id=dev if cuda else None)
    local_world = int(os.environ.get('LOCAL_WORLD_SIZE', world))
    if not cuda and local_world > 1:
        # processes on one CPU share its cores: oversubscription makes every one of them slower
        share = max(1, (os.cpu_count() or 1) // local_world)
        threads = min(threads, share) if threads else share
    if threads:
        torch.set_num_threads(threads)
    return Dist(rank, world, local, dev)


def cleanup(d: Dist) -> None:
    if d.ddp and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.ddp:
        tdist.barrier()


def mean_over_ranks(x: torch.Tensor, d: Dist) -> float:
    """The average of a scalar over the processes (a collective: all ranks must call it). For a
    loss that is a mean over rows, this is the loss of the whole global batch."""
    v = x.detach().float().reshape(1)
    if d.ddp:
        tdist.all_reduce(v)
        v /= d.world
    return float(v)


def gather_rows(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Every rank's rows of `x`, rank 0's first: the same tensor on every rank (a collective).
    With x.requires_grad the gradient flows back to each rank's own rows, summed over the ranks;
    so a loss computed identically on every rank from gathered rows, with DDP averaging the
    parameter gradients, trains exactly as one process would on the whole global batch."""
    if not d.ddp:
        return x
    if x.requires_grad:
        from torch.distributed.nn.functional import all_gather
        return torch.cat(all_gather(x))
    parts = [torch.empty_like(x) for _ in range(d.world)]
    tdist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def wrap_ddp(model: nn.Module, d: Dist) -> nn.Module:
    if not d.ddp:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == 'cuda' else None)


def amp_setup(d: Dist, enabled: bool):
    """(autocast context factory, GradScaler or None): bf16 where supported, else fp16 + scaling."""
    if not enabled or d.device.type != 'cuda':
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler('cuda') if dtype == torch.float16 else None
    return (lambda: torch.autocast('cuda', dtype=dtype)), scaler


def weights_checksum(model: nn.Module) -> str:
    """SHA-256 of every tensor in the state dict: equal on every rank when replicas agree."""
    h = hashlib.sha256()
    for k, v in sorted(unwrap(model).state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
