"""Step 3: train the multi-modal CrossViT teacher by spatial contrastive learning.

The teacher sees each database image (branch 0) with its 3D spatial tokens (branch 1, from the
tokens step). Each sample is an anchor from the training folds of the spatial DB and, with
probability 1/2, one of its positives (label = the IoU of the two images' 3D boxes) or a
negative (an image sharing no 3D point; label 0), trained with the soft-label contrastive loss,
margin 0.5 (mmcrossvit/losses.py). Negatives (--negatives, mmcrossvit/train/negatives.py):
  hard     sampled with probability softmax(-d / tau) over the anchor's negatives, d = descriptor
           distance from the model at the last refresh (every --refresh-every epochs; uniform
           before the first), so close, confusable negatives come up most;
  authors  probability proportional to the normalised distance: far, easy negatives (what the
           authors' published code does);
  uniform.
The paired image is made night with probability --night-prob (its `<name>_cyclegan` file if
there is one, else the photometric night simulation). A horizontal flip mirrors the token grid
with the pixels; colour jitter is photometric only, so tokens and pixels stay in register.

--image-only trains the image-only CrossViT (the student's architecture) with exactly the same
pairs, loss and budget: the ablation that shows what the 3D tokens add, in outputs/<name>/image_only/.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from models.build import build_student, build_teacher

from ..data import Geometry, hflip_tokens
from ..errors import DataError
from ..losses import contrastive_loss
from ..paths import RunLayout
from ..train.data import load_spatial_tokens, training_inputs
from ..train.flags import add_training_args
from ..train.loop import Task, fit, start
from ..train.negatives import Miner
from ..train.rng import derive_rng

STEP = "teacher"
S = argparse.SUPPRESS


def add_args(p: argparse.ArgumentParser) -> None:
    add_training_args(p)
    g = p.add_argument_group("teacher")
    g.add_argument("--image-only", action="store_true",
                   help="ablation: train the image-only CrossViT with the same pairs, loss and budget")
    g.add_argument("--margin", type=float, default=S, help="contrastive-loss margin (paper: 0.5)")
    g.add_argument("--negatives", choices=["hard", "authors", "uniform"], default=S,
                   help="negative sampling: hard (close first), authors (far first), uniform")
    g.add_argument("--refresh-every", type=int, default=S, help="epochs between refreshes of the mined distances")
    g.add_argument("--hard-temp", type=float, default=S, help="temperature tau of the hard-negative softmax(-d/tau)")


def main(run: RunLayout, cfg: argparse.Namespace) -> dict:
    kind = 'image_only' if cfg.image_only else 'teacher'
    geo = Geometry(cfg.crop_scale, cfg.portrait_prob, cfg.roll)
    if geo.active and not cfg.image_only:
        raise DataError(None, "--crop-scale / --portrait-prob / --roll need --image-only: the teacher's 3D tokens are "
                              "tied to its patch grid")
    s = start(run, cfg, kind, training_inputs(run, cfg, tokens=not cfg.image_only))
    if s.finished is not None:
        return s.finished
    d, db, allowed = s.d, s.db, s.allowed
    N = len(s.names)
    tokens = valid = None
    if not cfg.image_only:
        tokens, valid, tparams = load_spatial_tokens(run.tokens, s.names)
    cache = s.images(cfg.img_size)
    pos = []
    for i in range(N):
        p, iou = db.positives(i)
        pos.append((p[allowed[p]], iou[allowed[p]]))
    shared_allowed = np.array([allowed[db.shared.indices[db.shared.indptr[i]:db.shared.indptr[i + 1]]].sum()
                               for i in range(N)])
    has_neg = allowed.sum() - allowed - shared_allowed > 0
    anchors = np.array([a for a in s.train_idx if len(pos[a][0]) or has_neg[a]], dtype=np.int64)
    if not len(anchors):
        raise DataError(run.spatial_db, "no training anchor has a positive or a negative in the training folds")
    s.log(f"{N} database images: {len(anchors)} training anchors, {len(s.val_idx)} validation anchors "
          f"(fold {cfg.val_fold}), {len(cache.cyclegan)} CycleGAN night images")
    miner = Miner(cfg.negatives, cfg.refresh_every, cfg.hard_temp)

    def build():
        arch = dict(img_size=cfg.img_size, embed_dim=cfg.embed_dim, backbone=cfg.backbone, freeze=cfg.freeze)
        if cfg.image_only:
            return build_student(**arch)
        return build_teacher(grid=tparams['grid'], token_dim=tparams['dim'], **arch)

    def embed(m, idx, night_seed=None):
        x = cache.batch(idx, night_seed).to(d.device)
        if cfg.image_only:
            return m(x)
        i = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return m(x, tokens[i].float().to(d.device), valid[i].to(d.device))

    def plan(epoch):
        """(anchor, partner, label) rows of an epoch, the same on every rank, and their samples."""
        rng = derive_rng(cfg.seed, 'teacher-plan', epoch)
        a = rng.permutation(anchors)
        want_pos, u = rng.random(len(a)) < 0.5, rng.random(len(a))
        p_idx, p_iou = np.full(len(a), -1), np.zeros(len(a), dtype=np.float32)
        for j, x in enumerate(a):
            if len(pos[x][0]):
                k = int(u[j] * len(pos[x][0]))
                p_idx[j], p_iou[j] = pos[x][0][k], pos[x][1][k]
        neg = miner.sample(rng, a, db, allowed)
        use_pos = (want_pos & (p_idx >= 0)) | (neg < 0)
        partner, label = np.where(use_pos, p_idx, neg), np.where(use_pos, p_iou, 0.0).astype(np.float32)

        def make_sample(r):
            rng = derive_rng(cfg.seed, 'teacher-aug', epoch, r)
            i, j = int(a[r]), int(partner[r])
            xa, fa = cache.view(i, rng, 0.0, cfg.jitter, cfg.hflip, geo)  # the anchor stays a day image
            xp, fp = cache.view(j, rng, cfg.night_prob, cfg.jitter, cfg.hflip, geo)
            sample = {'images': torch.stack([xa, xp]), 'label': torch.tensor(label[r])}
            if not cfg.image_only:
                ta, va = hflip_tokens(tokens[i], valid[i], tparams['grid']) if fa else (tokens[i], valid[i])
                tp, vp = hflip_tokens(tokens[j], valid[j], tparams['grid']) if fp else (tokens[j], valid[j])
                sample['tokens'], sample['valid'] = torch.stack([ta, tp]), torch.stack([va, vp])
            return sample
        return len(a), make_sample

    def loss(model, batch):
        img = batch['images'].to(d.device, non_blocking=True)
        b = img.shape[0]
        x = torch.cat([img[:, 0], img[:, 1]])  # anchors then partners: one forward per step
        with s.autocast():
            if cfg.image_only:
                emb = model(x)
            else:
                tok = batch['tokens'].to(d.device, non_blocking=True)
                val = batch['valid'].to(d.device, non_blocking=True)
                emb = model(x, torch.cat([tok[:, 0], tok[:, 1]]).float(), torch.cat([val[:, 0], val[:, 1]]))
        emb = emb.float()
        return contrastive_loss(emb[:b], emb[b:], batch['label'].to(d.device), cfg.margin)

    return fit(s, Task(build=build, rows=len(anchors), batch_rows=cfg.batch_size, plan=plan, loss=loss,
                       embed=embed, before_epoch=miner.refresh, extra=miner.state,
                       on_resume=lambda ck: miner.load(ck['extra']), summary={'negatives': cfg.negatives},
                       pair_rate=True))
