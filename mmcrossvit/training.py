"""What the teacher and student training scripts share, written once.

* devices and torchrun: `setup()` picks CUDA when there is one (else CPU) and, under torchrun,
  joins the process group (nccl on GPU, gloo on CPU). Rank 0 alone writes files and logs.
  `--batch-size` is the global batch: each step, rank r takes rows r, r + W, ... of it, so a
  W-process run sees the same samples per step as a single process.
* randomness: every random choice of the data (the epoch's plan, each sample's augmentation,
  the night simulation of validation images) comes from a numpy Generator derived from
  (seed, purpose, epoch, sample), never from shared state. A run is therefore the same whatever
  the number of processes or loader workers, and a resumed run redraws exactly what the
  uninterrupted run drew. The global states (python, numpy, torch, CUDA) are still captured in
  each checkpoint per rank and restored, for anything that uses them (e.g. drop-path).
* checkpoints (`last.pt`, `best.pt`, written atomically, readable with weights_only=True: only
  tensors and plain Python types):
      format     'mmcrossvit-train-1'
      kind       'teacher' | 'image_only' | 'student'
      config     model.config (arch, img_size, embed_dim, ...): `models.crossvit.load_model`
                 rebuilds the model from it
      model      state dict (float32, no 'module.' prefix)
      optimizer, scaler (None unless fp16 AMP), schedule (dict), epoch (completed), step
      best       {'epoch', 'R@1', 'R@5', ...} or None; metrics (last validation)
      rng        per-rank global RNG states; args (plain dict); extra (script state, e.g. the
                 embeddings behind the current hard negatives)
  Resuming into a model of another config (embedding size, image size, grid, ...) is refused
  with a message that names the differing fields.
* images: database images are resized once into a uint8 array (cached on disk under
  outputs/<name>/cache/, keyed by names, size and file stamps), so an epoch costs only the
  network; `ImageCache.view` applies the augmentations (night / CycleGAN, colour jitter, flip).
* validation: Recall@K and P@K (K = 1, 5, 10) of held-out anchors (fold --val-fold of the
  spatial DB's k-fold split) retrieving among all other database images; a hit is a positive of
  the anchor (an image sharing >= min_shared 3D points). Also with night-simulated anchors.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn as nn

from .data import color_jitter, cyclegan_path, hflip, load_resized, night_simulation, to_tensor
from .errors import DataError
from .evaluation import retrieval_metrics
from .spatial_db import SpatialDB
from .storage import atomic_path, is_complete, read_json, write_json

FORMAT = 'mmcrossvit-train-1'
KS = (1, 5, 10)


# ---------------------------------------------------------------------------------------------
# command line: flags both scripts take; each script adds its own and its presets

def add_common_args(p: argparse.ArgumentParser, presets: dict) -> None:
    """Flags defaulting to None take their value from --preset (see the script's PRESETS)."""
    P = "(default: from --preset)"
    g = p.add_argument_group("run")
    g.add_argument("--dataset", type=Path, required=True, help="dataset folder (images/images_upright/...)")
    g.add_argument("--name", help="run name: outputs/<name>, DataBase/<name> (default: dataset folder name)")
    g.add_argument("--outputs", type=Path, default=Path("outputs"), help="root of per-run outputs")
    g.add_argument("--database-root", type=Path, default=Path("DataBase"), help="root of the spatial databases")
    g.add_argument("--out", type=Path, help="checkpoint / log folder (default: outputs/<name>/<kind>)")
    g.add_argument("--preset", choices=sorted(presets), default="paper",
                   help="hyper-parameter set; explicit flags override it (default: paper)")
    g.add_argument("--resume", action="store_true", help="continue from <out>/last.pt (starts fresh if there is none)")
    g.add_argument("--overwrite", action="store_true", help="start over, deleting <out>'s checkpoints and logs")
    g.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many epochs in this invocation; --resume continues")
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: cores / local processes)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: load in the main process)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision on CUDA (bf16, or fp16 with loss scaling); ignored on CPU")
    g = p.add_argument_group("model")
    g.add_argument("--img-size", type=int, default=None, help=f"square input size in pixels {P}")
    g.add_argument("--embed-dim", type=int, default=None, help=f"descriptor size {P}")
    g.add_argument("--init-from", type=Path, default=None,
                   help="initialise from a local checkpoint (tensors matching by name and shape)")
    g.add_argument("--pretrained", action="store_true",
                   help="initialise from timm's ImageNet crossvit_tiny_240 weights (needs internet or an HF cache)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help=f"training epochs {P}")
    g.add_argument("--batch-size", type=int, default=None, help=f"global batch size, split over processes {P}")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default=None, help=f"optimiser {P}")
    g.add_argument("--lr", type=float, default=None, help=f"peak learning rate {P}")
    g.add_argument("--momentum", type=float, default=None, help=f"SGD momentum {P}")
    g.add_argument("--weight-decay", type=float, default=None, help=f"decoupled weight decay (not on norms, biases, tokens) {P}")
    g.add_argument("--schedule", choices=["constant", "cosine"], default=None, help=f"learning-rate schedule after warm-up {P}")
    g.add_argument("--warmup-epochs", type=float, default=None, help=f"linear warm-up length in epochs {P}")
    g.add_argument("--min-lr-ratio", type=float, default=None, help=f"cosine floor as a fraction of --lr {P}")
    g.add_argument("--grad-clip", type=float, default=None, help=f"clip the gradient norm to this (0: off) {P}")
    g = p.add_argument_group("augmentation")
    g.add_argument("--night-prob", type=float, default=None,
                   help=f"probability that an image is made night (its _cyclegan file if any, else simulated) {P}")
    g.add_argument("--hflip", type=float, default=None, help=f"horizontal flip probability (tokens flipped too) {P}")
    g.add_argument("--jitter", type=float, default=None, help=f"colour-jitter strength (photometric only; 0: off) {P}")
    g = p.add_argument_group("validation")
    g.add_argument("--val-fold", type=int, default=0,
                   help="fold of the spatial DB held out as validation anchors (-1: none held out, validate on all)")
    g.add_argument("--val-every", type=int, default=None, help=f"validate every N epochs (0: only at the end) {P}")
    g.add_argument("--eval-batch-size", type=int, default=64, help="batch size when embedding the database")


def preset_epilog(presets: dict) -> str:
    keys = sorted({k for v in presets.values() for k in v})
    rows = [f"  {k:<16}" + "".join(f"{str(presets[p].get(k, '-')):>12}" for p in presets) for k in keys]
    return "presets:\n  " + " " * 16 + "".join(f"{p:>12}" for p in presets) + "\n" + "\n".join(rows)


def apply_preset(args: argparse.Namespace, presets: dict) -> argparse.Namespace:
    """Fill every flag left at None from the chosen preset."""
    for k, v in presets[args.preset].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    missing = [k for k, v in vars(args).items() if v is None and k in {k for p in presets.values() for k in p}]
    if missing:
        raise ValueError(f"preset {args.preset!r} sets no value for {missing}")
    if args.name is None:
        args.name = Path(args.dataset).resolve().name
    return args


def plain(obj):
    """Args / metrics as JSON- and weights_only-safe builtins."""
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# ---------------------------------------------------------------------------------------------
# devices and processes

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
    cuda = torch.cuda.is_available() if device == 'auto' else device == 'cuda'
    if cuda and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    world = int(os.environ.get('WORLD_SIZE', 1))
    rank, local = int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0))
    dev = torch.device('cuda', local) if cuda else torch.device('cpu')
    if cuda:
        torch.cuda.set_device(dev)
    if world > 1:
        tdist.init_process_group(backend='nccl' if cuda else 'gloo', device_id=dev if cuda else None)
    local_world = int(os.environ.get('LOCAL_WORLD_SIZE', world))
    if threads or (not cuda and local_world > 1):
        # processes on one CPU share its cores: oversubscription makes every one of them slower
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_world))
    return Dist(rank, world, local, dev)


def cleanup(d: Dist) -> None:
    if d.ddp and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.ddp:
        tdist.barrier()


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


# ---------------------------------------------------------------------------------------------
# randomness

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


# ---------------------------------------------------------------------------------------------
# optimisation

def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float):
    skip = set(getattr(model, 'no_weight_decay', lambda: set())())
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or n in skip else decay).append(p)
    groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
    if name == 'sgd':
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == 'adamw':
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_at(step: int, schedule: dict) -> float:
    """Linear warm-up, then constant or cosine down to min_ratio * lr by the last step."""
    lr, warm, total = schedule['lr'], schedule['warmup_steps'], schedule['total_steps']
    if step < warm:
        return lr * (step + 1) / warm
    if schedule['kind'] == 'constant':
        return lr
    progress = min(1.0, (step - warm) / max(1, total - warm))
    lo = schedule['min_ratio']
    return lr * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_schedule(args, steps_per_epoch: int) -> dict:
    return {'kind': args.schedule, 'lr': args.lr, 'min_ratio': args.min_lr_ratio,
            'warmup_steps': int(round(args.warmup_epochs * steps_per_epoch)),
            'total_steps': args.epochs * steps_per_epoch, 'steps_per_epoch': steps_per_epoch}


def optimizer_step(model, optimizer, scaler, loss, grad_clip: float) -> float:
    """Backward + step; returns the gradient norm (before clipping; nan if not computed)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    norm = float('nan')
    if grad_clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return norm


def init_weights(model: nn.Module, args, log=print) -> None:
    """--init-from (local checkpoint) and/or --pretrained (timm ImageNet); random otherwise."""
    from models.crossvit import load_init, load_pretrained_timm
    if args.pretrained:
        try:
            r = load_pretrained_timm(model)
        except RuntimeError as e:
            raise SystemExit(f"error: --pretrained: {e}")
        log(f"ImageNet init: {len(r['loaded'])} tensors loaded, {len(r['skipped'])} skipped")
    if args.init_from:
        r = load_init(model, args.init_from, strict=False)
        log(f"init from {args.init_from}: {len(r['loaded'])} tensors loaded, {len(r['mismatched'])} of another "
            f"shape and {len(r['missing'])} absent left as initialised")


# ---------------------------------------------------------------------------------------------
# data

def split_folds(db: SpatialDB, val_fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(training anchors, validation anchors). val_fold -1: everything trains and validates."""
    folds = int(db.fold.max()) + 1 if len(db.fold) else 0
    if val_fold < 0:
        idx = np.arange(len(db.names))
        return idx, idx
    if val_fold >= folds:
        raise DataError(None, f"--val-fold {val_fold}: the spatial DB has {folds} folds (0..{folds - 1}), or use -1")
    val = np.flatnonzero(db.fold == val_fold)
    return np.flatnonzero(db.fold != val_fold), val


def training_db(paths, val_fold: int) -> tuple[SpatialDB, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(spatial DB, names, training anchors, validation anchors, mask of training images)."""
    if not is_complete(paths.spatial_db):
        raise DataError(paths.spatial_db, "no spatial database; run preprocessing.py first")
    db = SpatialDB.load(paths.spatial_db)
    train_idx, val_idx = split_folds(db, val_fold)
    allowed = np.zeros(len(db.names), dtype=bool)
    allowed[train_idx] = True  # pairs stay inside the training folds: validation anchors are unseen
    return db, [str(n) for n in db.names], train_idx, val_idx, allowed


def load_spatial_tokens(path: Path, names) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(tokens float16 (N, 1+G*G, D), valid bool (N, G*G), params) in the order of `names`."""
    from generate_RoPE_embeddings import load_tokens
    if not is_complete(path):
        raise DataError(path, "no spatial tokens; run generate_RoPE_embeddings.py first")
    tnames, t, params = load_tokens(path)
    pos = {n: i for i, n in enumerate(tnames)}
    missing = [n for n in names if n not in pos]
    if missing:
        raise DataError(path, f"{len(missing)} database images have no tokens (e.g. {missing[0]!r}); "
                              f"regenerate them with generate_RoPE_embeddings.py --overwrite")
    order = torch.as_tensor([pos[str(n)] for n in names], dtype=torch.long)
    return t['tokens'][order], t['valid'][order].bool(), params


class ImageCache:
    """Database images resized once to `size` (uint8), plus any `<name>_cyclegan` night renderings."""

    def __init__(self, images: np.ndarray, cyclegan: dict[int, np.ndarray]):
        self.images, self.cyclegan = images, cyclegan

    @classmethod
    def build(cls, dataset: Path, names, size: int, cache_dir: Path, d: Dist, progress: bool = True) -> 'ImageCache':
        from tqdm import tqdm
        from .layout import Dataset
        ds = Dataset(dataset)
        paths = [ds.image_path(str(n)) for n in names]
        for p in paths:
            if not p.is_file():
                raise DataError(p, "database image not found (is --dataset the dataset the spatial DB was built from?)")
        # names, size and file stamps decide whether the cached array is still valid
        h = hashlib.sha256(f"{size}".encode())
        for p in paths:
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        file = Path(cache_dir) / f"db_{size}px_{h.hexdigest()[:16]}.npy"
        if d.main and not file.exists():
            imgs = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
            for i, p in enumerate(tqdm(paths, desc=f"caching images at {size}px", unit="img", disable=not progress)):
                imgs[i] = load_resized(p, size)
            with atomic_path(file) as tmp:
                np.save(tmp, imgs)
        barrier(d)
        images = np.load(file, mmap_mode='r')  # ranks and workers share the page cache
        cyc = {i: load_resized(cyclegan_path(p), size) for i, p in enumerate(paths) if cyclegan_path(p).is_file()}
        return cls(images, cyc)

    def night(self, i: int, rng: np.random.Generator) -> np.ndarray:
        return self.cyclegan[i] if i in self.cyclegan else night_simulation(np.asarray(self.images[i]), rng)

    def view(self, i: int, rng: np.random.Generator, night_prob: float, jitter: float, flip_prob: float
             ) -> tuple[torch.Tensor, bool]:
        """One augmented view: (normalised (3, S, S) tensor, flipped?). Draw order is fixed."""
        night, flip = rng.random() < night_prob, rng.random() < flip_prob
        img = self.night(i, rng) if night else np.asarray(self.images[i])
        img = color_jitter(img, rng, jitter)
        return to_tensor(hflip(img) if flip else img), flip

    def batch(self, idx, night_seed: Optional[int] = None) -> torch.Tensor:
        """Clean (or, with night_seed, deterministically night-simulated) images as a batch."""
        out = []
        for i in idx:
            img = np.asarray(self.images[i]) if night_seed is None else self.night(int(i), derive_rng(night_seed, 'night-val', int(i)))
            out.append(to_tensor(img))
        return torch.stack(out)


class PlanDataset(torch.utils.data.Dataset):
    """Row r of the epoch's plan -> make(r) (tensors); sample randomness is derived from r."""

    def __init__(self, n: int, make: Callable[[int], dict]):
        self.n, self.make = n, make

    def __len__(self):
        return self.n

    def __getitem__(self, r):
        return self.make(r)


def global_batches(n_rows: int, batch: int, world: int) -> list[np.ndarray]:
    """Consecutive global batches of `batch` rows; a remainder smaller than a batch is dropped
    (the plan is reshuffled every epoch), except when the whole epoch is smaller than a batch."""
    if batch % world:
        raise ValueError(f"a global batch of {batch} rows cannot be split evenly over {world} processes; "
                         f"change --batch-size")
    if n_rows < batch:
        n = n_rows - n_rows % world
        return [np.arange(n)] if n else []
    return [np.arange(s, s + batch) for s in range(0, n_rows - batch + 1, batch)]


def loader(n_rows: int, make, batch: int, d: Dist, workers: int):
    """This rank's rows of each global batch (rows r, r + W, ...), collated."""
    mine = [b[d.rank::d.world].tolist() for b in global_batches(n_rows, batch, d.world)]
    return torch.utils.data.DataLoader(PlanDataset(n_rows, make), batch_sampler=mine, num_workers=workers,
                                       pin_memory=d.device.type == 'cuda', persistent_workers=False)


# ---------------------------------------------------------------------------------------------
# embedding and validation

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
             args, d: 'Dist', autocast, completed: int) -> dict:
    """Held-out anchors' R@K / P@K among the gallery, clean and night-simulated (prefix 'night_')."""
    night = embed_all(raw, lambda m, j: embed(m, val_idx[j], night_seed=args.seed), len(val_idx),
                      args.embed_dim, args.eval_batch_size, d, autocast, "embedding night anchors")
    return {**flat_metrics('', retrieval(gallery, val_idx, db)),
            **flat_metrics('night_', retrieval(gallery, val_idx, db, queries=night)), 'epoch': completed}


def save_epoch(out: Path, model, optimizer, scaler, best: Optional[dict], completed: int, **ck) -> None:
    """last.pt every epoch; best.pt when this epoch's validation is the best so far."""
    ck = dict(best=best, epoch=completed, **ck)
    if best is not None and best.get('epoch') == completed:
        save_checkpoint(out / 'best.pt', model, optimizer, scaler, **ck)
    save_checkpoint(out / 'last.pt', model, optimizer, scaler, **ck)


def flat_metrics(prefix: str, m: dict) -> dict:
    out = {f"{prefix}R@{k}": v for k, v in m['R'].items()}
    out.update({f"{prefix}P@{k}": v for k, v in m['P'].items()})
    return out


def is_better(metrics: dict, best: Optional[dict]) -> bool:
    """Recall@1, ties broken by Recall@5 (nan, e.g. no anchor with positives, counts as lowest)."""
    def key(m):
        return tuple(-math.inf if m.get(k) is None or math.isnan(m[k]) else m[k] for k in ('R@1', 'R@5'))
    return best is None or key(metrics) > key(best)


# ---------------------------------------------------------------------------------------------
# negatives for the teacher's contrastive pairs

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


# ---------------------------------------------------------------------------------------------
# checkpoints and run folders

def check_config(saved: dict, model_config: dict, path: Path) -> None:
    diff = {k for k in set(saved) | set(model_config) if saved.get(k) != model_config.get(k)}
    if diff:
        fields = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs this run {model_config.get(k)!r}" for k in sorted(diff))
        raise DataError(path, f"checkpoint is of another model ({fields}); use the flags/preset it was trained "
                              f"with, another --out, or --overwrite to start over")


def save_checkpoint(path: Path, model: nn.Module, optimizer, scaler, *, kind: str, epoch: int, step: int,
                    schedule: dict, best, metrics, rng: list, args, extra: Optional[dict] = None) -> None:
    raw = unwrap(model)
    state = {'format': FORMAT, 'kind': kind, 'config': dict(raw.config),
             'model': {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
                       for k, v in raw.state_dict().items()},
             'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict() if scaler is not None else None,
             'schedule': dict(schedule), 'epoch': int(epoch), 'step': int(step), 'best': plain(best),
             'metrics': plain(metrics), 'rng': rng, 'args': plain(args), 'extra': extra or {}}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, kind: Optional[str] = None, config: Optional[dict] = None) -> dict:
    try:
        ck = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise DataError(path, f"not a readable training checkpoint ({e})") from e
    if not isinstance(ck, dict) or ck.get('format') != FORMAT:
        raise DataError(path, f"not a training checkpoint of this project (format {FORMAT!r})")
    if kind is not None and ck['kind'] != kind:
        raise DataError(path, f"holds a {ck['kind']} run, not a {kind} run")
    if config is not None:
        check_config(ck['config'], config, path)
    return ck


def restore(ck: dict, model: nn.Module, optimizer, scaler, d: Dist) -> None:
    """Model, optimiser, loss scaler and this rank's RNG states from a checkpoint."""
    unwrap(model).load_state_dict(ck['model'])
    optimizer.load_state_dict(ck['optimizer'])
    if scaler is not None and ck.get('scaler'):
        scaler.load_state_dict(ck['scaler'])
    if len(ck['rng']) == d.world:
        restore_rng(ck['rng'][d.rank])
    else:  # another process count: nothing to restore per rank; data randomness does not depend on it
        seed_all(ck['args']['seed'] + 7919 * ck['epoch'], d.rank)


def start_or_resume(out: Path, args, d: Dist) -> tuple[str, Optional[Path]]:
    """('fresh' | 'resume' | 'done', checkpoint): what to do with the run folder."""
    last, summary = out / 'last.pt', out / 'summary.json'
    if args.overwrite:
        if d.main:
            for f in (last, out / 'best.pt', summary):
                f.unlink(missing_ok=True)
            shutil.rmtree(out / 'tb', ignore_errors=True)
        barrier(d)
        return 'fresh', None
    if last.exists():
        if args.resume:
            return 'resume', last
        if summary.exists() and read_json(summary).get('finished'):
            return 'done', last
        raise DataError(out, "holds an unfinished run (last.pt): pass --resume to continue it or --overwrite to start over")
    return 'fresh', None


def finished_summary(out: Path, state: str, kind: str, d: 'Dist', log) -> Optional[dict]:
    """The summary of a finished run in `out` (after start_or_resume said 'done'), else None."""
    if state != 'done':
        return None
    log(f"{out} holds a finished {kind} run; skipping (use --overwrite to retrain, or --resume with more --epochs)")
    cleanup(d)
    return read_json(out / 'summary.json')


class Logger:
    """TensorBoard scalars (rank 0 only) under <out>/tb; a resumed run drops events past its checkpoint."""

    def __init__(self, out: Path, d: Dist, step: int = 0):
        self.w = None
        if d.main:
            from torch.utils.tensorboard import SummaryWriter
            self.w = SummaryWriter(str(out / 'tb'), purge_step=step if step else None)

    def scalars(self, values: dict, step: int, prefix: str = '') -> None:
        if self.w is not None:
            for k, v in values.items():
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    self.w.add_scalar(prefix + k, v, step)

    def close(self):
        if self.w is not None:
            self.w.close()


def write_summary(out: Path, summary: dict) -> None:
    write_json(out / 'summary.json', plain(summary))


def describe(metrics: dict) -> str:
    return " ".join(f"{k}={metrics[k]:.3f}" for k in ('R@1', 'R@5', 'R@10', 'night_R@1') if k in metrics)


def timer() -> Callable[[], float]:
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0
