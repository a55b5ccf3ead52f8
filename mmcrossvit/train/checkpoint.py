"""Training checkpoints: writing, reading and resuming them.

Training checkpoints (`last.pt`, `best.pt` of a training folder, written atomically, readable
with weights_only=True: only tensors and plain Python types):
    format     'mmcrossvit-train-1'
    kind       'teacher' | 'image_only' | 'student'
    config     model.config (arch, img_size, embed_dim, ...): `load_model` rebuilds the model from it
    model      state dict (float32, no 'module.' prefix)
    optimizer, scaler (None unless fp16 AMP), schedule (dict), epoch (completed), step
    best       {'epoch', 'R@1', 'R@5', ...} or None; metrics (last validation)
    rng        per-rank global RNG states; args (plain dict); extra (step state, e.g. the
               embeddings behind the current hard negatives)
Resuming into a model of another config (embedding size, image size, grid, ...) is refused with
a message that names the differing fields. Every torch file goes through `weights.read_torch`
(weights_only=True), so no checkpoint can run code when loaded. Reading weights into a model
(any checkpoint, safetensors, ImageNet) is mmcrossvit/train/weights.py's.
"""
from __future__ import annotations

import argparse
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from ..errors import DataError
from ..storage import atomic_path, read_json
from .distributed import Dist, barrier, cleanup, unwrap
from .rng import restore_rng, seed_all
from .weights import read_torch

FORMAT = 'mmcrossvit-train-1'


@dataclass(frozen=True)
class TrainDir:
    """The files of one training folder (outputs/<name>/<kind>/, or --out)."""
    root: Path

    @property
    def last(self) -> Path:
        return self.root / 'last.pt'

    @property
    def best(self) -> Path:
        return self.root / 'best.pt'

    @property
    def summary(self) -> Path:
        return self.root / 'summary.json'

    @property
    def tb(self) -> Path:
        return self.root / 'tb'

    @property
    def inputs(self) -> Path:
        """What the run in this folder was trained from (mmcrossvit/records.py)."""
        return self.root / 'inputs.json'


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
# training checkpoints

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
    buf = io.BytesIO()  # serialised in memory: torch.save on a full disk raises RuntimeError, not OSError
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


def load_checkpoint(path: Path, kind: Optional[str] = None, config: Optional[dict] = None) -> dict:
    ck = read_torch(path, "training checkpoint")
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


def save_epoch(out: TrainDir, model, optimizer, scaler, best: Optional[dict], completed: int, **ck) -> None:
    """last.pt every epoch; best.pt when this epoch's validation is the best so far."""
    ck = dict(best=best, epoch=completed, **ck)
    if best is not None and best.get('epoch') == completed:
        save_checkpoint(out.best, model, optimizer, scaler, **ck)
    save_checkpoint(out.last, model, optimizer, scaler, **ck)


# settings that change how a run is carried out, not what it computes
RUNTIME = {'preset', 'out', 'resume', 'overwrite', 'stop_after', 'device', 'threads', 'workers', 'eval_batch_size',
           'teacher', 'init_from'}


def start_or_resume(out: TrainDir, cfg, d: Dist, inputs: dict) -> tuple[str, Optional[Path]]:
    """('fresh' | 'resume' | 'done', checkpoint): what to do with the training folder.

    A finished run is reused only when it was trained from the same inputs (the spatial DB,
    tokens, teacher weights: `inputs`) and settings; otherwise it is retrained from scratch, with a
    line saying what changed. An unfinished run (interrupted, or --stop-after) continues when its
    inputs and settings are the current ones, as the interruption message promises; when they
    differ the run stops with one line saying what changed, since going on would mix them and
    starting over would throw away epochs. --resume also continues a finished run (more --epochs)."""
    from .. import records
    settings = {k: v for k, v in sorted(vars(cfg).items()) if k not in RUNTIME}
    key = records.make_key(settings, inputs)
    base = records.make_key({k: v for k, v in settings.items() if k != 'epochs'}, inputs)
    say = print if d.main else (lambda *a, **k: None)
    state, ck = 'fresh', None
    if not cfg.overwrite and out.last.exists():
        rec = records.read(out.inputs)
        finished = out.summary.exists() and read_json(out.summary).get('finished')
        same = rec is not None and rec.get('base') == base
        if cfg.resume or not finished:
            if not same:
                what = "was trained" if finished else "holds an unfinished run trained"
                raise DataError(out.root, f"{what} from other inputs or settings "
                                          f"({records.changed(out.inputs, settings, inputs)}); continuing would mix "
                                          f"them: delete the folder, or pass --overwrite to the step's script, "
                                          f"to start over")
            state, ck = 'resume', out.last
        elif rec is not None and rec.get('key') == key:
            return 'done', out.last
        else:
            say(f"{out.root}: the finished run is stale ({records.changed(out.inputs, settings, inputs)}): "
                f"retraining from scratch")
    if d.main:
        if state == 'fresh':
            for f in (out.last, out.best, out.summary):
                f.unlink(missing_ok=True)
            shutil.rmtree(out.tb, ignore_errors=True)
        records.write(out.inputs, key, settings, inputs, base=base)
    barrier(d)
    return state, ck


def finished_summary(out: TrainDir, state: str, kind: str, d: Dist, log) -> Optional[dict]:
    """The summary of a finished run in `out` (after start_or_resume said 'done'), else None."""
    if state != 'done':
        return None
    log(f"{out.root} holds a finished {kind} run; skipping (use --overwrite to retrain, or --resume with more --epochs)")
    cleanup(d)
    return read_json(out.summary)
