"""Step 4: distil the multi-modal teacher into the image-only student (Gaussian-kernel embedding transfer).

    python train_knowledge_distillation_student.py --dataset datasets/demo --preset demo
    torchrun --nproc_per_node 4 train_knowledge_distillation_student.py --dataset datasets/aachen   # paper preset

The frozen teacher (outputs/<name>/teacher/best.pt, rebuilt from the config in the checkpoint)
sees each clean day image with its 3D spatial tokens; the student sees only the image, made night
with probability --night-prob (its `<name>_cyclegan` file if any, else simulated), so day-night
invariance is distilled along with the teacher's 3D-aware geometry. The loss is the relaxed
contrastive loss of Kim et al. (CVPR 2021): the teacher's Gaussian-kernel similarities
w_ij = exp(-||t_i - t_j||^2 / sigma) are soft labels for the student's scale-normalised
distances (sigma = 1, delta = 1 by default, the paper's values; teacher embeddings are unit
vectors, so w ranges over [exp(-4), 1]). Each batch is --batch-size / 2 random training anchors
plus one random positive of each (an image sharing 3D points; a random training image when an
anchor has none), so every batch holds similar pairs as well as dissimilar ones.

Note: the authors' published student script fine-tunes the student with the teacher's
contrastive loss on spatial pairs instead; this script follows the paper's description (the
teacher's similarity structure is transferred). The same pairs/contrastive training of an
image-only model is train_multimodal_crossvit_teacher.py --image-only.

Writes <out>/last.pt and best.pt (format in mmcrossvit/training.py), <out>/tb/ and
<out>/summary.json, with <out> = outputs/<name>/student by default.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmcrossvit import training as T
from mmcrossvit.data import hflip_tokens
from mmcrossvit.errors import DataError, run_cli
from mmcrossvit.losses import relaxed_contrastive_loss
from mmcrossvit.paths import run_paths
from models.crossvit import build_student, load_model

# paper: full size for GPUs (the KD schedule is ours: the authors published none). demo: ~2.5
# minutes on 2 idle CPU cores for 300 database images. tiny: seconds, for tests.
PRESETS = {
    'paper': dict(img_size=240, embed_dim=1000, epochs=500, batch_size=32, optimizer='sgd', lr=1e-4,
                  momentum=0.9, weight_decay=0.0, schedule='constant', warmup_epochs=5.0, min_lr_ratio=0.0,
                  grad_clip=0.0, night_prob=0.5, hflip=0.0, jitter=0.0, val_every=10, sigma=1.0, delta=1.0),
    'demo': dict(img_size=120, embed_dim=1000, epochs=12, batch_size=32, optimizer='adamw', lr=2e-4,
                 momentum=0.9, weight_decay=0.05, schedule='cosine', warmup_epochs=1.0, min_lr_ratio=0.01,
                 grad_clip=1.0, night_prob=0.5, hflip=0.5, jitter=0.2, val_every=4, sigma=1.0, delta=1.0),
    'tiny': dict(img_size=120, embed_dim=32, epochs=2, batch_size=8, optimizer='adamw', lr=5e-4,
                 momentum=0.9, weight_decay=0.0, schedule='cosine', warmup_epochs=0.0, min_lr_ratio=0.1,
                 grad_clip=1.0, night_prob=0.5, hflip=0.5, jitter=0.2, val_every=1, sigma=1.0, delta=1.0),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, epilog=T.preset_epilog(PRESETS),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    T.add_common_args(p, PRESETS)
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", type=Path, default=None,
                   help="teacher checkpoint (default: outputs/<name>/teacher/best.pt)")
    g.add_argument("--sigma", type=float, default=None, help="Gaussian-kernel bandwidth of the teacher similarities")
    g.add_argument("--delta", type=float, default=None, help="margin of the relaxed contrastive loss (student distances)")
    args = T.apply_preset(p.parse_args(argv), PRESETS)
    if args.batch_size % 2:
        p.error("--batch-size must be even: half anchors, half their positives")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    d = T.setup(args.device, args.threads)
    log = print if d.main else (lambda *a, **k: None)
    paths = run_paths(args.name, args.outputs, args.database_root)
    out = args.out or paths.student
    state, ck_path = T.start_or_resume(out, args, d)
    done_summary = T.finished_summary(out, state, 'student', d, log)
    if done_summary is not None:
        return done_summary

    # ---- data and the frozen teacher ---------------------------------------------------------
    db, names, train_idx, val_idx, allowed = T.training_db(paths, args.val_fold)
    N = len(names)
    pos = [p[allowed[p]] for p in (db.positives(i)[0] for i in range(N))]
    teacher_path = args.teacher or paths.teacher / 'best.pt'
    if not teacher_path.is_file():
        raise DataError(teacher_path, "teacher checkpoint not found; run train_multimodal_crossvit_teacher.py first")
    teacher = load_model(teacher_path, d.device)  # eval mode, strict load, config from the checkpoint
    teacher.requires_grad_(False)
    tcfg = teacher.config
    multimodal = tcfg['arch'] == 'teacher'  # an image-only teacher (e.g. the ablation) works too
    if multimodal:
        tokens, valid, tparams = T.load_spatial_tokens(paths.tokens, names)
        if (tparams['grid'], tparams['dim']) != (tcfg['grid'], tcfg['token_dim']):
            raise DataError(paths.tokens, f"tokens are {tparams['grid']}x{tparams['grid']} x {tparams['dim']} but the "
                                          f"teacher was trained on {tcfg['grid']}x{tcfg['grid']} x {tcfg['token_dim']}")
    cache = T.ImageCache.build(args.dataset, names, args.img_size, paths.out / 'cache', d)
    tcache = cache if tcfg['img_size'] == args.img_size else \
        T.ImageCache.build(args.dataset, names, tcfg['img_size'], paths.out / 'cache', d)
    autocast, scaler = T.amp_setup(d, args.amp)

    # The teacher is frozen and sees only clean images, so its embedding of an image never
    # changes: compute it once per image and flip state instead of once per sample (on CPU this
    # removes the teacher's forward from every step, about half the cost of a step).
    flips = [False, True] if args.hflip > 0 else [False]

    def teacher_embed(m, idx, flip):
        x = tcache.batch(idx).to(d.device)
        x = x.flip(-1) if flip else x
        if not multimodal:
            return m(x)
        tv = [hflip_tokens(tokens[i], valid[i], tcfg['grid']) if flip else (tokens[i], valid[i]) for i in idx]
        return m(x, torch.stack([t for t, _ in tv]).float().to(d.device), torch.stack([v for _, v in tv]).to(d.device))

    t0 = time.perf_counter()
    targets = torch.stack([T.embed_all(teacher, lambda m, idx, f=f: teacher_embed(m, idx, f), N, tcfg['embed_dim'],
                                       args.eval_batch_size, d, autocast, f"teacher embeddings (flip={f})")
                           for f in flips])  # (flip states, N, teacher dim), CPU
    teacher_metrics = T.flat_metrics('', T.retrieval(targets[0], val_idx, db))
    teacher_sum = T.weights_checksum(teacher)
    log(f"teacher {teacher_path} {tcfg}: {N} x {len(flips)} embeddings in {time.perf_counter() - t0:.1f} s; "
        f"its validation {T.describe(teacher_metrics)}")
    del teacher, tcache
    targets = targets.to(d.device)

    # ---- student, optimiser, schedule, resume -------------------------------------------------
    T.seed_all(args.seed, d.rank)
    model = build_student(img_size=args.img_size, embed_dim=args.embed_dim)
    if state == 'fresh':
        T.init_weights(model, args, log)
    model.to(d.device)
    optimizer = T.make_optimizer(model, args.optimizer, args.lr, args.weight_decay, args.momentum)
    pairs_per_batch = args.batch_size // 2
    steps_per_epoch = len(T.global_batches(len(train_idx), pairs_per_batch, d.world))
    schedule = T.make_schedule(args, steps_per_epoch)
    start_epoch, step, best, metrics = 0, 0, None, {}
    if ck_path is not None:
        ck = T.load_checkpoint(ck_path, 'student', model.config)
        if ck['extra'].get('teacher_sha256') != teacher_sum:
            raise DataError(ck_path, f"was distilled from another teacher than {teacher_path}; "
                                     f"resuming would not continue the same run (use --overwrite)")
        T.restore(ck, model, optimizer, scaler, d)
        start_epoch, step, best, metrics = ck['epoch'], ck['step'], ck['best'], ck['metrics']
        log(f"resumed {ck_path} after epoch {start_epoch} (step {step})")
    model = T.wrap_ddp(model, d)
    raw = T.unwrap(model)
    tb = T.Logger(out, d, step)
    tb.scalars({f"teacher_{k}": v for k, v in teacher_metrics.items()}, step, 'val/')
    log(f"student: {sum(p.numel() for p in raw.parameters()) / 1e6:.2f} M parameters {raw.config}; "
        f"{len(train_idx)} training anchors; {d.world} process(es) on {d.device}; preset {args.preset}")

    def embed(m, idx, night_seed=None):
        return m(cache.batch(idx, night_seed).to(d.device))

    def make_plan(epoch):
        """(anchor, partner) rows of an epoch: every training anchor once, with a random positive."""
        rng = T.derive_rng(args.seed, 'student-plan', epoch)
        a = rng.permutation(train_idx)
        u, other = rng.random(len(a)), rng.choice(train_idx, len(a))
        partner = np.array([pos[x][int(u[j] * len(pos[x]))] if len(pos[x]) else other[j] for j, x in enumerate(a)])
        return a, partner

    # ---- training -----------------------------------------------------------------------------
    clock, train_time, images_seen, ran = T.timer(), 0.0, 0, 0
    for epoch in range(start_epoch, args.epochs):
        if args.stop_after is not None and ran >= args.stop_after:
            break
        plan_a, plan_p = make_plan(epoch)

        def make_sample(r, epoch=epoch):
            rng = T.derive_rng(args.seed, 'student-aug', epoch, r)
            views = [cache.view(int(i), rng, args.night_prob, args.jitter, args.hflip) for i in (plan_a[r], plan_p[r])]
            return {'images': torch.stack([x for x, _ in views]), 'index': torch.tensor([plan_a[r], plan_p[r]]),
                    'flip': torch.tensor([int(f) for _, f in views])}

        model.train()
        t0, losses = time.perf_counter(), []
        bar = tqdm(T.loader(len(plan_a), make_sample, pairs_per_batch, d, args.workers),
                   desc=f"epoch {epoch + 1}/{args.epochs}", unit="step", leave=False, disable=not d.main)
        for batch in bar:
            lr = T.lr_at(step, schedule)
            for g in optimizer.param_groups:
                g['lr'] = lr
            x = batch['images'].to(d.device, non_blocking=True).flatten(0, 1)  # (pairs * 2, 3, S, S)
            target = targets[batch['flip'].flatten().to(d.device), batch['index'].flatten().to(d.device)]
            with autocast():
                emb = model(x)
            # pairwise terms are within this process's share of the batch (per-GPU batch, as usual)
            loss = relaxed_contrastive_loss(emb.float(), target, args.sigma, args.delta)
            grad_norm = T.optimizer_step(model, optimizer, scaler, loss, args.grad_clip)
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.1e}")
            tb.scalars({'loss': losses[-1], 'lr': lr, 'grad_norm': grad_norm}, step, 'train/')
        dt = time.perf_counter() - t0
        images = len(losses) * args.batch_size  # global
        train_time, images_seen, ran = train_time + dt, images_seen + images, ran + 1
        completed = epoch + 1
        line = (f"epoch {completed}/{args.epochs} loss {np.mean(losses) if losses else float('nan'):.4f} "
                f"lr {lr if losses else 0:.2e} {images / dt:.1f} img/s")
        tb.scalars({'epoch_loss': float(np.mean(losses)) if losses else float('nan'), 'images_per_s': images / dt},
                   step, 'train/')

        # ---- validation and checkpoints -------------------------------------------------------
        if completed == args.epochs or (args.val_every and completed % args.val_every == 0):
            gallery = T.embed_all(raw, embed, N, args.embed_dim, args.eval_batch_size, d, autocast, "embedding db")
            metrics = T.validate(raw, gallery, embed, val_idx, db, args, d, autocast, completed)
            tb.scalars({k: v for k, v in metrics.items() if k != 'epoch'}, step, 'val/')
            line += " | " + T.describe(metrics)
            if T.is_better(metrics, best):
                best = dict(metrics)
                line += " (best)"
        rng_states = T.gather_rng(d)
        if d.main:
            T.save_epoch(out, model, optimizer, scaler, best, completed, kind='student', step=step, schedule=schedule,
                         metrics=metrics, rng=rng_states, args=args,
                         extra={'teacher': str(teacher_path), 'teacher_config': dict(tcfg), 'teacher_sha256': teacher_sum})
        T.barrier(d)
        log(line)

    # ---- summary ------------------------------------------------------------------------------
    done = start_epoch + ran
    if d.main and not (out / 'best.pt').exists() and (out / 'last.pt').exists():
        # no validation ran yet (e.g. stopped early): the latest weights stand in
        shutil.copyfile(out / 'last.pt', out / 'best.pt')
    summary = {'kind': 'student', 'finished': done >= args.epochs, 'epochs_done': done, 'epochs': args.epochs,
               'steps': step, 'config': raw.config, 'preset': args.preset, 'processes': d.world,
               'device': str(d.device), 'teacher': str(teacher_path), 'teacher_val': teacher_metrics,
               'best': best, 'last': metrics, 'train_seconds': round(train_time, 2),
               'wall_seconds': round(clock(), 2),
               'images_per_s': round(images_seen / train_time, 2) if train_time else None}
    if d.main:
        T.write_summary(out, summary)
        log(f"student: {done}/{args.epochs} epochs, {summary['images_per_s']} img/s in training, "
            f"{summary['wall_seconds']} s in all; best {T.describe(best or {})} "
            f"(teacher {T.describe(teacher_metrics)}) -> {out}")
    print(f"rank {d.rank}: weights sha256 {T.weights_checksum(model)}", flush=True)
    tb.close()
    T.cleanup(d)
    return summary


if __name__ == "__main__":
    run_cli(main)
