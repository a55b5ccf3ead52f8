"""Training data: folds of the spatial DB, spatial tokens, cached images and the per-rank loader.

Database images are resized once into a uint8 array (cached on disk under outputs/<name>/cache/,
keyed by names, size and file stamps), so an epoch costs only the network; `ImageCache.view`
applies the augmentations (night / CycleGAN, crop / portrait / roll, colour jitter, flip).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..data import (Geometry, color_jitter, cyclegan_path, geometric_view, hflip, load_resized,
                    night_simulation, to_tensor)
from ..errors import DataError
from ..paths import RunLayout
from ..spatial_db import SpatialDB
from ..spatial_tokens import load_tokens
from ..storage import atomic_path, is_complete
from .distributed import Dist, barrier
from .rng import derive_rng


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


def training_db(run: RunLayout, val_fold: int) -> tuple[SpatialDB, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(spatial DB, names, training anchors, validation anchors, mask of training images)."""
    if not is_complete(run.spatial_db):
        raise DataError(run.spatial_db, "no spatial database; run preprocessing.py first")
    db = SpatialDB.load(run.spatial_db)
    train_idx, val_idx = split_folds(db, val_fold)
    allowed = np.zeros(len(db.names), dtype=bool)
    allowed[train_idx] = True  # pairs stay inside the training folds: validation anchors are unseen
    return db, [str(n) for n in db.names], train_idx, val_idx, allowed


def load_spatial_tokens(path: Path, names) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(tokens float16 (N, 1+G*G, D), valid bool (N, G*G), params) in the order of `names`."""
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
    def build(cls, dataset: Path, names, size: int, cache_dir: Path, d: Dist, progress: bool = True,
              cyclegan: bool = True) -> 'ImageCache':
        from tqdm import tqdm
        from ..layout import Dataset
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
        cyc = {i: load_resized(cyclegan_path(p), size) for i, p in enumerate(paths)
               if cyclegan and cyclegan_path(p).is_file()}
        return cls(images, cyc)

    def night(self, i: int, rng: np.random.Generator) -> np.ndarray:
        return self.cyclegan[i] if i in self.cyclegan else night_simulation(np.asarray(self.images[i]), rng)

    def view(self, i: int, rng: np.random.Generator, night_prob: float, jitter: float, flip_prob: float,
             geo: Geometry = Geometry()) -> tuple[torch.Tensor, bool]:
        """One augmented view: (normalised (3, S, S) tensor, flipped?). Draw order is fixed."""
        night, flip = rng.random() < night_prob, rng.random() < flip_prob
        img = self.night(i, rng) if night else np.asarray(self.images[i])
        img = color_jitter(geometric_view(img, rng, geo), rng, jitter)
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


def training_inputs(run: RunLayout, cfg, tokens: bool, teacher: Optional[Path] = None) -> dict:
    """What a training run is computed from, besides its settings: the spatial DB, the tokens
    (multi-modal runs), the teacher's weights (distillation), an --init-from checkpoint."""
    from .. import records
    out = {"spatial_db": records.upstream(run.record("spatial_db"), run.spatial_db)}
    if tokens:
        out["tokens"] = records.upstream(run.record("tokens"), run.tokens)
    if teacher is not None:
        out["teacher"] = records.fingerprint(teacher)
    if getattr(cfg, "init_from", None):
        out["init_from"] = records.fingerprint(cfg.init_from)
    if getattr(cfg, "cyclegan", False):
        out["night_images"] = night_images_digest(run)
    return out


def night_images_digest(run: RunLayout) -> Optional[str]:
    """Which `<name>_cyclegan` night renderings of the spatial DB's images exist, and their
    stamps: adding, changing or removing one retrains. None when there are none."""
    from .. import records
    from ..layout import Dataset
    ds = Dataset(run.dataset)
    found = {}
    for n in SpatialDB.load(run.spatial_db).names:
        p = cyclegan_path(ds.image_path(str(n)))
        if p.is_file():
            found[str(n)] = records.stamp(p)
    return records.digest(found) if found else None
