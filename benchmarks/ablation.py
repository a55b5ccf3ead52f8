"""Ablation of the retrieval descriptor on a preprocessed run (e.g. after `make demo`).

    python benchmarks/ablation.py --dataset datasets/demo --preset demo

Trains in-process, with the same preset and budget, whatever is not there yet, then tabulates the best
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

import dataclasses
import shutil

from report import finish, run_parser  # noqa: E402  (puts the repository on sys.path)

from mmcrossvit import cli  # noqa: E402
from mmcrossvit.paths import RunLayout  # noqa: E402
from mmcrossvit.steps import execute  # noqa: E402
from mmcrossvit.storage import read_json  # noqa: E402


def main(argv=None) -> dict:
    from mmcrossvit.steps import student, teacher, tokens
    args = run_parser(__doc__).parse_args(argv)
    run = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    seed = getattr(args, "seed", 0)

    def train(module, **overrides):
        return lambda r=run: execute(module, r, cli.settings(module, args.preset, seed=seed, **overrides))

    rows = {
        "teacher (sfm tokens, hard negatives)": (run.teacher, train(teacher)),
        "image-only CrossViT (same loss and budget)": (run.train_dir("image_only"), train(teacher, image_only=True)),
        "distilled student": (run.student, train(student)),
        "teacher, authors' negatives (far first)":
            (run.ablation("teacher_authors"), train(teacher, negatives="authors", out=run.ablation("teacher_authors"))),
        "teacher, uniform negatives":
            (run.ablation("teacher_uniform"), train(teacher, negatives="uniform", out=run.ablation("teacher_uniform"))),
    }
    # rays tokens live in their own database root, beside a copy of the spatial DB
    rays = dataclasses.replace(run, database_root=run.database_root / "ablation_rays")
    if not rays.tokens.exists():
        rays.database.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run.spatial_db, rays.spatial_db)
        execute(tokens, rays, cli.settings(tokens, args.preset, seed=seed, mode="rays"))
    rows["teacher, rays tokens (authors' choice)"] = (
        run.ablation("teacher_rays"), lambda: train(teacher, out=run.ablation("teacher_rays"))(rays))

    table = {}
    for label, (out, train_row) in rows.items():
        if not (out / "summary.json").exists() or not read_json(out / "summary.json").get("finished"):
            train_row()
        s = read_json(out / "summary.json")
        table[label] = {"best": s["best"], "epochs": s["epochs_done"], "train_seconds": s["train_seconds"],
                        "images_per_s": s["images_per_s"]}
    keys = [k for k in ("R@1", "R@5", "R@10", "night_R@1", "night_R@5") if any(k in (r["best"] or {}) for r in table.values())]
    md = ["| model | " + " | ".join(keys) + " | epochs | train s | img/s |", "|---|" + "---|" * (len(keys) + 3)]
    for label, r in table.items():
        b = r["best"] or {}
        md.append(f"| {label} | " + " | ".join(f"{b[k]:.3f}" if b.get(k) is not None else "-" for k in keys)
                  + f" | {r['epochs']} | {r['train_seconds']:.0f} | {r['images_per_s']} |")
    head = (f"Held-out fold validation on `{run.name}` (preset `{args.preset}`): Recall@K of held-out database "
            "anchors among all database images; `night_` = the anchors at night (their `_cyclegan` rendering "
            "where the dataset has one, else simulated).\n")
    return finish(str(args.results / "ablation"), [head, *md], table)


if __name__ == "__main__":
    main()
