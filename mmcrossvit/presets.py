"""Every step's settings, in one table: `PRESETS[preset][step]`.

    paper  the authors' settings, for the real Aachen Day-Night on GPUs
    demo   the synthetic demo scene on 2 CPU cores in minutes (what `make demo` runs)
    tiny   seconds, for the tests

A step run by hand with `--preset demo` does exactly what `make demo` runs; any explicit flag
overrides its preset value, and each step records the resolved settings it ran with
(outputs/<name>/settings/<step>.json). `common` holds what every step shares.
"""
from __future__ import annotations

import argparse
import copy

STEPS = ("generate", "preprocess", "tokens", "teacher", "student", "pairs", "localize", "evaluate")

_PAPER = {
    "common": dict(seed=0, val_fold=0),
    # no synthetic scene: the paper preset runs on real data
    "generate": None,
    "preprocess": dict(max_image_size=1600, max_num_features=8192, first_octave=-1, peak_threshold=0.02 / 3,
                       pairs="poses", num_pairs=20, max_pair_angle=60.0, ratio=0.8, max_epipolar_error=4.0,
                       contrast="none", affine_shape=False, domain_size_pooling=False, min_pair_matches=15,
                       two_view_tracks=False, min_tri_angle=1.5,
                       mapper="triangulation", min_shared=8, z_thresh=3.0, folds=5,
                       # extraction gains from processes (0: one per core), matching not (docs/performance.md)
                       workers=0, match_workers=1, device="auto"),
    "tokens": dict(mode="sfm", grid=14, dim=192, ray_depth=None, pos_ratio=1024.0, rot_ratio=8.0),
    # backbone crossvit: CrossViT-tiny, as the paper (which starts it from ImageNet: --pretrained / --init-from)
    "teacher": dict(backbone="crossvit", freeze=4, img_size=240, embed_dim=1000, epochs=1000, batch_size=32, optimizer="sgd", lr=1e-4,
                    momentum=0.9, weight_decay=0.0, schedule="constant", warmup_epochs=0.0, min_lr_ratio=0.0,
                    grad_clip=0.0, night_prob=0.5, cyclegan=True, hflip=0.0, jitter=0.0, crop_scale=1.0,
                    portrait_prob=0.0, roll=0.0, val_every=10, eval_batch_size=64, margin=0.5, negatives="hard",
                    refresh_every=10, hard_temp=0.1,
                    # torch CPU threads: fixed, since the float results depend on it (ignored on GPUs)
                    threads=1),
    # the KD schedule is ours: the authors published none
    "student": dict(backbone="crossvit", freeze=4, img_size=240, embed_dim=1000, epochs=500, batch_size=32, optimizer="sgd", lr=1e-4,
                    momentum=0.9, weight_decay=0.0, schedule="constant", warmup_epochs=5.0, min_lr_ratio=0.0,
                    grad_clip=0.0, night_prob=0.5, cyclegan=True, hflip=0.0, jitter=0.0, crop_scale=1.0,
                    portrait_prob=0.0, roll=0.0, val_every=10, eval_batch_size=64, sigma=1.0, delta=1.0,
                    regression=0.0, threads=1),
    # small_map: fewer database images train nothing (a choice: even at the demo's 300, training did not beat
    # the untrained ImageNet encoder's R@1, docs/descriptor.md); retrieval is then exhaustive or that encoder's
    "pairs": dict(num_retrieved=100, num_db_neighbours=200, batch_size=16, index="auto", nprobe=16, ef_search=128,
                  small_map=100),
    # what each localization setting does: docs/localization.md; why the demo's differ: docs/demo.md
    "localize": dict(num_retrieved=None, oracle_num_retrieved=100, covisibility=False, ratio=0.8,
                     # re-ranking off, as in the paper; when on, scored on 3D points and PnP-verified (cheaper, fewer wrong)
                     rerank=0, rerank_keep=100, rerank_points=True, rerank_pnp=30, rerank_agree=5.0,
                     rerank_fallback="best",
                     # hloc's 12 px at Aachen's 1600-px queries, in proportion for smaller ones
                     ransac_max_error=12.0, ransac_ref_size=1600, min_inliers=12,
                     # the extra rules off, as in the paper
                     min_coverage=0.0, max_rival_ratio=0.0, rival_radius=5.0,
                     # a rejected pose is still written, as hloc writes every pose RANSAC finds
                     unverified_pose="estimate",
                     # one process: more were measured slower on 2 and on 16 cores (docs/performance.md)
                     workers=1, device="auto"),
    # without query ground truth: this many database images localized from the others' (mmcrossvit/holdout.py)
    "evaluate": dict(holdout_images=50),
}


def _derive(base: dict, **changes: dict | None) -> dict:
    out = copy.deepcopy(base)
    for step, values in changes.items():
        out[step] = None if values is None else {**(out[step] or {}), **values}
    return out


# The synthetic town (datasets/synthetic_town): scene size and rendering.
_SCENE = dict(supersample=2, street_width=12.0, min_height=8.0, max_height=20.0, query_focal_min=0.65,
              query_focal_max=1.05, max_distortion=0.03, portrait_fraction=0.2, jpeg_quality=95,
              night_db=False, night_db_scale=0.5)

PRESETS: dict[str, dict] = {
    "paper": _PAPER,
    # demo: 7 x 7 token grids (14 x 14 makes each step ~3x slower); training in minutes on 2 cores
    "demo": _derive(
        _PAPER,
        generate=dict(_SCENE, num_db=300, num_day=50, num_night=50, width=640, height=480, blocks_x=4,
                      blocks_y=4, block_size=30.0, num_styles=7, facade_ppm=32.0, ground_ppm=16.0,
                      detail_ppm=96.0, detail_tile=2048, workers=2, night_db=True, night_db_scale=0.375),
        # denser triangulation and affine-adapted SIFT: the measured levers on the oracle (docs/studies.md)
        preprocess=dict(max_image_size=1024, min_pair_matches=5, two_view_tracks=True, affine_shape=True),
        tokens=dict(grid=7),
        # the ImageNet encoder as the image branch, stages 0-3 kept (docs/descriptor.md)
        teacher=dict(backbone="lite0", freeze=4, img_size=112, epochs=10, batch_size=16, optimizer="adamw", lr=3e-4, weight_decay=0.05,
                     schedule="cosine", warmup_epochs=1.0, min_lr_ratio=0.01, grad_clip=1.0, hflip=0.5,
                     jitter=0.2, val_every=5, refresh_every=3,
                     # both cores, fixed: the float results depend on the thread count
                     threads=2),
        # the encoder under GeM at 256 px, stages 0-4 kept, with the recipe measured best (docs/descriptor.md)
        student=dict(backbone="lite0", freeze=5, img_size=256, epochs=12, batch_size=32, optimizer="adamw", lr=2e-4, weight_decay=0.05,
                     schedule="cosine", warmup_epochs=1.0, min_lr_ratio=0.01, grad_clip=1.0, hflip=0.5,
                     jitter=0.2, val_every=4, sigma="auto", regression=1.0, crop_scale=0.6, portrait_prob=0.25,
                     roll=5.0, threads=2),
        pairs=dict(num_retrieved=20),
        # verify the top 100 before PnP, and the two rules that kept wrong poses from counting (docs/demo.md)
        localize=dict(oracle_num_retrieved=20, rerank=100, rerank_keep=20, min_coverage=0.02, rerank_fallback="scores",
                      max_rival_ratio=0.5),
    ),
    "tiny": _derive(
        _PAPER,
        generate=dict(_SCENE, num_db=40, num_day=5, num_night=5, width=320, height=240, blocks_x=2,
                      blocks_y=2, block_size=24.0, num_styles=5, facade_ppm=24.0, ground_ppm=12.0,
                      detail_ppm=64.0, detail_tile=1024, workers=1),
        preprocess=dict(first_octave=0, num_pairs=10, min_pair_matches=5, two_view_tracks=True),
        tokens=dict(grid=7),
        teacher=dict(img_size=120, embed_dim=32, epochs=2, batch_size=8, optimizer="adamw", lr=1e-3,
                     schedule="cosine", min_lr_ratio=0.1, grad_clip=1.0, hflip=0.5, jitter=0.2, val_every=1,
                     refresh_every=1),
        student=dict(img_size=120, embed_dim=32, epochs=2, batch_size=8, optimizer="adamw", lr=5e-4,
                     warmup_epochs=0.0, schedule="cosine", min_lr_ratio=0.1, grad_clip=1.0, hflip=0.5,
                     jitter=0.2, val_every=1),
        # the tests train on the tiny town's 40 images
        pairs=dict(num_retrieved=10, small_map=0),
        localize=dict(oracle_num_retrieved=10, rerank_keep=10),
        evaluate=dict(holdout_images=8),
    ),
}
DEFAULT_PRESET = "demo"


def step_settings(preset: str, step: str) -> dict:
    """The preset's values for one step, `common` included."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; choose from {', '.join(STEPS)}")
    values = PRESETS[preset][step]
    if values is None:
        raise ValueError(f"preset {preset!r} has no {step!r} settings")
    return {**PRESETS[preset]["common"], **values}


def resolve(preset: str, step: str, overrides: dict | None = None) -> argparse.Namespace:
    """The settings a step runs with: its preset's values, then `overrides` (explicit flags)."""
    return argparse.Namespace(**{**step_settings(preset, step), **(overrides or {}), "preset": preset})


def epilog(step: str) -> str:
    """A table of the step's preset values, for --help."""
    names = [p for p in PRESETS if PRESETS[p][step] is not None]
    keys = list(step_settings(names[0], step))
    head = "presets (an explicit flag overrides its preset value):\n  " + " " * 20 + "".join(f"{p:>15}" for p in names)
    rows = [f"  {k:<20}" + "".join(f"{_fmt(step_settings(p, step).get(k)):>15}" for p in names) for k in keys]
    return "\n".join([head, *rows])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)
