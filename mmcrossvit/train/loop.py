"""The one training loop of the teacher and the student.

`start` does what every run does first (devices, the training folder's state, the spatial DB and
its folds); a trainer then describes what is its own in a `Task` (model, epoch plan, samples,
loss, embedding for validation, checkpoint extras) and `fit` runs the rest: initialisation,
resume, the per-epoch learning rate, logging, validation, best tracking, checkpoints and
summary.json. Keeping it in one place keeps resume, --stop-after, the DDP batch split and the
TensorBoard tags the same for both.
"""
from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ..paths import RunLayout
from ..spatial_db import SpatialDB
from .checkpoint import TrainDir, finished_summary, load_checkpoint, restore, save_epoch, start_or_resume
from .data import ImageCache, global_batches, loader, training_db
from .distributed import Dist, amp_setup, barrier, cleanup, mean_over_ranks, setup, weights_checksum, wrap_ddp
from .optim import init_weights, lr_at, make_optimizer, make_schedule, optimizer_step
from .rng import gather_rng, seed_all
from .tblog import Logger, write_summary
from .validation import describe, embed_all, is_better, validate


def _quiet(*args, **kwargs) -> None:
    pass


@dataclass
class Session:
    """One training run: its settings, processes, folder and (unless finished) data."""
    run: RunLayout
    cfg: argparse.Namespace
    kind: str
    d: Dist
    log: Callable
    dir: TrainDir
    state: str                        # 'fresh' | 'resume' | 'done'
    ck_path: Optional[Path]
    finished: Optional[dict] = None   # the summary of a finished run: nothing to do
    db: Optional[SpatialDB] = None
    names: list = field(default_factory=list)
    train_idx: Optional[np.ndarray] = None
    val_idx: Optional[np.ndarray] = None
    allowed: Optional[np.ndarray] = None  # mask of the training images
    autocast: Callable = None
    scaler: object = None

    @property
    def args(self) -> dict:
        """The settings saved in checkpoints: the run's, then the step's."""
        r = self.run
        return {'dataset': r.dataset, 'name': r.name, 'outputs': r.outputs, 'database_root': r.database_root,
                **vars(self.cfg)}

    def images(self, size: int) -> ImageCache:
        return ImageCache.build(self.run.dataset, self.names, size, self.run.cache, self.d,
                                cyclegan=getattr(self.cfg, 'cyclegan', True))


def start(run: RunLayout, cfg: argparse.Namespace, kind: str, inputs: dict) -> Session:
    """Join the processes, decide fresh / resume / done for the folder (from what the run is
    trained on, `inputs`: see checkpoint.start_or_resume), load the spatial DB."""
    d = setup(cfg.device, cfg.threads)
    log = print if d.main else _quiet
    folder = TrainDir(Path(cfg.out) if cfg.out else run.train_dir(kind))
    state, ck_path = start_or_resume(folder, cfg, d, inputs)
    s = Session(run, cfg, kind, d, log, folder, state, ck_path)
    s.finished = finished_summary(folder, state, kind, d, log)
    if s.finished is None:
        s.db, s.names, s.train_idx, s.val_idx, s.allowed = training_db(run, cfg.val_fold)
        s.autocast, s.scaler = amp_setup(d, cfg.amp)
    return s


@dataclass
class Task:
    """What one trainer does its own way. Each plan row is a pair of images."""
    build: Callable[[], nn.Module]                          # the model (called right after seeding)
    rows: int                                               # plan rows per epoch (for the schedule)
    batch_rows: int                                         # plan rows per global step
    plan: Callable[[int], tuple[int, Callable[[int], dict]]]  # epoch -> (rows, make_sample(row))
    loss: Callable[[nn.Module, dict], torch.Tensor]         # (model, collated batch) -> scalar loss
    embed: Callable[..., torch.Tensor]                      # (model, idx, night_seed=None) -> (B, E)
    before_epoch: Optional[Callable[[int, Callable[[], torch.Tensor]], None]] = None  # (epoch, db embeddings)
    extra: Callable[[], dict] = dict                        # the checkpoint's 'extra'
    on_resume: Optional[Callable[[dict], None]] = None      # check / take state from a checkpoint
    summary: dict = field(default_factory=dict)             # summary.json fields of this trainer
    start_scalars: dict = field(default_factory=dict)       # 'val/' scalars logged once at the start
    note: str = ""                                          # in the model line
    best_note: str = ""                                     # after the final best metrics
    pair_rate: bool = False                                 # also report pairs/s


def fit(s: Session, task: Task) -> dict:
    """Train `task` for cfg.epochs (or --stop-after more), validating and checkpointing; the summary."""
    cfg, d, log, out = s.cfg, s.d, s.log, s.dir
    seed_all(cfg.seed, d.rank)
    model = task.build()
    if s.state == 'fresh':
        init_weights(model, cfg, log)
    model.to(d.device)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    schedule = make_schedule(cfg, len(global_batches(task.rows, task.batch_rows, d.world)))
    start_epoch, step, best, metrics = 0, 0, None, {}
    if s.ck_path is not None:
        ck = load_checkpoint(s.ck_path, s.kind, model.config)
        if task.on_resume is not None:
            task.on_resume(ck)
        restore(ck, model, optimizer, s.scaler, d)
        start_epoch, step, best, metrics = ck['epoch'], ck['step'], ck['best'], ck['metrics']
        log(f"resumed {s.ck_path} after epoch {start_epoch} (step {step})")
    raw, model = model, wrap_ddp(model, d)
    tb = Logger(out.tb, d, step)
    tb.scalars(task.start_scalars, step, 'val/')
    log(f"{s.kind}: {sum(p.numel() for p in raw.parameters()) / 1e6:.2f} M parameters {raw.config}; "
        f"{task.note}{d.world} process(es) on {d.device}; preset {cfg.preset}")

    def embed_db():
        return embed_all(raw, task.embed, len(s.names), cfg.embed_dim, cfg.eval_batch_size, d, s.autocast,
                         "embedding db")

    latest = (-1, None)  # (epochs completed, db embeddings) of the last validation, for reuse
    t_start, train_time, images_seen, ran = time.perf_counter(), 0.0, 0, 0
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.stop_after is not None and ran >= cfg.stop_after:
            break
        if task.before_epoch is not None:
            task.before_epoch(epoch, lambda: latest[1] if latest[0] == epoch else embed_db())
        n_rows, make_sample = task.plan(epoch)
        model.train()
        t0, losses = time.perf_counter(), []
        bar = tqdm(loader(n_rows, make_sample, task.batch_rows, d, cfg.workers),
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False, disable=not d.main)
        for batch in bar:
            lr = lr_at(step, schedule)
            for g in optimizer.param_groups:
                g['lr'] = lr
            loss = task.loss(model, batch)
            grad_norm = optimizer_step(model, optimizer, s.scaler, loss, cfg.grad_clip)
            step += 1
            losses.append(mean_over_ranks(loss, d))  # the global batch's loss, not rank 0's share
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.1e}")
            tb.scalars({'loss': losses[-1], 'lr': lr, 'grad_norm': grad_norm}, step, 'train/')
        dt = time.perf_counter() - t0
        pairs = len(losses) * task.batch_rows  # global
        train_time, images_seen, ran = train_time + dt, images_seen + 2 * pairs, ran + 1
        completed = epoch + 1
        mean_loss = float(np.mean(losses)) if losses else float('nan')
        rate = f"{pairs / dt:.1f} pairs/s ({2 * pairs / dt:.1f} img/s)" if task.pair_rate else f"{2 * pairs / dt:.1f} img/s"
        line = f"epoch {completed}/{cfg.epochs} loss {mean_loss:.4f} lr {lr if losses else 0:.2e} {rate}"
        rates = {'pairs_per_s': pairs / dt} if task.pair_rate else {}
        tb.scalars({'epoch_loss': mean_loss, **rates, 'images_per_s': 2 * pairs / dt}, step, 'train/')

        if completed == cfg.epochs or (cfg.val_every and completed % cfg.val_every == 0):
            gallery = embed_db()
            latest = (completed, gallery)
            metrics = validate(raw, gallery, task.embed, s.val_idx, s.db, cfg, d, s.autocast, completed)
            tb.scalars({k: v for k, v in metrics.items() if k != 'epoch'}, step, 'val/')
            line += " | " + describe(metrics)
            if is_better(metrics, best):
                best = dict(metrics)
                line += " (best)"
        rng_states = gather_rng(d)
        if d.main:
            save_epoch(out, model, optimizer, s.scaler, best, completed, kind=s.kind, step=step, schedule=schedule,
                       metrics=metrics, rng=rng_states, args=s.args, extra=task.extra())
        barrier(d)
        log(line)

    done = start_epoch + ran
    if d.main and not out.best.exists() and out.last.exists():
        # no validation ran yet (e.g. stopped early): the latest weights stand in
        shutil.copyfile(out.last, out.best)
    summary = {'kind': s.kind, 'finished': done >= cfg.epochs, 'epochs_done': done, 'epochs': cfg.epochs,
               'steps': step, 'config': raw.config, 'preset': cfg.preset, 'processes': d.world,
               'device': str(d.device), 'threads': torch.get_num_threads(), **task.summary, 'best': best, 'last': metrics,
               'train_seconds': round(train_time, 2), 'wall_seconds': round(time.perf_counter() - t_start, 2),
               'images_per_s': round(images_seen / train_time, 2) if train_time else None}
    if task.pair_rate:
        summary['pairs_per_s'] = round(images_seen / 2 / train_time, 2) if train_time else None
    if d.main:
        write_summary(out.summary, summary)
        log(f"{s.kind}: {done}/{cfg.epochs} epochs, {summary['images_per_s']} img/s in training, "
            f"{summary['wall_seconds']} s in all; best {describe(best or {})}{task.best_note} -> {out.root}")
    print(f"rank {d.rank}: weights sha256 {weights_checksum(model)}", flush=True)
    tb.close()
    cleanup(d)
    return summary
