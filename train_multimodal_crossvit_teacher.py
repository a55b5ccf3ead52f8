"""Step 3: train the multi-modal CrossViT teacher by spatial contrastive learning.

    python train_multimodal_crossvit_teacher.py --dataset datasets/demo --preset demo
    torchrun --nproc_per_node 4 train_multimodal_crossvit_teacher.py --dataset datasets/aachen   # paper preset
    python train_multimodal_crossvit_teacher.py --dataset datasets/demo --preset demo --image-only   # ablation

The teacher sees each database image (branch 0) with its 3D spatial tokens (branch 1, from
generate_RoPE_embeddings.py). Each sample is an anchor from the training folds of the spatial DB
and, with probability 1/2, one of its positives (label = the IoU of the two images' 3D boxes)
or a negative (an image sharing no 3D point; label 0), trained with the soft-label contrastive
loss, margin 0.5 (mmcrossvit/losses.py). Negatives (--negatives):
  hard     (default) sampled with probability softmax(-d / tau) over the anchor's negatives,
           d = descriptor distance from the model at the last refresh (every --refresh-every
           epochs; uniform before the first), so close, confusable negatives come up most;
  authors  probability proportional to the normalised distance: far, easy negatives (what the
           authors' published code does);
  uniform.
The paired image is made night with probability --night-prob (its `<name>_cyclegan` file if
there is one, else the photometric night simulation). A horizontal flip mirrors the token grid
with the pixels; colour jitter is photometric only, so tokens and pixels stay in register.

--image-only trains the image-only CrossViT (the student's architecture) with exactly the same
pairs, loss and budget: the ablation that shows what the 3D tokens add. It is saved under
outputs/<name>/image_only/.

Writes <out>/last.pt and best.pt (best validation Recall@1, ties by Recall@5; format in
mmcrossvit/training.py), <out>/tb/ (TensorBoard) and <out>/summary.json.
"""
from __future__ import annotations

import argparse
import shutil
import time

import numpy as np
import torch
from tqdm import tqdm

from mmcrossvit import training as T
from mmcrossvit.data import hflip_tokens
from mmcrossvit.errors import DataError, run_cli
from mmcrossvit.losses import contrastive_loss
from mmcrossvit.paths import run_paths
from models.crossvit import build_student, build_teacher

# paper: the authors' settings. demo: ~3 minutes on 2 idle CPU cores for 300 database images with
# 7 x 7 token grids (generate_RoPE_embeddings.py --grid 7, the paper's 14 x 14 at half the image
# size; 14 x 14 tokens make each step ~3x slower). tiny: seconds, for tests.
PRESETS = {
    'paper': dict(img_size=240, embed_dim=1000, epochs=1000, batch_size=32, optimizer='sgd', lr=1e-4,
                  momentum=0.9, weight_decay=0.0, schedule='constant', warmup_epochs=0.0, min_lr_ratio=0.0,
                  grad_clip=0.0, night_prob=0.5, hflip=0.0, jitter=0.0, val_every=10, margin=0.5,
                  negatives='hard', refresh_every=10, hard_temp=0.1),
    'demo': dict(img_size=120, embed_dim=1000, epochs=15, batch_size=16, optimizer='adamw', lr=3e-4,
                 momentum=0.9, weight_decay=0.05, schedule='cosine', warmup_epochs=1.0, min_lr_ratio=0.01,
                 grad_clip=1.0, night_prob=0.5, hflip=0.5, jitter=0.2, val_every=3, margin=0.5,
                 negatives='hard', refresh_every=3, hard_temp=0.1),
    'tiny': dict(img_size=120, embed_dim=32, epochs=2, batch_size=8, optimizer='adamw', lr=1e-3,
                 momentum=0.9, weight_decay=0.0, schedule='cosine', warmup_epochs=0.0, min_lr_ratio=0.1,
                 grad_clip=1.0, night_prob=0.5, hflip=0.5, jitter=0.2, val_every=1, margin=0.5,
                 negatives='hard', refresh_every=1, hard_temp=0.1),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, epilog=T.preset_epilog(PRESETS),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    T.add_common_args(p, PRESETS)
    g = p.add_argument_group("teacher")
    g.add_argument("--image-only", action="store_true",
                   help="ablation: train the image-only CrossViT with the same pairs, loss and budget")
    g.add_argument("--margin", type=float, default=None, help="contrastive-loss margin (paper: 0.5)")
    g.add_argument("--negatives", choices=["hard", "authors", "uniform"], default=None,
                   help="negative sampling: hard (close first), authors (far first), uniform")
    g.add_argument("--refresh-every", type=int, default=None, help="epochs between refreshes of the mined distances")
    g.add_argument("--hard-temp", type=float, default=None, help="temperature tau of the hard-negative softmax(-d/tau)")
    return T.apply_preset(p.parse_args(argv), PRESETS)


def main(argv=None) -> dict:
    args = parse_args(argv)
    d = T.setup(args.device, args.threads)
    log = print if d.main else (lambda *a, **k: None)
    kind = 'image_only' if args.image_only else 'teacher'
    paths = run_paths(args.name, args.outputs, args.database_root)
    out = args.out or paths.out / kind
    state, ck_path = T.start_or_resume(out, args, d)
    done_summary = T.finished_summary(out, state, kind, d, log)
    if done_summary is not None:
        return done_summary

    # ---- data: spatial DB, folds, tokens, images --------------------------------------------
    db, names, train_idx, val_idx, allowed = T.training_db(paths, args.val_fold)
    N = len(names)
    tokens = valid = None
    if not args.image_only:
        tokens, valid, tparams = T.load_spatial_tokens(paths.tokens, names)
    cache = T.ImageCache.build(args.dataset, names, args.img_size, paths.out / 'cache', d)
    pos = []
    for i in range(N):
        p, iou = db.positives(i)
        pos.append((p[allowed[p]], iou[allowed[p]]))
    shared_allowed = np.array([allowed[db.shared.indices[db.shared.indptr[i]:db.shared.indptr[i + 1]]].sum()
                               for i in range(N)])
    has_neg = allowed.sum() - allowed - shared_allowed > 0
    anchors = np.array([a for a in train_idx if len(pos[a][0]) or has_neg[a]], dtype=np.int64)
    if not len(anchors):
        raise DataError(paths.spatial_db, "no training anchor has a positive or a negative in the training folds")
    log(f"{N} database images: {len(anchors)} training anchors, {len(val_idx)} validation anchors "
        f"(fold {args.val_fold}), {len(cache.cyclegan)} CycleGAN night images")

    # ---- model, optimiser, schedule, resume -------------------------------------------------
    T.seed_all(args.seed, d.rank)
    if args.image_only:
        model = build_student(img_size=args.img_size, embed_dim=args.embed_dim)
    else:
        model = build_teacher(img_size=args.img_size, grid=tparams['grid'], token_dim=tparams['dim'],
                              embed_dim=args.embed_dim)
    if state == 'fresh':
        T.init_weights(model, args, log)
    model.to(d.device)
    optimizer = T.make_optimizer(model, args.optimizer, args.lr, args.weight_decay, args.momentum)
    autocast, scaler = T.amp_setup(d, args.amp)
    steps_per_epoch = len(T.global_batches(len(anchors), args.batch_size, d.world))
    schedule = T.make_schedule(args, steps_per_epoch)
    start_epoch, step, best, metrics = 0, 0, None, {}
    mined, mined_epoch = None, -1  # embeddings behind the current negative weights, and when taken
    if ck_path is not None:
        ck = T.load_checkpoint(ck_path, kind, model.config)
        T.restore(ck, model, optimizer, scaler, d)
        start_epoch, step, best, metrics = ck['epoch'], ck['step'], ck['best'], ck['metrics']
        mined, mined_epoch = ck['extra'].get('mined'), ck['extra'].get('mined_epoch', -1)
        log(f"resumed {ck_path} after epoch {start_epoch} (step {step})")
    model = T.wrap_ddp(model, d)
    raw = T.unwrap(model)
    tb = T.Logger(out, d, step)
    log(f"{kind}: {sum(p.numel() for p in raw.parameters()) / 1e6:.2f} M parameters {raw.config}; "
        f"{d.world} process(es) on {d.device}; preset {args.preset}")

    def embed(m, idx, night_seed=None):
        x = cache.batch(idx, night_seed).to(d.device)
        if args.image_only:
            return m(x)
        i = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return m(x, tokens[i].float().to(d.device), valid[i].to(d.device))

    def embed_db():
        return T.embed_all(raw, embed, N, args.embed_dim, args.eval_batch_size, d, autocast, "embedding db")

    def make_plan(epoch):
        """(anchor, partner, label) rows of an epoch; the same on every rank."""
        rng = T.derive_rng(args.seed, 'teacher-plan', epoch)
        a = rng.permutation(anchors)
        want_pos, u = rng.random(len(a)) < 0.5, rng.random(len(a))
        p_idx, p_iou = np.full(len(a), -1), np.zeros(len(a), dtype=np.float32)
        for j, x in enumerate(a):
            if len(pos[x][0]):
                k = int(u[j] * len(pos[x][0]))
                p_idx[j], p_iou[j] = pos[x][0][k], pos[x][1][k]
        neg = T.sample_negatives(rng, a, db, allowed, mined, args.negatives, args.hard_temp)
        use_pos = (want_pos & (p_idx >= 0)) | (neg < 0)
        return a, np.where(use_pos, p_idx, neg), np.where(use_pos, p_iou, 0.0).astype(np.float32)

    # ---- training ---------------------------------------------------------------------------
    latest = (-1, None)  # (epochs completed, db embeddings): validation's, reused by the next refresh
    clock, train_time, images_seen, ran = T.timer(), 0.0, 0, 0
    for epoch in range(start_epoch, args.epochs):
        if args.stop_after is not None and ran >= args.stop_after:
            break
        if args.negatives != 'uniform' and epoch > 0 and epoch % args.refresh_every == 0 and mined_epoch != epoch:
            mined = latest[1] if latest[0] == epoch else embed_db()
            mined_epoch = epoch
        plan_a, plan_p, plan_y = make_plan(epoch)

        def make_sample(r, epoch=epoch):
            rng = T.derive_rng(args.seed, 'teacher-aug', epoch, r)
            a, p = int(plan_a[r]), int(plan_p[r])
            xa, fa = cache.view(a, rng, 0.0, args.jitter, args.hflip)  # the anchor stays a day image
            xp, fp = cache.view(p, rng, args.night_prob, args.jitter, args.hflip)
            s = {'images': torch.stack([xa, xp]), 'label': torch.tensor(plan_y[r])}
            if not args.image_only:
                ta, va = hflip_tokens(tokens[a], valid[a], raw.grid) if fa else (tokens[a], valid[a])
                tp, vp = hflip_tokens(tokens[p], valid[p], raw.grid) if fp else (tokens[p], valid[p])
                s['tokens'], s['valid'] = torch.stack([ta, tp]), torch.stack([va, vp])
            return s

        model.train()
        t0, losses = time.perf_counter(), []
        bar = tqdm(T.loader(len(plan_a), make_sample, args.batch_size, d, args.workers),
                   desc=f"epoch {epoch + 1}/{args.epochs}", unit="step", leave=False, disable=not d.main)
        for batch in bar:
            lr = T.lr_at(step, schedule)
            for g in optimizer.param_groups:
                g['lr'] = lr
            img = batch['images'].to(d.device, non_blocking=True)
            b = img.shape[0]
            x = torch.cat([img[:, 0], img[:, 1]])  # anchors then partners: one forward per step
            with autocast():
                if args.image_only:
                    emb = model(x)
                else:
                    tok = batch['tokens'].to(d.device, non_blocking=True)
                    val = batch['valid'].to(d.device, non_blocking=True)
                    emb = model(x, torch.cat([tok[:, 0], tok[:, 1]]).float(), torch.cat([val[:, 0], val[:, 1]]))
            emb = emb.float()
            loss = contrastive_loss(emb[:b], emb[b:], batch['label'].to(d.device), args.margin)
            grad_norm = T.optimizer_step(model, optimizer, scaler, loss, args.grad_clip)
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.1e}")
            tb.scalars({'loss': losses[-1], 'lr': lr, 'grad_norm': grad_norm}, step, 'train/')
        dt = time.perf_counter() - t0
        pairs = len(losses) * args.batch_size  # global
        train_time, images_seen, ran = train_time + dt, images_seen + 2 * pairs, ran + 1
        completed = epoch + 1
        line = (f"epoch {completed}/{args.epochs} loss {np.mean(losses) if losses else float('nan'):.4f} "
                f"lr {lr if losses else 0:.2e} {pairs / dt:.1f} pairs/s ({2 * pairs / dt:.1f} img/s)")
        tb.scalars({'epoch_loss': float(np.mean(losses)) if losses else float('nan'),
                    'pairs_per_s': pairs / dt, 'images_per_s': 2 * pairs / dt}, step, 'train/')

        # ---- validation and checkpoints -------------------------------------------------------
        if completed == args.epochs or (args.val_every and completed % args.val_every == 0):
            gallery = embed_db()
            latest = (completed, gallery)
            metrics = T.validate(raw, gallery, embed, val_idx, db, args, d, autocast, completed)
            tb.scalars({k: v for k, v in metrics.items() if k != 'epoch'}, step, 'val/')
            line += " | " + T.describe(metrics)
            if T.is_better(metrics, best):
                best = dict(metrics)
                line += " (best)"
        rng_states = T.gather_rng(d)
        if d.main:
            T.save_epoch(out, model, optimizer, scaler, best, completed, kind=kind, step=step, schedule=schedule,
                         metrics=metrics, rng=rng_states, args=args, extra={'mined': mined, 'mined_epoch': mined_epoch})
        T.barrier(d)
        log(line)

    # ---- summary ----------------------------------------------------------------------------
    done = start_epoch + ran
    if d.main and not (out / 'best.pt').exists() and (out / 'last.pt').exists():
        # no validation ran yet (e.g. stopped early): the latest weights stand in
        shutil.copyfile(out / 'last.pt', out / 'best.pt')
    summary = {'kind': kind, 'finished': done >= args.epochs, 'epochs_done': done, 'epochs': args.epochs,
               'steps': step, 'config': raw.config, 'preset': args.preset, 'processes': d.world,
               'device': str(d.device), 'best': best, 'last': metrics, 'negatives': args.negatives,
               'train_seconds': round(train_time, 2), 'wall_seconds': round(clock(), 2),
               'images_per_s': round(images_seen / train_time, 2) if train_time else None,
               'pairs_per_s': round(images_seen / 2 / train_time, 2) if train_time else None}
    if d.main:
        T.write_summary(out, summary)
        log(f"{kind}: {done}/{args.epochs} epochs, {summary['images_per_s']} img/s in training, "
            f"{summary['wall_seconds']} s in all; best {T.describe(best or {})} -> {out}")
    print(f"rank {d.rank}: weights sha256 {T.weights_checksum(model)}", flush=True)
    tb.close()
    T.cleanup(d)
    return summary


if __name__ == "__main__":
    run_cli(main)
