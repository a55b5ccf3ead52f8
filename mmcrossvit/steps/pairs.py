"""Step 5: retrieval pairs from the distilled student's global descriptors (or, for a small map that
trains no student, from the ImageNet encoder's: --descriptor imagenet).

Computes student descriptors for database and query images (batched, cached in
outputs/<name>/descriptors.h5 keyed by image name and tied to the checkpoint), ranks the database
by inner product (--index: exact, or a faiss index above AUTO_EXACT_MAX_DB database images; see
mmcrossvit/retrieval.py), and writes hloc-format pairs:
  outputs/<name>/pairs-query.txt         "<query> <db>" for the top-K database images of each query
  outputs/<name>/pairs-query-ranked.txt  the same, as deep as the ranking (localize --rerank's candidates)
  outputs/<name>/pairs-db-retrieval.txt  "<db> <db>"   database-to-database neighbours (self excluded)
  outputs/<name>/retrieval.npz           names, ranked indices and scores, for the evaluation tables
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..colmap_io import write_pairs
from ..device import CHOICES, HELP, pick
from ..errors import DataError
from ..features import failed_images
from ..layout import Dataset
from ..paths import RunLayout
from ..retrieval import (AUTO_EXACT_MAX_DB, INDEXES, MissingFaiss, build_index, compute_descriptors,
                         file_fingerprint, import_faiss, resolve_index, search, stack)
from ..storage import write_npz
from ..train.weights import imagenet_student, load_model

STEP = "pairs"
S = argparse.SUPPRESS
DB_PAIRS_PER_IMAGE = 20  # database-to-database neighbours written to pairs-db-retrieval.txt
DESCRIPTORS = ("auto", "student", "imagenet")


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("retrieval")
    g.add_argument("--num-retrieved", type=int, default=S, help="database images per query (K; the authors used 100)")
    g.add_argument("--num-db-neighbours", type=int, default=S,
                   help="neighbours ranked per image for the retrieval tables (P@K / Recall@K up to this K)")
    g.add_argument("--batch-size", type=int, default=S, help="images per forward pass")
    g.add_argument("--index", choices=INDEXES, default=S,
                   help="nearest-neighbour search: exact (every database descriptor), ivf or hnsw (faiss "
                        f"approximate indexes: pip install faiss-cpu), auto (exact up to {AUTO_EXACT_MAX_DB:,} "
                        "database images, ivf above; benchmarks/results/retrieval_index.md)")
    g.add_argument("--nprobe", type=int, default=S,
                   help="ivf: cells scanned per query (more: higher recall against exact, slower)")
    g.add_argument("--ef-search", type=int, default=S,
                   help="hnsw: candidates kept per query, at least K (more: higher recall, slower)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="student checkpoint (default outputs/<name>/student/best.pt)")
    g.add_argument("--small-map", type=int, default=S,
                   help="a database of fewer images is a small map: run_pipeline.py trains no student for it, and "
                        "--descriptor auto retrieves with the ImageNet encoder (0: never)")
    p.add_argument("--descriptor", choices=DESCRIPTORS, default="auto",
                   help="student: the trained student's descriptor; imagenet: the ImageNet EfficientNet-Lite0 "
                        "encoder under GeM, not trained on the scene; auto: imagenet for a small map (--small-map) "
                        "unless --checkpoint is given, else student")
    p.add_argument("--device", choices=CHOICES, default="auto", help=HELP + "; the student embeds there")


def main(run: RunLayout, cfg: argparse.Namespace) -> dict:
    ds = Dataset(run.dataset)
    device = pick(cfg.device)
    descriptor = getattr(cfg, "descriptor", "auto")
    if descriptor == "auto":
        small = getattr(cfg, "small_map", 0)  # a checkpoint given by hand is the student to use
        descriptor = "imagenet" if not cfg.checkpoint and small and len(ds.db_names) < small else "student"
    if descriptor == "imagenet":
        model, fingerprint = imagenet_student(cfg.seed)
        model = model.to(device)
    else:
        ckpt = cfg.checkpoint or run.student_checkpoint
        if not Path(ckpt).exists():
            raise DataError(ckpt, "student checkpoint not found; run train_knowledge_distillation_student.py first")
        model, fingerprint = load_model(ckpt, device, arch="student"), file_fingerprint(ckpt)  # queries: no 3D tokens
    size = model.config["img_size"]
    if not ds.queries:
        raise DataError(ds.root / "queries", "no queries listed")
    # images that preprocessing could not read: no descriptor, no pairs (such a query still gets
    # a pose line from localization, counted as failed)
    bad = failed_images(run.features)
    db_names = [n for n in ds.db_names if n not in bad]
    q_names = [q for q in sorted(ds.queries) if q not in bad]
    if bad:
        print(f"{len(bad)} unreadable images left out of retrieval (e.g. {next(iter(bad))}: {next(iter(bad.values()))})")
    index = resolve_index(cfg.index, len(db_names))
    if index != "exact":
        try:
            import_faiss()  # before the descriptors: a missing faiss fails in a second, not after them
        except MissingFaiss as e:
            raise DataError(None, str(e)) from e
    image_paths = {n: ds.image_path(n) for n in db_names + q_names}
    desc = compute_descriptors(model, image_paths, size, run.descriptors, fingerprint, cfg.batch_size, device)
    D, Q = stack(desc, db_names), stack(desc, q_names)
    # rank deeper than K for the retrieval tables; the pairs file keeps the top K
    built = None if index == "exact" else build_index(D, index, seed=cfg.seed)  # one index, both searches
    kw = dict(index=index, nprobe=cfg.nprobe, ef_search=cfg.ef_search, built=built)
    q_idx, q_score = search(Q, D, max(cfg.num_retrieved, cfg.num_db_neighbours), **kw)
    d_idx, d_score = search(D, D, cfg.num_db_neighbours, exclude_self=True, **kw)
    write_pairs(run.pairs_query, [(q, db_names[j]) for q, row in zip(q_names, q_idx) for j in row[:cfg.num_retrieved]])
    write_pairs(run.pairs_query_ranked, [(q, db_names[j]) for q, row in zip(q_names, q_idx) for j in row])
    write_pairs(run.pairs_db_retrieval,
                [(a, db_names[j]) for a, row in zip(db_names, d_idx) for j in row[:DB_PAIRS_PER_IMAGE]])
    write_npz(run.retrieval, db_names=np.array(db_names), query_names=np.array(q_names),
              query_ranked=q_idx, query_scores=q_score, db_ranked=d_idx, db_scores=d_score)
    k = min(cfg.num_retrieved, int(q_idx.shape[1]))
    print(f"{len(q_names)} queries x top-{k} of {len(db_names)} database images ({index} search, {descriptor} "
          f"descriptor) -> {run.pairs_query}")
    return {"queries": len(q_names), "k": k, "index": index, "descriptor": descriptor}
