"""The whole chain, step by step, with each step's time: what `make demo` and `make pipeline` run.

    python run_pipeline.py --dataset datasets/demo --preset demo [--generate demo]

Steps (each one skips its work when its outputs are already complete):
  0. generate   synthetic scenes (only with --generate PRESET)
  1. preprocess SIFT, triangulation with the known poses, spatial-contrastive database
  2. tokens     3D spatial tokens (RoPE) per database image
  3. teacher    multi-modal CrossViT, spatial contrastive learning
  4. student    image-only CrossViT, Gaussian-kernel embedding transfer
  5. pairs      student retrieval: top-K database images per query
  6. localize   PnP-RANSAC per query -> Pose_Estimation_Results.txt
  7. oracle     localization with ground-truth retrieval (only with ground truth)
  8. evaluate   accuracy tables (only with ground truth)
Presets: tiny (tests), demo (CPU, minutes), paper (the authors' settings, for GPUs).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from mmcrossvit.layout import GT_POSES
from mmcrossvit.paths import run_paths
from mmcrossvit.storage import write_json

# Per-preset extra flags of each step. The SfM settings of tiny/demo trade features for speed.
PRESETS = {
    "tiny": {"preprocess": ["--first-octave", "0", "--num-pairs", "10"],
             "tokens": [], "teacher": ["--preset", "tiny"], "student": ["--preset", "tiny"],
             "pairs": ["--num-retrieved", "10"], "localize": [], "oracle": ["--num-retrieved", "10"]},
    "demo": {"preprocess": ["--first-octave", "0", "--peak-threshold", "0.002", "--max-image-size", "1024"],
             "tokens": ["--grid", "7"], "teacher": ["--preset", "demo"], "student": ["--preset", "demo"],
             "pairs": ["--num-retrieved", "20"], "localize": [], "oracle": ["--num-retrieved", "20"]},
    "paper": {"preprocess": [], "tokens": [], "teacher": ["--preset", "paper"], "student": ["--preset", "paper"],
              "pairs": ["--num-retrieved", "100"], "localize": [], "oracle": ["--num-retrieved", "100"]},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True, help="dataset folder in the documented layout")
    p.add_argument("--name", help="run name (default: dataset folder name)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo", help="settings of every step")
    p.add_argument("--generate", choices=["tiny", "demo"], help="first generate synthetic scenes of this preset into --dataset")
    p.add_argument("--seed", type=int, default=0, help="seed for generation and training")
    p.add_argument("--outputs", type=Path, default=Path("outputs"), help="root of per-run outputs")
    p.add_argument("--database-root", type=Path, default=Path("DataBase"), help="root of the spatial databases")
    p.add_argument("--from-step", default=None, help="skip the steps before this one (by name)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    name = args.name or args.dataset.resolve().name
    paths = run_paths(name, args.outputs, args.database_root)
    py = [sys.executable]
    common = ["--dataset", str(args.dataset), "--name", name, "--outputs", str(args.outputs)]
    dbroot = ["--database-root", str(args.database_root)]
    pre = PRESETS[args.preset]
    seed = ["--seed", str(args.seed)]
    steps = []
    if args.generate:
        steps.append(("generate", py + ["-m", "datasets.synthetic_town", "--preset", args.generate,
                                        "--out", str(args.dataset), "--seed", str(args.seed)]))
    steps += [
        ("preprocess", py + ["preprocessing.py", *common, *dbroot, *pre["preprocess"]]),
        ("tokens", py + ["generate_RoPE_embeddings.py", "--name", name, "--outputs", str(args.outputs), *dbroot, *pre["tokens"]]),
        ("teacher", py + ["train_multimodal_crossvit_teacher.py", *common, *dbroot, *seed, *pre["teacher"]]),
        ("student", py + ["train_knowledge_distillation_student.py", *common, *dbroot, *seed, *pre["student"]]),
        ("pairs", py + ["generate_localization_pairs.py", *common, *pre["pairs"]]),
        ("localize", py + ["localize.py", *common, *pre["localize"]]),
        ("oracle", py + ["localize.py", *common, "--retrieval", "oracle", "--tag", "oracle", *pre["oracle"]]),
        ("evaluate", py + ["evaluate.py", *common, *dbroot]),
    ]
    names = [s for s, _ in steps]
    if args.from_step and args.from_step not in names:
        raise SystemExit(f"error: --from-step must be one of {', '.join(names)}")
    start = names.index(args.from_step) if args.from_step else 0
    timings = {}
    for step, cmd in steps[start:]:
        if step in ("oracle", "evaluate") and not (args.dataset / GT_POSES).exists():
            print(f"== {step}: skipped (no {GT_POSES})")
            continue
        print(f"== {step}: {' '.join(cmd)}", flush=True)
        t = time.time()
        rc = subprocess.call(cmd)
        timings[step] = round(time.time() - t, 1)
        if rc != 0:
            raise SystemExit(f"step '{step}' failed with exit code {rc}; fix it and re-run "
                             f"(finished steps are skipped, or use --from-step {step})")
        print(f"== {step}: {timings[step]} s", flush=True)
    timings["total"] = round(sum(timings.values()), 1)
    paths.out.mkdir(parents=True, exist_ok=True)
    write_json(paths.out / "timings.json", timings)
    print("\nstep times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    if not (args.dataset / GT_POSES).exists():
        print(f"Results: {paths.results} — no ground truth here; submit it to the Visual Localization Benchmark.")
    return timings


if __name__ == "__main__":
    main()
