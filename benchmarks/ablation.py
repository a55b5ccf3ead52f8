"""Ablation of the retrieval descriptor on a preprocessed run (e.g. after `make demo`).

    python benchmarks/ablation.py --dataset datasets/demo --preset demo

Trains, with the same preset and budget, whatever is not there yet, then tabulates the best
held-out-fold validation metrics (Recall@K of held-out database anchors, from each run's
summary.json):
  teacher (sfm tokens, hard negatives)     outputs/<name>/teacher           (the pipeline's)
  image-only CrossViT, same loss/pairs     outputs/<name>/image_only
  distilled student                        outputs/<name>/student           (the pipeline's)
  teacher, authors' negative weighting     outputs/<name>/ablation/teacher_authors
  teacher, uniform negatives               outputs/<name>/ablation/teacher_uniform
  teacher, rays tokens                     outputs/<name>/ablation/teacher_rays
Writes benchmarks/results/ablation.{md,json}.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmcrossvit.paths import run_paths  # noqa: E402
from mmcrossvit.storage import read_json, write_json, write_text  # noqa: E402


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    if subprocess.call(cmd, cwd=REPO) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True, help="dataset already run through preprocessing")
    p.add_argument("--name", help="run name (default: dataset folder name)")
    p.add_argument("--preset", default="demo", help="training preset for every row")
    p.add_argument("--grid", type=int, default=7, help="token grid of the rays tokens (match the pipeline's)")
    p.add_argument("--outputs", type=Path, default=Path("outputs"), help="root of per-run outputs")
    p.add_argument("--database-root", type=Path, default=Path("DataBase"), help="root of the spatial databases")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks/results", help="where the table goes")
    args = p.parse_args(argv)
    name = args.name or args.dataset.resolve().name
    paths = run_paths(name, args.outputs, args.database_root)
    py = sys.executable
    common = ["--dataset", str(args.dataset), "--name", name, "--outputs", str(args.outputs), "--preset", args.preset]
    teach = [py, "train_multimodal_crossvit_teacher.py", *common, "--database-root", str(args.database_root)]
    abl = paths.out / "ablation"
    rows = {
        "teacher (sfm tokens, hard negatives)": (paths.teacher, teach),
        "image-only CrossViT (same loss and budget)": (paths.out / "image_only", teach + ["--image-only"]),
        "distilled student": (paths.student, [py, "train_knowledge_distillation_student.py", *common,
                                              "--database-root", str(args.database_root)]),
        "teacher, authors' negatives (far first)": (abl / "teacher_authors", teach + ["--negatives", "authors", "--out", str(abl / "teacher_authors")]),
        "teacher, uniform negatives": (abl / "teacher_uniform", teach + ["--negatives", "uniform", "--out", str(abl / "teacher_uniform")]),
    }
    # rays tokens live in their own database root, beside a copy of the spatial DB
    rays_root = args.database_root / "ablation_rays"
    rays = run_paths(name, args.outputs, rays_root)
    if not rays.tokens.exists():
        rays.database.mkdir(parents=True, exist_ok=True)
        shutil.copy2(paths.spatial_db, rays.spatial_db)
        run([py, "generate_RoPE_embeddings.py", "--name", name, "--outputs", str(args.outputs),
             "--database-root", str(rays_root), "--mode", "rays", "--grid", str(args.grid)])
    rays_cmd = [py, "train_multimodal_crossvit_teacher.py", *common, "--database-root", str(rays_root),
                "--out", str(abl / "teacher_rays")]
    rows["teacher, rays tokens (authors' choice)"] = (abl / "teacher_rays", rays_cmd)

    table = {}
    for label, (out, cmd) in rows.items():
        if not (out / "summary.json").exists() or not read_json(out / "summary.json").get("finished"):
            run(cmd)
        s = read_json(out / "summary.json")
        table[label] = {"best": s["best"], "epochs": s["epochs_done"], "train_seconds": s["train_seconds"],
                        "images_per_s": s["images_per_s"]}
    keys = [k for k in ("R@1", "R@5", "R@10", "night_R@1", "night_R@5") if any(k in (r["best"] or {}) for r in table.values())]
    md = ["| model | " + " | ".join(keys) + " | epochs | train s | img/s |", "|---|" + "---|" * (len(keys) + 3)]
    for label, r in table.items():
        b = r["best"] or {}
        md.append(f"| {label} | " + " | ".join(f"{b[k]:.3f}" if k in b else "-" for k in keys)
                  + f" | {r['epochs']} | {r['train_seconds']:.0f} | {r['images_per_s']} |")
    text = (f"Held-out fold validation on `{name}` (preset `{args.preset}`): Recall@K of held-out database "
            "anchors among all database images; `night_` = the anchors night-simulated.\n\n" + "\n".join(md) + "\n")
    args.results.mkdir(parents=True, exist_ok=True)
    write_text(args.results / "ablation.md", text)
    write_json(args.results / "ablation.json", table)
    print(text)
    return table


if __name__ == "__main__":
    main()
