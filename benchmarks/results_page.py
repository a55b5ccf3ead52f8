"""Assemble RESULTS.md: every measured table in one page, plus two plots.

    python benchmarks/results_page.py --dataset datasets/demo

Reads benchmarks/results/*.md (efficiency, throughput, scale, cost curve, ablation, token reliance,
student retrieval, re-ranking; a figure a file links beside itself, like cost_curve.png, is linked
from the page) and
outputs/<name>/evaluation.{md,json}; draws localization recall against the position threshold
(student vs oracle retrieval, day and night) and the retrieval P@K / Recall@K curves into
benchmarks/results/*.png. Nothing is typed in by hand: re-run the producing commands first.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmcrossvit.evaluation import load_results  # noqa: E402
from mmcrossvit.geometry import pose_error  # noqa: E402
from mmcrossvit.layout import Dataset  # noqa: E402
from mmcrossvit.paths import OUTPUTS, RunLayout  # noqa: E402
from mmcrossvit.storage import atomic_path, read_json, write_text  # noqa: E402

SECTIONS = [("Efficiency (counted)", "efficiency.md", "python benchmarks/efficiency.py"),
            ("Throughput", "throughput.md", "python benchmarks/throughput.py"),
            ("Pipeline scale", "scale.md", "python benchmarks/scale.py --log outputs/demo/localization_log.jsonl"),
            ("Database pairs from known poses at Aachen's size and at 100k", "scale_pairs.md",
             "python benchmarks/scale.py --cases pairs --out benchmarks/results/scale_pairs"),
            ("Pipeline cost curve (time, memory and disk of every step against the database size)", "cost_curve.md",
             "python benchmarks/cost_curve.py --sizes 100 300 1000"),
            ("Ablation (demo, held-out fold)", "ablation.md", "python benchmarks/ablation.py --dataset datasets/demo"),
            ("Real photographs: Strecha et al.'s scenes with laser-scan ground truth", "real_scenes.md",
             "python benchmarks/real_scenes.py --datasets datasets/strecha_* --presets paper demo "
             "--variants no-affine affine"),
            ("Your own photos: Strecha's scenes mapped from their images alone", "own_photos.md",
             "python benchmarks/own_photos.py --scenes path/to/Benchmarking_Camera_Calibration_2008/* --preset demo"),
            ("Student retrieval (the from-scratch CrossViT): recipes over 3 seeds", "student_retrieval.md",
             "python benchmarks/student_retrieval.py --dataset datasets/demo --preset demo --seeds 0 1 2"),
            ("Descriptor-matching kernel (Intel Xeon)", "matching_kernel.md",
             "python benchmarks/matching_kernel.py --features outputs/demo/features.h5 --pairs outputs/demo/pairs-db.txt"),
            ("Descriptor-matching kernel (AMD EPYC, AVX2 only: no int8 products)", "matching_kernel_epyc.md",
             "python benchmarks/matching_kernel.py --features outputs/cost_curve/outputs/n100/features.h5 "
             "--pairs outputs/cost_curve/outputs/n100/pairs-db.txt --num-pairs 100 "
             "--out benchmarks/results/matching_kernel_epyc"),
            ("Worker processes (this 2-core CPU)", "workers.md",
             "python benchmarks/workers.py --dataset datasets/demo --preset demo"),
            ("Worker processes (16 cores, the GPU host)", "workers_16cores.md",
             "python benchmarks/workers.py --dataset datasets/demo --preset demo --workers 1 2 4 8 16"),
            ("Retrieval at city scale: exact against faiss indexes", "retrieval_index.md",
             "python benchmarks/retrieval_index.py"),
            ("CUDA paths against the CPU (H100)", "gpu_paths_demo.md",
             "python benchmarks/gpu_paths.py --dataset datasets/demo --preset demo")]


def save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=Path("datasets/demo"), help="dataset of the evaluated run")
    p.add_argument("--name", help="run name (default: dataset folder name)")
    p.add_argument("--outputs", type=Path, default=OUTPUTS, help="root of per-run outputs")
    p.add_argument("--page", type=Path, default=REPO / "RESULTS.md", help="the page to write")
    args = p.parse_args(argv)
    res_dir = REPO / "benchmarks/results"
    ds = Dataset(args.dataset)
    paths = RunLayout.create(args.dataset, args.name, args.outputs)
    md = ["# Results", "",
          "Every table is produced by the command above it, on the machine each file names; this page is "
          "assembled by `python benchmarks/results_page.py`.", ""]

    ev_path = paths.evaluation_md
    if ev_path.exists() and ds.gt_poses:
        md += [f"## Localization and retrieval on `{paths.name}`", "", "`make demo` (or `python evaluate.py "
               f"--dataset {args.dataset}`)", "", ev_path.read_text().split("\n", 2)[2].strip(), ""]
        # recall vs position threshold (rotation threshold fixed at 10 degrees)
        ths = np.logspace(-2, 1.5, 60)
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, f, style in (("student", paths.results, "-"), ("oracle", paths.oracle_results, "--")):
            if not f.exists():
                continue
            est = load_results(f, ds)
            for cond, colour in (("day", "tab:orange"), ("night", "tab:blue")):
                qs = [q for q, v in ds.queries.items() if v.condition == cond and q in ds.gt_poses]
                e = np.array([pose_error(est[q], ds.gt_poses[q]) for q in qs])
                ax.plot(ths, [100 * np.mean((e[:, 0] <= t) & (e[:, 1] <= 10)) for t in ths], style, c=colour,
                        label=f"{label}, {cond}")
        ax.set_xscale("log")
        ax.set_xlabel("position threshold (m), rotation <= 10°")
        ax.set_ylabel("% queries localized")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, res_dir / "recall_vs_threshold.png")
        ev = read_json(paths.evaluation_json)
        if ev.get("retrieval"):
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
            for name, r in ev["retrieval"].items():
                ks = sorted(int(k) for k in r["P"])
                axes[0].plot(ks, [r["P"][str(k)] for k in ks], "o-", label=name)
                axes[1].plot(ks, [r["R"][str(k)] for k in ks], "o-", label=name)
            for a, t in zip(axes, ("P@K", "Recall@K")):
                a.set_xscale("log")
                a.set_xlabel("K")
                a.set_title(t)
                a.grid(alpha=0.3)
            axes[1].legend(fontsize=7)
            save(fig, res_dir / "retrieval_curves.png")
        md += ["![recall vs threshold](benchmarks/results/recall_vs_threshold.png)", "",
               "![retrieval curves](benchmarks/results/retrieval_curves.png)", ""]
    for title, fname, cmd in SECTIONS:
        f = res_dir / fname
        if f.exists():
            body = f.read_text().strip()
            if body.startswith("# "):
                body = body.split("\n", 1)[1].strip()
            # a figure or table the file names beside itself (e.g. cost_curve.png): as seen from the page
            body = re.sub(r"\]\(([^/():]+\.(?:png|md|json))\)", r"](benchmarks/results/\1)", body)
            md += [f"## {title}", "", f"`{cmd}`", "", body, ""]
    write_text(args.page, "\n".join(md) + "\n")
    print(f"-> {args.page}")
    return args.page


if __name__ == "__main__":
    main()
