"""What limits the student's retrieval: recipes compared over seeds, on a preprocessed run.

    python benchmarks/student_retrieval.py --dataset datasets/demo --preset demo --seeds 0 1 2
    python benchmarks/student_retrieval.py --variants preset sigma1 image_only --seeds 0 1 2

Each variant is the preset's student (or, for `image_only`, an image-only CrossViT trained with the
teacher's contrastive loss on the same pairs, at the student's size, budget and augmentation),
changed by a few settings and trained in-process once per seed under
outputs/<name>/ablation/student_study/<variant>_s<seed>/ (reused while its inputs and settings
are unchanged). The pipeline's teacher (outputs/<name>/teacher) is the one distilled.

For each trained model it measures, with the model's clean embeddings of every database image:
  train R@K    anchors of the training folds (what the student was fitted on)
  held-out R@K anchors of the validation fold (database images it never saw)
  query R@K    the dataset's queries, positives from ground truth (>= min_shared shared points),
               split by day/night and by landscape/portrait
With --trained, students trained elsewhere (e.g. on a smaller database of the same scene) are
measured the same way. From the distillation's teacher_distances.npz it draws histograms of the
teacher's squared distances of positive and negative training pairs, with the kernel weights of
sigma = 1 and of the calibrated sigma. Writes benchmarks/results/student_retrieval.{md,json,png}.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from report import finish, machine_info, markdown_table, run_parser  # noqa: E402 (puts the repo on sys.path)

from mmcrossvit import cli  # noqa: E402
from mmcrossvit.layout import Dataset  # noqa: E402
from mmcrossvit.losses import calibrated_sigma  # noqa: E402
from mmcrossvit.paths import RunLayout  # noqa: E402
from mmcrossvit.retrieval import compute_descriptors, file_fingerprint, stack, topk  # noqa: E402
from mmcrossvit.spatial_db import SpatialDB  # noqa: E402
from mmcrossvit.evaluation import query_positives, retrieval_metrics  # noqa: E402
from mmcrossvit.storage import write_json  # noqa: E402
from mmcrossvit.steps import execute, student, teacher  # noqa: E402
from mmcrossvit.storage import read_json, read_npz  # noqa: E402
from mmcrossvit.train.weights import load_model  # noqa: E402
from mmcrossvit.train.data import split_folds  # noqa: E402

KS = (1, 5, 10, 20)
NO_GEO = dict(crop_scale=1.0, portrait_prob=0.0, roll=0.0)
# name -> (label, trainer, overrides of the student's preset settings)
VARIANTS = {
    "preset": ("student (preset)", "student", {}),
    "sigma1": ("student, sigma = 1 (the paper's kernel)", "student", dict(sigma=1.0)),
    "sigma_auto": ("student, calibrated sigma", "student", dict(sigma="auto")),
    "no_geo": ("student, no geometric augmentation", "student", NO_GEO),
    "geo": ("student, crop 0.6 / portrait 0.25 / roll 5", "student",
            dict(crop_scale=0.6, portrait_prob=0.25, roll=5.0)),
    "auto_geo": ("student, calibrated sigma + geometric augmentation", "student",
                 dict(sigma="auto", crop_scale=0.6, portrait_prob=0.25, roll=5.0)),
    "regression": ("student, + per-image regression onto the teacher", "student", dict(regression=1.0)),
    "regression_geo": ("student, + regression, calibrated sigma, geometric augmentation", "student",
                       dict(regression=1.0, sigma="auto", crop_scale=0.6, portrait_prob=0.25, roll=5.0)),
    "no_cyclegan": ("student, simulated night only", "student", dict(cyclegan=False)),
    "init_teacher": ("student, initialised from the teacher", "student", dict(init_from="TEACHER")),
    "px240": ("student, 240 px (the paper's size)", "student", dict(img_size=240)),
    "epochs2x": ("student, twice the epochs", "student", dict(epochs="2x")),
    "image_only": ("image-only fine-tune: the student's architecture, the teacher's loss and pairs, same budget "
                   "(no teacher, no 3D)", "image_only", {}),
    "untrained": ("untrained student (random weights of the seed; lite0: its ImageNet encoder)", "untrained", {}),
}
# the student's settings an image-only run takes over, for the same size, budget and augmentation
SHARED = ("backbone", "freeze", "img_size", "embed_dim", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
          "warmup_epochs", "min_lr_ratio", "grad_clip", "night_prob", "cyclegan", "hflip", "jitter", "crop_scale",
          "portrait_prob", "roll", "val_every")


def settings_for(variant: str, preset: str, seed: int, teacher_path: Path, out: Path, common: dict):
    _, kind, overrides = VARIANTS[variant]
    base = vars(cli.settings(student, preset))
    ov = {**common, **overrides}
    if ov.get("init_from") == "TEACHER":
        ov["init_from"] = teacher_path
    if ov.get("epochs") == "2x":
        ov["epochs"] = 2 * base["epochs"]
    if kind == "student":
        return student, cli.settings(student, preset, seed=seed, out=out, teacher=teacher_path, **ov)
    shared = {k: base[k] for k in SHARED}
    return teacher, cli.settings(teacher, preset, seed=seed, out=out, image_only=True, **{**shared, **ov})


def untrained(preset: str, seed: int, out: Path, common: dict) -> Path:
    """The student network as initialised with `seed` (the lite0 backbone: its ImageNet encoder),
    saved for `measure`: what training adds."""
    from models.build import build_student
    from mmcrossvit.storage import write_safetensors
    from mmcrossvit.train.optim import init_weights
    cfg = {**vars(cli.settings(student, preset)), **common}
    torch.manual_seed(seed)
    model = build_student(img_size=cfg["img_size"], embed_dim=cfg["embed_dim"], backbone=cfg["backbone"],
                          freeze=cfg["freeze"])
    init_weights(model, argparse.Namespace(pretrained=False, init_from=None))
    path = out / "untrained.safetensors"
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, {k: v.contiguous() for k, v in model.state_dict().items()},
                      metadata={"config": json.dumps(model.config)})
    return path


@torch.no_grad()
def measure(run: RunLayout, ds: Dataset, sdb: SpatialDB, qpos: list, val_fold: int, ckpt: Path,
            qds: Dataset | None = None, extra_qpos: list | None = None, cache: Path | None = None) -> dict:
    """Train / held-out / query recall of one checkpoint (clean embeddings, inner product); with
    `qds`, also the queries of that dataset (same database images), as "day queries (qds)" etc.
    Descriptors are kept in `cache` (default: beside the checkpoint), a folder of this run's."""
    cache = cache or ckpt.parent
    model = load_model(ckpt, "cuda" if torch.cuda.is_available() else "cpu", arch="student")
    device = next(model.parameters()).device
    names = [str(n) for n in sdb.names]
    queries = sorted(ds.queries)
    paths = {n: ds.image_path(n) for n in names + queries}
    desc = compute_descriptors(model, paths, model.config["img_size"], cache / "descriptors.h5",
                               file_fingerprint(ckpt), 32, str(device))
    D, Q = stack(desc, names), stack(desc, queries)
    d_idx, _ = topk(D, D, max(KS), exclude_self=True)
    train_idx, val_idx = split_folds(sdb, val_fold)
    pos = [set(sdb.positives(i)[0].tolist()) for i in range(len(names))]
    out = {"train": retrieval_metrics(d_idx[train_idx], [pos[i] for i in train_idx], KS),
           "held-out": retrieval_metrics(d_idx[val_idx], [pos[i] for i in val_idx], KS)}
    out.update(query_groups(ds, queries, topk(Q, D, max(KS))[0], qpos))
    if qds is not None:  # its own cache: its query names may be the run's for other images
        xq = sorted(qds.queries)
        xdesc = compute_descriptors(model, {q: qds.image_path(q) for q in xq}, model.config["img_size"],
                                    cache / f"descriptors_{qds.root.name}.h5", file_fingerprint(ckpt), 32,
                                    str(device))
        more = query_groups(qds, xq, topk(stack(xdesc, xq), D, max(KS))[0], extra_qpos)
        out.update({f"{g} ({qds.root.name})": r for g, r in more.items() if g in ("day queries", "night queries")})
    return out


def query_groups(ds: Dataset, queries: list, q_idx, qpos: list) -> dict:
    groups = {"queries": range(len(queries))}
    for cond in ("day", "night"):
        groups[f"{cond} queries"] = [i for i, q in enumerate(queries) if ds.queries[q].condition == cond]
    for cond in ("day", "night"):
        for orient in ("landscape", "portrait"):
            groups[f"{cond}, {orient}"] = [
                i for i, q in enumerate(queries) if ds.queries[q].condition == cond
                and (ds.queries[q].camera.height > ds.queries[q].camera.width) == (orient == "portrait")]
    out = {}
    for g, sel in groups.items():
        sel = list(sel)
        if sel:
            out[g] = retrieval_metrics(q_idx[sel], [qpos[i] for i in sel], KS)
    return out


def same_database(run_ds: Dataset, qds: Dataset, names: list) -> None:
    """The extra query set must share the run's database images byte for byte."""
    for n in names:
        a, b = run_ds.image_path(n), qds.image_path(n)
        if not b.is_file() or file_fingerprint(a) != file_fingerprint(b):
            raise SystemExit(f"error: {b} differs from {a}: --extra-queries needs the run's database images")


def cached_query_positives(run: RunLayout, ds: Dataset, sdb: SpatialDB, path: Path) -> list:
    """Ground-truth positives of each query (sorted by name), computed from the SfM model when the
    run has one and kept in `path`, so that a machine without pycolmap or the model can reuse them."""
    names = [str(n) for n in sdb.names]
    if (run.sfm / "points3D.bin").exists():
        from mmcrossvit.localization import SfMModel  # needs pycolmap
        qpos = query_positives(ds, SfMModel.load(run.sfm), names, sdb.min_shared)
        write_json(path, {"db_names": names, "queries": sorted(ds.queries), "min_shared": sdb.min_shared,
                          "positives": [sorted(int(i) for i in q) for q in qpos]})
        return qpos
    if not path.exists():
        raise SystemExit(f"error: {run.sfm} has no model and {path} holds no query positives")
    saved = read_json(path)
    if saved["db_names"] != names or saved["queries"] != sorted(ds.queries):
        raise SystemExit(f"error: {path} was computed for other database images or queries")
    return [set(q) for q in saved["positives"]]


def kernel_figure(npz: Path, png: Path) -> dict:
    """Histograms of the teacher's squared distances (positive vs negative training pairs) and
    the kernel weights they get with sigma = 1 and with the calibrated sigma (--sigma auto)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    k = read_npz(npz)
    pos, neg = k["positive_d2"], k["negative_d2"]
    sigma = calibrated_sigma(torch.from_numpy(pos))  # what --sigma auto gives, whatever the run used
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    bins = np.linspace(0, max(float(np.max(neg, initial=0)), float(np.max(pos, initial=0)), 1e-3), 50)
    ax[0].hist([pos, neg], bins=bins, label=[f"positive pairs ({len(pos)})", f"negative pairs ({len(neg)})"],
               density=True, histtype="step", linewidth=2)
    ax[0].set(title="teacher squared distance", xlabel="||t_i - t_j||^2")
    ax[0].legend()
    for a, s in ((ax[1], 1.0), (ax[2], sigma)):
        a.hist([np.exp(-pos / s), np.exp(-neg / s)], bins=np.linspace(0, 1, 41), density=True, histtype="step",
               linewidth=2, label=["positive", "negative"])
        a.set(title=f"kernel weight, sigma = {s:.3g}" + (" (auto)" if a is ax[2] else " (paper)"),
              xlabel="w")
        a.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    stats = {}
    for s_name, s in (("sigma=1", 1.0), (f"sigma={sigma:.3g}", sigma)):
        stats[s_name] = {"positive_w_mean": float(np.exp(-pos / s).mean()) if len(pos) else None,
                         "negative_w_mean": float(np.exp(-neg / s).mean()) if len(neg) else None}
    return {"median_positive_d2": float(np.median(pos)) if len(pos) else None,
            "median_negative_d2": float(np.median(neg)) if len(neg) else None, "sigma": sigma, "weights": stats}


def mean_sd(values: list[float]) -> str:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return "-"
    return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def main(argv=None) -> dict:
    p = run_parser(__doc__)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                   help="which recipes to train and measure: " + ", ".join(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (the teacher stays the same)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="settings applied to every variant, e.g. epochs=24 (values parsed as JSON, else text)")
    p.add_argument("--tag", default="student_retrieval", help="report name under --results")
    p.add_argument("--teacher", type=Path, default=None,
                   help="teacher checkpoint to distil (default: outputs/<name>/teacher/best.pt)")
    p.add_argument("--query-positives", type=Path, default=None,
                   help="cache of the queries' ground-truth positives (default: "
                        "outputs/<name>/ablation/student_study/query_positives.json)")
    p.add_argument("--extra-queries", type=Path, default=None, metavar="DATASET",
                   help="also measure the queries of this dataset, whose database images are the run's (e.g. the "
                        "same scene generated with more queries: generate(..., num_day=200, num_night=200))")
    p.add_argument("--trained", nargs="+", default=[], metavar="LABEL=PATH",
                   help="also measure students trained elsewhere, e.g. on a smaller database of the same scene: "
                        "'trained on 300=outputs/demo/ablation/student_study/preset_s{seed}/best.pt' ({seed}: each of "
                        "--seeds); they are measured, not trained")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                   help="only combine the runs of earlier reports (e.g. one per seed, run in parallel under "
                        "different --outputs) into one report")
    args = p.parse_args(argv)
    common = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        try:
            common[k.replace("-", "_")] = json.loads(v)
        except ValueError:
            common[k.replace("-", "_")] = v
    trained = [trained_checkpoints(spec, args.seeds) for spec in args.trained]  # checked before any training
    run = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    if args.merge:
        return report(run, args, argv, merge(args.merge))
    ds, sdb = Dataset(run.dataset), SpatialDB.load(run.spatial_db)
    qpos = cached_query_positives(run, ds, sdb, args.query_positives
                                  or run.ablation("student_study") / "query_positives.json")
    qds = extra_qpos = None
    if args.extra_queries:
        from mmcrossvit.localization import SfMModel
        qds = Dataset(args.extra_queries)
        same_database(ds, qds, [str(n) for n in sdb.names])
        extra_qpos = query_positives(qds, SfMModel.load(run.sfm), [str(n) for n in sdb.names], sdb.min_shared)
    teacher_path = args.teacher or run.teacher_checkpoint
    val_fold = cli.settings(student, args.preset).val_fold
    results: dict = {"machine": machine_info(), "preset": args.preset, "seeds": args.seeds, "set": common,
                     "variants": {}}
    for v in args.variants:
        rows = []
        for seed in args.seeds:
            out = run.ablation(f"student_study/{v}_s{seed}")
            if VARIANTS[v][1] == "untrained":
                summary, ckpt = {"train_seconds": 0.0}, untrained(args.preset, seed, out, common)
            else:
                module, cfg = settings_for(v, args.preset, seed, teacher_path, out, common)
                summary, ckpt = execute(module, run, cfg), out / "best.pt"
            m = measure(run, ds, sdb, qpos, val_fold, ckpt, qds, extra_qpos)
            rows.append({"seed": seed, "train_seconds": summary.get("train_seconds"), "metrics": m,
                         "kernel": summary.get("kernel")})
            print(f"{v} seed {seed}: " + ", ".join(f"{g} R@1 {r['R'][1]:.3f}" for g, r in m.items()))
        results["variants"][v] = {"label": VARIANTS[v][0], "runs": rows}
        write_json(str(args.results / args.tag) + ".json", results)  # so far: an interrupted study keeps its runs
        first = run.ablation(f"student_study/{v}_s{args.seeds[0]}") / "teacher_distances.npz"
        if first.exists() and "kernel" not in results:
            png = Path(str(args.results / args.tag) + "_kernel.png")
            results["kernel"] = {**kernel_figure(first, png), "figure": png.name}
    for i, (label, ckpts) in enumerate(trained):
        rows = []
        for seed, ckpt in zip(args.seeds, ckpts):
            # the descriptors stay with this run: another run's images may carry the same names
            m = measure(run, ds, sdb, qpos, val_fold, ckpt, qds, extra_qpos,
                        cache=run.ablation(f"student_study/trained{i}_s{seed}"))
            rows.append({"seed": seed, "train_seconds": None, "metrics": m, "checkpoint": str(ckpt)})
            print(f"{label} seed {seed}: " + ", ".join(f"{g} R@1 {r['R'][1]:.3f}" for g, r in m.items()))
        results["variants"][f"trained{i}"] = {"label": label, "runs": rows}
        write_json(str(args.results / args.tag) + ".json", results)
    return report(run, args, argv, results)


def trained_checkpoints(spec: str, seeds: list[int]) -> tuple[str, list[Path]]:
    """--trained LABEL=PATH: the label and one existing checkpoint per seed ({seed} in PATH)."""
    label, sep, pattern = spec.partition("=")
    if not sep or not label or not pattern:
        raise SystemExit(f"error: --trained {spec!r}: expected LABEL=PATH")
    ckpts = [Path(pattern.replace("{seed}", str(seed))) for seed in seeds]
    for c in ckpts:
        if not c.is_file():
            raise SystemExit(f"error: --trained {label!r}: no checkpoint {c}")
    return label, ckpts


def merge(files: list[Path]) -> dict:
    """One result from several reports: each variant's runs concatenated (seeds in order)."""
    parts = [read_json(f) for f in files]
    out = {**parts[0], "variants": {}, "merged_from": [str(f) for f in files]}
    for part in parts:
        for v, r in part["variants"].items():
            out["variants"].setdefault(v, {"label": r["label"], "runs": []})["runs"] += r["runs"]
    for r in out["variants"].values():
        r["runs"].sort(key=lambda x: x["seed"])
    out["seeds"] = sorted({x["seed"] for r in out["variants"].values() for x in r["runs"]})
    return out


def report(run: RunLayout, args, argv, results: dict) -> dict:
    variants = list(results["variants"])
    common = results.get("set") or {}
    groups = ["train", "held-out", "day queries", "night queries", "day, landscape", "day, portrait",
              "night, landscape", "night, portrait"]
    first = results["variants"][variants[0]]["runs"][0]["metrics"]
    groups += [g for g in first if g not in groups]  # an --extra-queries set's day / night
    md = [f"# Student retrieval on `{run.name}` (preset `{results['preset']}`, seeds {results['seeds']}"
          + (f", {common}" if common else "") + ")", "",
          "Recall@1 (mean ± sd over seeds) of the model's clean embeddings. train / held-out: database anchors of "
          "the training folds / of the validation fold among all database images; queries: positives from ground "
          "truth. Command: `python benchmarks/student_retrieval.py " + " ".join(sys.argv[1:] if argv is None else argv)
          + "`", ""]
    deep = [g for g in groups if "queries" in g and g != "queries"]
    header = ["model"] + [f"{g} R@1" for g in groups] + [f"{g} R@{k}" for k in (5, 20) for g in deep] + ["train s"]
    table = []
    for v, r in results["variants"].items():
        def col(g, k=1):
            rs = [run_["metrics"].get(g, {}).get("R", {}) for run_ in r["runs"]]
            return mean_sd([x.get(k, x.get(str(k))) for x in rs])  # int keys, or str after JSON
        table.append([r["label"]] + [col(g) for g in groups] + [col(g, k) for k in (5, 20) for g in deep] + [
                     "-" if all(x["train_seconds"] is None for x in r["runs"])  # measured, not trained here
                     else f"{np.mean([x['train_seconds'] or 0 for x in r['runs']]):.0f}"])
    md.append(markdown_table(header, table))
    n = {g: results["variants"][variants[0]]["runs"][0]["metrics"].get(g, {}).get("anchors")
         for g in groups}
    md += ["", "Anchors / queries with positives per group: " + ", ".join(f"{g} {c}" for g, c in n.items())]
    if "kernel" in results:
        k = results["kernel"]
        md += ["", f"Teacher distances (training pairs): median squared distance positive {k['median_positive_d2']:.3f}, "
                   f"negative {k['median_negative_d2']:.3f}. Mean kernel weight positive / negative: "
               + "; ".join(f"{s}: {w['positive_w_mean']:.3f} / {w['negative_w_mean']:.3f}" for s, w in k["weights"].items())
               + f". Histograms: `{k['figure']}`."]
    return finish(str(args.results / args.tag), md, results)


if __name__ == "__main__":
    main()
