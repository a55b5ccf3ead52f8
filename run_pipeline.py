"""The whole chain, step by step, in one process, with each step's time: what `make demo` runs.

    python run_pipeline.py --dataset datasets/demo --preset demo --generate

Steps (each one skips its work when its outputs are already complete):
  0. generate   synthetic scenes of the preset (only with --generate)
  1. preprocess SIFT, triangulation with the known poses, spatial-contrastive database
  2. tokens     3D spatial tokens (RoPE) per database image
  3. teacher    multi-modal CrossViT, spatial contrastive learning
  4. student    image-only CrossViT, Gaussian-kernel embedding transfer
  5. pairs      student retrieval: top-K database images per query
  6. localize   PnP-RANSAC per query -> Pose_Estimation_Results.txt
  7. oracle     localization with ground-truth retrieval (only with ground truth)
  8. evaluate   accuracy tables; without ground truth, the map's hold-out check
  then, with --notebook, final_pipeline.ipynb executed against the run (.ipynb and .html)
A map with fewer than --small-map database images trains nothing (steps 2-4 are skipped, and the
run says so): every database image is a candidate of every query when there are no more of them
than the pairs step's K (localize --retrieval all), else the ImageNet encoder, untrained on the
scene, retrieves them (pairs --descriptor imagenet).
With --photos DIR the dataset is first made from a folder of one's own photographs (datasets/
photos.py: no poses or intrinsics needed, some photos held out to check the map); with
--queries DIR a folder of new photographs is added as queries of a finished map and localized
without retraining (`make map`, `make localize`).
Every setting comes from the preset (mmcrossvit/presets.py): `python <step script> --preset P`
runs a step exactly as this does. Presets: tiny (tests), demo (CPU, minutes), paper (GPUs).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from mmcrossvit import cli, presets
from mmcrossvit.layout import GT_POSES, Dataset
from mmcrossvit.paths import RunLayout
from mmcrossvit.runlock import run_lock
from mmcrossvit.storage import changed_since, write_json

TRAINING_STEPS = ("tokens", "teacher", "student", "pairs")
STEP_NAMES = ("generate", "preprocess", "tokens", "teacher", "student", "pairs", "localize", "oracle", "evaluate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_run_args(p)
    p.add_argument("--generate", nargs="?", const="", default=None, metavar="PRESET",
                   help="first generate the synthetic scene of --preset (or of PRESET) into --dataset")
    p.add_argument("--photos", type=Path, default=None, metavar="DIR",
                   help="first make --dataset from this folder of photographs (datasets/photos.py map)")
    p.add_argument("--holdout-every", type=int, default=None, metavar="K",
                   help="with --photos: every K-th registered photo is held out as a query (datasets/photos.py)")
    p.add_argument("--queries", type=Path, default=None, metavar="DIR",
                   help="first add this folder of photographs as queries of --dataset, then localize them "
                        "against the finished map (from the pairs step: nothing is retrained)")
    p.add_argument("--small-map", type=int, default=None, metavar="N",
                   help="a database of fewer than N images trains no teacher or student (default: the preset's "
                        "pairs small_map; 0: always train)")
    p.add_argument("--from-step", choices=STEP_NAMES[1:], default=None, help="skip the steps before this one")
    p.add_argument("--notebook", action="store_true",
                   help="last, execute final_pipeline.ipynb against the run: outputs/<name>/final_pipeline.html "
                        "(and .ipynb, with outputs)")
    return p.parse_args(argv)


def step_modules() -> dict:
    from mmcrossvit.steps import evaluate, localize, pairs, preprocess, student, teacher, tokens
    return {"preprocess": preprocess, "tokens": tokens, "teacher": teacher, "student": student, "pairs": pairs,
            "localize": localize, "oracle": localize, "evaluate": evaluate}


def main(argv=None) -> dict:
    args = parse_args(argv)
    seed = getattr(args, "seed", presets.PRESETS[args.preset]["common"]["seed"])
    run = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    if args.photos is not None:
        from datasets.photos import convert
        print(f"== photos: a map dataset from {args.photos} -> {args.dataset}", flush=True)
        t = time.time()
        kw = {} if args.holdout_every is None else {"holdout_every": args.holdout_every}
        convert(args.photos, args.dataset, args.preset, seed=seed, **kw)
        photos_s = round(time.time() - t, 1)
    if args.queries is not None:
        from datasets.photos import add_queries
        print(f"== queries: the photos of {args.queries} as queries of {args.dataset}", flush=True)
        add_queries(args.queries, args.dataset)
        args.from_step = args.from_step or "pairs"  # the map is finished: nothing is retrained
    if args.generate is None:  # bad input stops here, before outputs/<name>/ is made
        if args.from_step in (None, "preprocess"):
            pre = step_modules()["preprocess"]
            pre.check(run, cli.settings(pre, args.preset, seed=seed))
        else:
            Dataset(args.dataset).images_dir
    timings: dict[str, float] = {} if args.photos is None else {"photos": photos_s}
    if args.generate is not None:
        from datasets.synthetic_town import generate
        t = time.time()
        print(f"== generate: synthetic scene of preset {args.generate or args.preset} -> {args.dataset}", flush=True)
        generate(args.dataset, preset=args.generate or args.preset, seed=seed)
        timings["generate"] = round(time.time() - t, 1)
    started = time.time()
    with run_lock(run):  # the whole chain, not just each step: no other run slips in between
        timings.update(_run_steps(args, run, seed))
    timings["total"] = round(sum(timings.values()), 1)
    if "generate" in timings or changed_since(started, run.out, run.database):
        write_json(run.timings, timings)  # a run whose steps were all up to date writes nothing
    print("\nstep times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    if args.notebook:
        from mmcrossvit import notebook
        t = time.time()
        ipynb, html = notebook.write(run)
        print(f"Notebook, executed against this run ({round(time.time() - t, 1)} s): {html} (and {ipynb.name})")
    if not (Path(args.dataset) / GT_POSES).exists():
        print(f"Results: {run.results} — no ground truth here; submit it to the Visual Localization Benchmark.")
    return timings


def database_size(run: RunLayout) -> int | None:
    """Database images of the run's spatial database (those in its SfM model); None before preprocessing."""
    try:
        return len(run.db_images_csv.read_text().splitlines()) - 1
    except FileNotFoundError:
        return None


def small_map_mode(run: RunLayout, small_map: int, preset: str) -> str | None:
    """None: a map large enough to train on. Else the candidates without training: "all" (every database
    image) when the database is no larger than what retrieval would return (the pairs step's K), else
    "imagenet" (the untrained ImageNet encoder's top K)."""
    n = database_size(run)
    if n is None or n >= small_map:
        return None
    return "all" if n <= presets.step_settings(preset, "pairs")["num_retrieved"] else "imagenet"


def _run_steps(args, run: RunLayout, seed: int) -> dict:
    from mmcrossvit.steps import execute
    timings = {}
    modules = step_modules()
    names = list(modules)
    start = names.index(args.from_step) if args.from_step else 0
    has_gt = (Path(args.dataset) / GT_POSES).exists()
    for name in names[start:]:
        if name == "oracle" and not has_gt:
            print(f"== {name}: skipped (no {GT_POSES}; evaluate runs the map's hold-out check instead)")
            continue
        module = modules[name]
        extra = {"retrieval": "oracle"} if name == "oracle" else {}
        small = args.small_map if args.small_map is not None else presets.step_settings(args.preset, "pairs")["small_map"]
        mode = small_map_mode(run, small, args.preset) if name in TRAINING_STEPS + ("localize",) else None
        if mode and (name in TRAINING_STEPS[:-1] or (name == "pairs" and mode == "all")):
            why = ("every database image is a candidate of every query" if mode == "all" else
                   "retrieval by the ImageNet encoder, untrained on the scene")
            print(f"== {name}: skipped (a small map: {database_size(run)} database images, fewer than the "
                  f"small-map line {small}; {why})")
            continue
        if mode == "all" and name == "localize":
            extra = {"retrieval": "all"}
        elif name == "pairs":  # this run's line (--small-map), not the step's own rule, decides
            extra = {"descriptor": "imagenet" if mode == "imagenet" else "student"}
        cfg = cli.settings(module, args.preset, seed=seed, **extra)
        print(f"== {name} (preset {args.preset})", flush=True)
        t = time.time()
        try:
            execute(module, run, cfg)
        except BaseException:
            print(f"step '{name}' failed; fix it and re-run (finished steps are skipped, "
                  f"or use --from-step {name})", flush=True)
            raise
        timings[name] = round(time.time() - t, 1)
        print(f"== {name}: {timings[name]} s", flush=True)
    return timings


if __name__ == "__main__":
    cli.run_cli(main)
