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
  8. evaluate   accuracy tables (only with ground truth)
  then, with --notebook, final_pipeline.ipynb executed against the run (.ipynb and .html)
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

STEP_NAMES = ("generate", "preprocess", "tokens", "teacher", "student", "pairs", "localize", "oracle", "evaluate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_run_args(p)
    p.add_argument("--generate", nargs="?", const="", default=None, metavar="PRESET",
                   help="first generate the synthetic scene of --preset (or of PRESET) into --dataset")
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
    if args.generate is None:  # bad input stops here, before outputs/<name>/ is made
        if args.from_step in (None, "preprocess"):
            pre = step_modules()["preprocess"]
            pre.check(run, cli.settings(pre, args.preset, seed=seed))
        else:
            Dataset(args.dataset).images_dir
    timings: dict[str, float] = {}
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


def _run_steps(args, run: RunLayout, seed: int) -> dict:
    from mmcrossvit.steps import execute
    timings = {}
    modules = step_modules()
    names = list(modules)
    start = names.index(args.from_step) if args.from_step else 0
    has_gt = (Path(args.dataset) / GT_POSES).exists()
    for name in names[start:]:
        if name in ("oracle", "evaluate") and not has_gt:
            print(f"== {name}: skipped (no {GT_POSES})")
            continue
        module = modules[name]
        extra = {"retrieval": "oracle"} if name == "oracle" else {}
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
