"""The CUDA code paths, run and compared with the CPU on one pipeline run (needs a GPU).

    python benchmarks/gpu_paths.py --dataset datasets/demo --preset demo [--parts matching localization training]

The run must be preprocessed (preprocessing.py) and, for training, have its tokens
(generate_RoPE_embeddings.py). Each part writes into a scratch folder (outputs/<name>/gpu-bench/):

    matching      the first --pairs database pairs, matched and epipolar-verified with --device cpu
                  and --device cuda (same worker count): seconds, and whether the match and two-view
                  tables are equal
    localization  every query with oracle retrieval, --device cpu and cuda: seconds, and whether the
                  results files are equal byte for byte
    training      the preset's teacher, then its student distilled from it, on CUDA for --epochs
                  each (no validation): steps, img/s and peak GPU memory (torch's allocator)
    sift          whether this pycolmap can extract SIFT on the GPU (the pycolmap-cuda12 wheel)

Writes <results>/gpu_paths_<preset>.{md,json}.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from report import finish, machine_info, markdown_table, run_parser  # noqa: E402  (puts the repository on sys.path)
from workers import db_rows  # noqa: E402

from mmcrossvit import cli, sfm  # noqa: E402
from mmcrossvit.colmap_io import read_pairs  # noqa: E402
from mmcrossvit.layout import Dataset  # noqa: E402
from mmcrossvit.paths import RunLayout  # noqa: E402
from mmcrossvit.steps import execute, localize, preprocess, student, teacher  # noqa: E402
from mmcrossvit.storage import read_json  # noqa: E402

PARTS = ("matching", "localization", "training", "sift")


def matching(run: RunLayout, preset: str, n_pairs: int, workers: int, scratch: Path) -> dict:
    ds = Dataset(run.dataset)
    pre = cli.settings(preprocess, preset)
    pairs = list(read_pairs(run.pairs_db))[:n_pairs]
    cams, poses = ds.reference
    out = {"pairs": len(pairs), "workers": workers}
    tables = {}
    for dev in ("cpu", "cuda"):
        db = scratch / f"database-{dev}.db"
        ids = sfm.create_database(sfm.reference_reconstruction(cams, poses), db)
        t = time.perf_counter()
        stats = sfm.match_and_verify(db, ids, pairs, run.features, cams, poses, pre.ratio, pre.max_epipolar_error,
                                     workers=workers, device=dev)
        out[f"{dev}_s"] = round(time.perf_counter() - t, 2)
        out["mean_matches"] = stats["mean_matches"]
        tables[dev] = db_rows(db)
    out["identical"] = tables["cpu"] == tables["cuda"]
    return out


def localization(run: RunLayout, preset: str, workers: int) -> dict:
    out = {"queries": len(Dataset(run.dataset).queries), "workers": workers}
    files = {}
    for dev in ("cpu", "cuda"):
        tag = f"gpu-bench-{dev}"
        t = time.perf_counter()
        execute(localize, run, cli.settings(localize, preset, retrieval="oracle", tag=tag, workers=workers,
                                            device=dev, overwrite=True))
        out[f"{dev}_s"] = round(time.perf_counter() - t, 2)
        files[dev] = run.results_file(tag).read_bytes()
        shutil.rmtree(run.localization_dir(tag), ignore_errors=True)
    out["identical"] = files["cpu"] == files["cuda"]
    return out


def training(run: RunLayout, preset: str, epochs: int, loader_workers: int, scratch: Path) -> list[dict]:
    rows = []
    for module, kind in ((teacher, "teacher"), (student, "student")):
        out_dir = scratch / kind
        extra = {"teacher": scratch / "teacher" / "best.pt"} if kind == "student" else {}
        cfg = cli.settings(module, preset, out=out_dir, epochs=epochs, val_every=0, device="cuda",
                           workers=loader_workers, overwrite=True, **extra)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        execute(module, run, cfg)
        torch.cuda.synchronize()
        s = read_json(out_dir / "summary.json")
        rows.append({"trainer": kind, "epochs": epochs, "steps": s["steps"], "batch_size": cfg.batch_size,
                     "img_size": cfg.img_size, "images_per_s": s["images_per_s"],
                     "train_seconds": s["train_seconds"],
                     "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2),
                     "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2 ** 30, 2)})
        print(rows[-1])
    return rows


def sift() -> dict:
    import pycolmap
    from mmcrossvit.device import sift_device
    return {"pycolmap": pycolmap.__version__, "has_cuda": bool(getattr(pycolmap, "has_cuda", False)),
            "extractor_device": str(sift_device("cuda"))}


def main(argv=None):
    p = run_parser(__doc__)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run")
    p.add_argument("--pairs", type=int, default=3000, help="database pairs matched per device")
    p.add_argument("--workers", type=int, default=1,
                   help="matching and localization processes, the same for both devices (0: one per core)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of each trainer")
    p.add_argument("--loader-workers", type=int, default=4, help="the trainers' DataLoader processes")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device: this benchmark compares the GPU paths with the CPU")
    run = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    scratch = run.out / "gpu-bench"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    result = {"machine": machine_info(), "preset": args.preset, "run": run.name}
    if "sift" in args.parts:
        result["sift"] = sift()
    if "matching" in args.parts:
        result["matching"] = matching(run, args.preset, args.pairs, args.workers, scratch)
        print(result["matching"])
    if "localization" in args.parts:
        result["localization"] = localization(run, args.preset, args.workers)
        print(result["localization"])
    if "training" in args.parts:
        result["training"] = training(run, args.preset, args.epochs, args.loader_workers, scratch)
    m = result["machine"]
    md = [f"# CUDA paths on `{run.name}` ({args.preset} preset)", "",
          f"`python benchmarks/gpu_paths.py --dataset {args.dataset} --preset {args.preset} --parts "
          f"{' '.join(args.parts)} --pairs {args.pairs} --workers {args.workers} --epochs {args.epochs}`", "",
          f"Machine: {m.get('gpu', '?')}, {m['cpu']} ({m['cpu_count']} logical CPUs), torch {m['torch']}.", ""]
    if "sift" in result:
        s = result["sift"]
        md += [f"SIFT extraction: pycolmap {s['pycolmap']}, CUDA build: {s['has_cuda']}; `--device cuda` extracts "
               f"on `{s['extractor_device']}`.", ""]
    rows = []
    for part in ("matching", "localization"):
        if part in result:
            r = result[part]
            what = f"{r['pairs']} database pairs" if part == "matching" else f"{r['queries']} queries, oracle top-k"
            rows.append([part, what, r["workers"], r["cpu_s"], r["cuda_s"], f"{r['cpu_s'] / r['cuda_s']:.2f}",
                         "yes" if r["identical"] else "NO"])
    if rows:
        md += ["Same work with `--device cpu` and `--device cuda`; identical: the outputs are equal (match "
               "tables; results file bytes).", "",
               markdown_table(["part", "work", "processes", "cpu s", "cuda s", "x", "identical"], rows), ""]
    if "training" in result:
        md += [f"Training on CUDA, {args.epochs} epochs each, no validation, {args.loader_workers} loader processes:", "",
               markdown_table(["trainer", "img size", "batch", "steps", "img/s", "train s", "peak GPU GiB (allocated)",
                               "peak GiB (reserved)"],
                              [[r["trainer"], r["img_size"], r["batch_size"], r["steps"], r["images_per_s"],
                                r["train_seconds"], r["peak_gpu_gib"], r["peak_gpu_reserved_gib"]]
                               for r in result["training"]]), ""]
    finish(str(Path(args.results) / f"gpu_paths_{args.preset}"), md, result)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
