"""How much of the trained teacher's retrieval comes from its 3D spatial tokens?

    python studies/token_reliance.py --dataset datasets/demo

Embeds the database with the trained teacher (outputs/<name>/teacher/best.pt) three ways and reports
held-out-fold Recall@K (as in training's validation): real tokens; tokens zeroed and every patch
marked as having no 3D point (the image branch alone carries the descriptor); real patch tokens
with the camera token zeroed (does the camera pose give the place away?).
Writes studies/results/token_reliance.{md,json}.
"""
from __future__ import annotations

import torch
from pathlib import Path  # noqa: E402
import sys  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # report.py, shared with the benchmarks
from report import STUDY_RESULTS, finish, run_parser  # noqa: E402  (puts the repository on sys.path)

from mmcrossvit import presets  # noqa: E402
from mmcrossvit.paths import RunLayout  # noqa: E402
from mmcrossvit.spatial_db import SpatialDB  # noqa: E402
from mmcrossvit.train.weights import load_model  # noqa: E402
from mmcrossvit.train.data import ImageCache, load_spatial_tokens, split_folds  # noqa: E402
from mmcrossvit.train.distributed import setup  # noqa: E402
from mmcrossvit.train.validation import retrieval  # noqa: E402


def main(argv=None) -> dict:
    args = run_parser(__doc__, STUDY_RESULTS).parse_args(argv)
    run = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    val_fold = presets.step_settings(args.preset, "teacher")["val_fold"]  # the teacher's held-out fold
    torch.manual_seed(0)
    model = load_model(run.teacher_checkpoint, arch="teacher")
    db = SpatialDB.load(run.spatial_db)
    tokens, valid, _ = load_spatial_tokens(run.tokens, db.names)
    cache = ImageCache.build(run.dataset, db.names, model.config["img_size"], run.cache, setup("cpu"))
    _, val = split_folds(db, val_fold)
    variants = {
        "real tokens": (tokens, valid),
        "all tokens zeroed (image branch only)": (torch.zeros_like(tokens), torch.zeros_like(valid)),
        "camera token zeroed": (torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, 1:]], 1), valid),
    }
    out = {}
    with torch.no_grad():
        for label, (tk, vd) in variants.items():
            emb = torch.cat([model(cache.batch(range(s, min(s + 32, len(db.names)))),
                                   tk[s:s + 32].float(), vd[s:s + 32]) for s in range(0, len(db.names), 32)])
            m = retrieval(emb, val, db)
            out[label] = {f"R@{k}": v for k, v in m["R"].items()}
    keys = list(next(iter(out.values())))
    md = [f"Teacher `{run.teacher_checkpoint}`, held-out fold {val_fold} of `{run.name}`:\n",
          "| teacher input | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    md += [f"| {k} | " + " | ".join(f"{v[c]:.3f}" for c in keys) + " |" for k, v in out.items()]
    return finish(str(args.results / "token_reliance"), md, out)


if __name__ == "__main__":
    main()
