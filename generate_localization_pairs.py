"""Step 5: retrieval pairs from the distilled student's global descriptors.

    python generate_localization_pairs.py --dataset datasets/demo --num-retrieved 100

Computes student descriptors for database and query images (batched, cached in
outputs/<name>/descriptors.h5 keyed by image name and tied to the checkpoint), ranks the database
by inner product (exact), and writes hloc-format pairs:
  outputs/<name>/pairs-query.txt       "<query> <db>" for the top-K database images of each query
  outputs/<name>/pairs-db-retrieval.txt "<db> <db>"   database-to-database neighbours (self excluded)
  outputs/<name>/retrieval.npz          names, ranked indices and scores, for the evaluation tables
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from mmcrossvit.colmap_io import write_pairs
from mmcrossvit.errors import DataError, run_cli
from mmcrossvit.layout import Dataset
from mmcrossvit.paths import run_paths
from mmcrossvit.retrieval import compute_descriptors, file_fingerprint, stack, topk
from mmcrossvit.storage import write_npz
from models.crossvit import load_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True, help="dataset folder in the documented layout")
    p.add_argument("--name", help="run name (default: dataset folder name)")
    p.add_argument("--outputs", type=Path, default=Path("outputs"), help="root of per-run outputs")
    p.add_argument("--checkpoint", type=Path, help="student checkpoint (default outputs/<name>/student/best.pt)")
    p.add_argument("--num-retrieved", type=int, default=100, help="database images per query (K; the authors used 100)")
    p.add_argument("--num-db-neighbours", type=int, default=200, help="neighbours per database image for the retrieval tables")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ds = Dataset(args.dataset)
    paths = run_paths(args.name or ds.name, args.outputs)
    ckpt = args.checkpoint or paths.student / "best.pt"
    if not ckpt.exists():
        raise DataError(ckpt, "student checkpoint not found; run train_knowledge_distillation_student.py first")
    model = load_model(ckpt, args.device)
    size = model.config["img_size"]
    db_names = ds.db_names
    q_names = sorted(ds.queries)
    if not q_names:
        raise DataError(ds.root / "queries", "no queries listed")
    image_paths = {n: ds.image_path(n) for n in db_names + q_names}
    desc = compute_descriptors(model, image_paths, size, paths.descriptors, file_fingerprint(ckpt),
                               args.batch_size, args.device)
    D, Q = stack(desc, db_names), stack(desc, q_names)
    # rank deeper than K for the retrieval tables (P@K / Recall@K up to 200); pairs keep the top K
    q_idx, q_score = topk(Q, D, max(args.num_retrieved, args.num_db_neighbours))
    d_idx, d_score = topk(D, D, args.num_db_neighbours, exclude_self=True)
    write_pairs(paths.pairs_query, [(q, db_names[j]) for q, row in zip(q_names, q_idx) for j in row[:args.num_retrieved]])
    write_pairs(paths.out / "pairs-db-retrieval.txt", [(a, db_names[j]) for a, row in zip(db_names, d_idx) for j in row[:20]])
    write_npz(paths.out / "retrieval.npz", db_names=np.array(db_names), query_names=np.array(q_names),
              query_ranked=q_idx, query_scores=q_score, db_ranked=d_idx, db_scores=d_score)
    print(f"{len(q_names)} queries x top-{min(args.num_retrieved, q_idx.shape[1])} of {len(db_names)} database images -> {paths.pairs_query}")
    return {"queries": len(q_names), "k": min(args.num_retrieved, int(q_idx.shape[1]))}


if __name__ == "__main__":
    run_cli(main)
