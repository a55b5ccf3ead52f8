"""Step 4: distil the multi-modal teacher into the image-only student (Gaussian-kernel embedding transfer).

The frozen teacher (outputs/<name>/teacher/best.pt, rebuilt from the config in the checkpoint)
sees each clean day image with its 3D spatial tokens; the student sees only the image, made night
with probability --night-prob (its `<name>_cyclegan` file if any, else simulated), so day-night
invariance is distilled along with the teacher's 3D-aware geometry. The loss is the relaxed
contrastive loss of Kim et al. (CVPR 2021): the teacher's Gaussian-kernel similarities
w_ij = exp(-||t_i - t_j||^2 / sigma) are soft labels for the student's scale-normalised
distances (sigma = 1, delta = 1 in the paper preset, the paper's values; teacher embeddings are
unit vectors, so w ranges over [exp(-4), 1]). Each batch is --batch-size / 2 random training
anchors plus one random positive of each (an image sharing 3D points; a random training image when
an anchor has none), so every batch holds similar pairs as well as dissimilar ones.

Options measured by benchmarks/student_retrieval.py (the demo preset uses them): --sigma auto
(w = 1/2 at the median squared teacher distance of positive pairs; with sigma = 1 the demo's
positives get w 0.81 and its negatives 0.47), --regression W (adds W * (1 - cos) between each
image's student and teacher embeddings: a dense target per image), and geometric augmentation
(--crop-scale, --portrait-prob, --roll). The teacher's distance samples and the kernel width are
saved in <out>/teacher_distances.npz.

Note: the authors' published student script fine-tunes the student with the teacher's
contrastive loss on spatial pairs instead; this step follows the paper's description (the
teacher's similarity structure is transferred). The same pairs/contrastive training of an
image-only model is the teacher step with --image-only.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from models.build import build_student

from ..data import Geometry, hflip_tokens
from ..errors import DataError
from ..losses import calibrated_sigma, embedding_regression_loss, relaxed_contrastive_loss
from ..paths import RunLayout
from ..train.weights import load_model
from ..train.data import ImageCache, load_spatial_tokens, training_inputs
from ..train.distributed import gather_rows, weights_checksum
from ..train.flags import add_training_args
from ..train.loop import Session, Task, fit, start
from ..storage import write_npz
from ..train.rng import derive_rng
from ..train.validation import describe, embed_all, flat_metrics, retrieval

STEP = "student"
KERNEL_FILE = "teacher_distances.npz"  # in the training folder: the kernel's inputs, for its histograms
S = argparse.SUPPRESS


def add_args(p: argparse.ArgumentParser) -> None:
    add_training_args(p)
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", type=Path, default=None,
                   help="teacher checkpoint (default: outputs/<name>/teacher/best.pt)")
    g.add_argument("--sigma", type=sigma_value, default=S,
                   help="Gaussian-kernel bandwidth of the teacher similarities, or 'auto': w = 1/2 at the median "
                        "squared teacher distance of positive training pairs (see teacher_distances.npz)")
    g.add_argument("--delta", type=float, default=S, help="margin of the relaxed contrastive loss (student distances)")
    g.add_argument("--regression", type=float, default=S,
                   help="weight of an added per-image term 1 - cos(student, teacher) (0: the paper's loss alone; "
                        "needs --embed-dim equal to the teacher's)")


def sigma_value(text: str):
    if text == "auto":
        return text
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}")
    return v


def distance_samples(emb: torch.Tensor, db, allowed: np.ndarray, seed: int, per_image: int = 20
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Squared teacher distances of training pairs: (every positive pair, up to `per_image`
    random pairs per image that share no 3D point), for the kernel width and its histograms."""
    rng = derive_rng(seed, 'kernel-stats')
    train = np.flatnonzero(allowed)
    pi, pj, ni, nj = [], [], [], []
    for i in train:
        p = db.positives(int(i))[0]
        p = p[allowed[p]]
        pi += [i] * len(p)
        pj += p.tolist()
        free = train[db.negative_mask(int(i))[train]]
        free = free[free != i]
        if len(free):
            pick = rng.choice(free, min(per_image, len(free)), replace=False)
            ni += [i] * len(pick)
            nj += pick.tolist()
    e = emb.float().cpu()

    def d2(a, b):
        a, b = torch.as_tensor(a, dtype=torch.long), torch.as_tensor(b, dtype=torch.long)
        return (e[a] - e[b]).pow(2).sum(1).numpy() if len(a) else np.zeros(0, np.float32)
    return d2(pi, pj), d2(ni, nj)


def teacher_targets(s: Session, path: Path, cache: ImageCache) -> tuple[torch.Tensor, dict, str, dict]:
    """The frozen teacher's embeddings of every database image, once per flip state:
    ((flips, N, teacher dim) on the device, its config, its weights' sha256, its validation).
    `cache` holds the student's images, reused when the teacher takes the same size."""
    run, cfg, d = s.run, s.cfg, s.d
    teacher = load_model(path, d.device)  # eval mode, strict load, config from the checkpoint
    teacher.requires_grad_(False)
    tcfg = teacher.config
    multimodal = tcfg['arch'] == 'teacher'  # an image-only teacher (e.g. the ablation) works too
    if multimodal:
        tokens, valid, tparams = load_spatial_tokens(run.tokens, s.names)
        if (tparams['grid'], tparams['dim']) != (tcfg['grid'], tcfg['token_dim']):
            raise DataError(run.tokens, f"tokens are {tparams['grid']}x{tparams['grid']} x {tparams['dim']} but the "
                                        f"teacher was trained on {tcfg['grid']}x{tcfg['grid']} x {tcfg['token_dim']}")
    tcache = cache if tcfg['img_size'] == cfg.img_size else s.images(tcfg['img_size'])
    # The teacher is frozen and sees only clean images, so its embedding of an image never
    # changes: compute it once per image and flip state instead of once per sample (on CPU this
    # removes the teacher's forward from every step, about half the cost of a step).
    flips = [False, True] if cfg.hflip > 0 else [False]

    def embed(m, idx, flip):
        x = tcache.batch(idx).to(d.device)
        x = x.flip(-1) if flip else x
        if not multimodal:
            return m(x)
        tv = [hflip_tokens(tokens[i], valid[i], tcfg['grid']) if flip else (tokens[i], valid[i]) for i in idx]
        return m(x, torch.stack([t for t, _ in tv]).float().to(d.device), torch.stack([v for _, v in tv]).to(d.device))

    t0 = time.perf_counter()
    targets = torch.stack([embed_all(teacher, lambda m, idx, f=f: embed(m, idx, f), len(s.names), tcfg['embed_dim'],
                                     cfg.eval_batch_size, d, s.autocast, f"teacher embeddings (flip={f})")
                           for f in flips])  # (flip states, N, teacher dim), CPU
    metrics = flat_metrics('', retrieval(targets[0], s.val_idx, s.db))
    s.log(f"teacher {path} {tcfg}: {len(s.names)} x {len(flips)} embeddings in {time.perf_counter() - t0:.1f} s; "
          f"its validation {describe(metrics)}")
    return targets.to(d.device), dict(tcfg), weights_checksum(teacher), metrics


def main(run: RunLayout, cfg: argparse.Namespace) -> dict:
    if cfg.batch_size % 2:
        raise DataError(None, "--batch-size must be even: half anchors, half their positives")
    teacher_path = Path(cfg.teacher) if cfg.teacher else run.teacher_checkpoint
    if not teacher_path.is_file():
        raise DataError(teacher_path, "teacher checkpoint not found; run train_multimodal_crossvit_teacher.py first")
    s = start(run, cfg, 'student', training_inputs(run, cfg, tokens=True, teacher=teacher_path))
    if s.finished is not None:
        return s.finished
    d, train_idx = s.d, s.train_idx
    pos = [p[s.allowed[p]] for p in (s.db.positives(i)[0] for i in range(len(s.names)))]
    cache = s.images(cfg.img_size)
    targets, tcfg, teacher_sum, teacher_metrics = teacher_targets(s, teacher_path, cache)
    if cfg.regression > 0 and tcfg['embed_dim'] != cfg.embed_dim:
        raise DataError(teacher_path, f"--regression needs --embed-dim {tcfg['embed_dim']} (the teacher's), "
                                      f"not {cfg.embed_dim}")
    pos_d2, neg_d2 = distance_samples(targets[0], s.db, s.allowed, cfg.seed)
    sigma = calibrated_sigma(torch.from_numpy(pos_d2)) if cfg.sigma == "auto" else float(cfg.sigma)
    kernel = {'sigma': sigma, 'sigma_setting': cfg.sigma, 'positive_pairs': len(pos_d2), 'negative_pairs': len(neg_d2),
              'median_positive_d': float(np.sqrt(np.median(pos_d2))) if len(pos_d2) else None,
              'median_negative_d': float(np.sqrt(np.median(neg_d2))) if len(neg_d2) else None,
              'mean_positive_w': float(np.exp(-pos_d2 / sigma).mean()) if len(pos_d2) else None,
              'mean_negative_w': float(np.exp(-neg_d2 / sigma).mean()) if len(neg_d2) else None}
    s.log("teacher distances: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in kernel.items()))
    if d.main:
        write_npz(s.dir.root / KERNEL_FILE, positive_d2=pos_d2, negative_d2=neg_d2, sigma=np.array(sigma))
    geo = Geometry(cfg.crop_scale, cfg.portrait_prob, cfg.roll)

    def on_resume(ck):
        if ck['extra'].get('teacher_sha256') != teacher_sum:
            raise DataError(s.ck_path, f"was distilled from another teacher than {teacher_path}; "
                                       f"resuming would not continue the same run (use --overwrite)")

    def embed(m, idx, night_seed=None):
        return m(cache.batch(idx, night_seed).to(d.device))

    def plan(epoch):
        """(anchor, partner) rows of an epoch: every training anchor once, with a random positive."""
        rng = derive_rng(cfg.seed, 'student-plan', epoch)
        a = rng.permutation(train_idx)
        u, other = rng.random(len(a)), rng.choice(train_idx, len(a))
        partner = np.array([pos[x][int(u[j] * len(pos[x]))] if len(pos[x]) else other[j] for j, x in enumerate(a)])

        def make_sample(r):
            rng = derive_rng(cfg.seed, 'student-aug', epoch, r)
            views = [cache.view(int(i), rng, cfg.night_prob, cfg.jitter, cfg.hflip, geo) for i in (a[r], partner[r])]
            return {'images': torch.stack([x for x, _ in views]), 'index': torch.tensor([a[r], partner[r]]),
                    'flip': torch.tensor([int(f) for _, f in views])}
        return len(a), make_sample

    def loss(model, batch):
        x = batch['images'].to(d.device, non_blocking=True).flatten(0, 1)  # (pairs * 2, 3, S, S)
        target = targets[batch['flip'].flatten().to(d.device), batch['index'].flatten().to(d.device)]
        with s.autocast():
            emb = model(x)
        # the pairwise loss is over the global batch: every rank's rows are gathered (with their
        # gradients), so W processes train as one would (tests/test_distributed.py)
        emb, target = gather_rows(emb.float(), d), gather_rows(target, d)
        out = relaxed_contrastive_loss(emb, target, sigma, cfg.delta)
        if cfg.regression > 0:
            out = out + cfg.regression * embedding_regression_loss(emb, target)
        return out

    extra = {'teacher': str(teacher_path), 'teacher_config': tcfg, 'teacher_sha256': teacher_sum}
    return fit(s, Task(build=lambda: build_student(img_size=cfg.img_size, embed_dim=cfg.embed_dim,
                                                   backbone=cfg.backbone, freeze=cfg.freeze),
                       rows=len(train_idx), batch_rows=cfg.batch_size // 2, plan=plan, loss=loss, embed=embed,
                       extra=lambda: extra, on_resume=on_resume,
                       summary={'teacher': str(teacher_path), 'teacher_val': teacher_metrics, 'kernel': kernel},
                       start_scalars={f"teacher_{k}": v for k, v in teacher_metrics.items()},
                       note=f"{len(train_idx)} training anchors; ",
                       best_note=f" (teacher {describe(teacher_metrics)})"))
