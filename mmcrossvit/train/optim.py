"""Optimisation: parameter groups, the learning-rate schedule, one step, initial weights."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float):
    """SGD or AdamW; no weight decay on norms, biases and the model's no_weight_decay() tensors."""
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


def make_schedule(cfg, steps_per_epoch: int) -> dict:
    """The schedule as a plain dict (it is saved in every checkpoint)."""
    return {'kind': cfg.schedule, 'lr': cfg.lr, 'min_ratio': cfg.min_lr_ratio,
            'warmup_steps': int(round(cfg.warmup_epochs * steps_per_epoch)),
            'total_steps': cfg.epochs * steps_per_epoch, 'steps_per_epoch': steps_per_epoch}


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


def init_weights(model: nn.Module, cfg, log=print) -> None:
    """The lite0 backbone's ImageNet encoder, then --init-from (local checkpoint) and/or --pretrained
    (timm's ImageNet CrossViT); random otherwise."""
    from .weights import load_imagenet_encoder, load_init, load_pretrained_timm
    if getattr(model, 'config', {}).get('backbone') == 'lite0':
        log(f"ImageNet EfficientNet-Lite0 encoder: {load_imagenet_encoder(model)} tensors loaded")
    if cfg.pretrained:
        try:
            r = load_pretrained_timm(model)
        except RuntimeError as e:
            raise SystemExit(f"error: --pretrained: {e}")
        log(f"ImageNet init: {len(r['loaded'])} tensors loaded, {len(r['skipped'])} skipped")
    if cfg.init_from:
        r = load_init(model, cfg.init_from, strict=False)
        log(f"init from {cfg.init_from}: {len(r['loaded'])} tensors loaded, {len(r['mismatched'])} of another "
            f"shape and {len(r['missing'])} absent left as initialised")
