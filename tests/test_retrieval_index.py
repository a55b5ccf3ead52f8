"""Retrieval indexes (mmcrossvit.retrieval): `auto` is exact below the measured threshold, the
faiss indexes return high recall on clustered descriptors and are deterministic given a seed, and a
missing faiss ends in an error that says how to install it."""
from __future__ import annotations

import builtins
import importlib.util

import numpy as np
import pytest
import torch

from mmcrossvit import retrieval

HAVE_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss not installed (pip install faiss-cpu)")


def clustered(n: int, nq: int = 50, d: int = 64, places: int = 100, seed: int = 0):
    """Unit-norm descriptors around `places` centres; queries are perturbed database descriptors."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((places, d)).astype(np.float32)
    db = centres[rng.integers(0, places, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[rng.choice(n, nq, replace=False)] + 0.3 / np.sqrt(d) * rng.standard_normal((nq, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return db.astype(np.float32), q.astype(np.float32)


def recall(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact)]))


def test_auto_is_exact_below_the_threshold_and_approximate_above():
    assert retrieval.resolve_index("auto", 4328) == "exact"                      # Aachen
    assert retrieval.resolve_index("auto", retrieval.AUTO_EXACT_MAX_DB) == "exact"
    assert retrieval.resolve_index("auto", retrieval.AUTO_EXACT_MAX_DB + 1) == retrieval.AUTO_APPROXIMATE
    assert retrieval.resolve_index("hnsw", 10) == "hnsw"
    with pytest.raises(ValueError, match="unknown index"):
        retrieval.resolve_index("annoy", 10)


def _block_faiss(monkeypatch, error: Exception) -> None:
    """Make every `import faiss` from here on raise `error`."""
    real_import = builtins.__import__

    def no_faiss(name, *a, **kw):
        if name == "faiss":
            raise error
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_faiss)


def test_auto_gives_the_exact_top_k(monkeypatch):
    # below the threshold faiss is never imported: the same top-k as before, with or without it
    db, q = clustered(500)
    D, Q = torch.from_numpy(db), torch.from_numpy(q)
    want_q, want_qv = retrieval.topk(Q, D, 20)
    want_d, want_dv = retrieval.topk(D, D, 10, exclude_self=True)
    _block_faiss(monkeypatch, AssertionError("auto imported faiss below the threshold"))
    got_q, got_qv = retrieval.search(Q, D, 20, index="auto")
    got_d, got_dv = retrieval.search(D, D, 10, index="auto", exclude_self=True)
    np.testing.assert_array_equal(got_q, want_q)
    np.testing.assert_array_equal(got_qv, want_qv)
    np.testing.assert_array_equal(got_d, want_d)
    np.testing.assert_array_equal(got_dv, want_dv)


def test_exact_top_k_is_the_same_in_smaller_chunks():
    db, q = clustered(300)
    D, Q = torch.from_numpy(db), torch.from_numpy(q)
    a, _ = retrieval.topk(D, D, 7, exclude_self=True)
    b, _ = retrieval.topk(D, D, 7, exclude_self=True, max_elements=300 * 13)  # 13 queries per chunk
    np.testing.assert_array_equal(a, b)
    assert not (a == np.arange(300)[:, None]).any()


def test_missing_faiss_says_how_to_install_it(monkeypatch):
    monkeypatch.delitem(__import__("sys").modules, "faiss", raising=False)
    _block_faiss(monkeypatch, ImportError("No module named 'faiss'"))
    db, q = clustered(200)
    for index in ("ivf", "hnsw"):
        with pytest.raises(retrieval.MissingFaiss, match="pip install faiss-cpu"):
            retrieval.search(q, db, 5, index=index)
    retrieval.search(q, db, 5, index="exact")  # exact search needs no faiss


def test_drop_self_keeps_k_and_never_returns_the_query():
    idx = np.array([[0, 3, 4], [5, 1, 2], [7, 8, 9]])  # row 2 did not retrieve itself: its last goes
    val = idx.astype(np.float32)
    i, v = retrieval._drop_self(idx, val, 2)
    np.testing.assert_array_equal(i, [[3, 4], [5, 2], [7, 8]])
    np.testing.assert_array_equal(v, i.astype(np.float32))


@needs_faiss
@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_index_has_high_recall_on_clustered_descriptors(index):
    db, q = clustered(4000, nq=100)
    exact, _ = retrieval.topk(torch.from_numpy(q), torch.from_numpy(db), 10)
    idx, val = retrieval.search(q, db, 10, index=index, nprobe=8, ef_search=64)
    assert idx.shape == (100, 10) and (idx >= 0).all()
    assert recall(idx, exact, 1) >= 0.95 and recall(idx, exact, 10) >= 0.9
    np.testing.assert_allclose(val, np.take_along_axis(q @ db.T, idx, axis=1), atol=1e-5)  # true scores
    assert (np.diff(val, axis=1) <= 1e-6).all()                                               # best first


@needs_faiss
def test_ivf_is_deterministic_given_a_seed_and_excludes_self():
    db, _ = clustered(3000)
    runs = [retrieval.search(db, db, 5, index="ivf", exclude_self=True, seed=3, nprobe=2) for _ in range(2)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    idx = runs[0][0]
    assert idx.shape == (3000, 5) and (idx >= 0).all()
    assert not (idx == np.arange(3000)[:, None]).any()
    exact, _ = retrieval.topk(torch.from_numpy(db), torch.from_numpy(db), 5, exclude_self=True)
    assert recall(idx, exact, 5) >= 0.9


@needs_faiss
def test_rows_with_too_few_candidates_are_searched_exactly():
    # one probed cell of 30 holds fewer than k descriptors: those rows fall back to exact search
    db, q = clustered(2000, places=200)
    ix = retrieval.build_index(db, "ivf", nlist=30)
    raw, _ = retrieval.search_index(ix, q, 150, nprobe=1)
    assert (raw < 0).any()
    idx, val = retrieval.search(q, db, 150, nprobe=1, built=ix)
    assert (idx >= 0).all()
    short = (raw < 0).any(axis=1)
    exact, _ = retrieval.topk(torch.from_numpy(q), torch.from_numpy(db), 150)
    np.testing.assert_array_equal(idx[short], exact[short])


def test_pairs_step_flags_reach_the_search(tmp_path):
    from mmcrossvit import cli
    from mmcrossvit.steps import pairs
    _, cfg = cli.parse(pairs, ["--dataset", str(tmp_path), "--index", "hnsw", "--ef-search", "300", "--nprobe", "4"])
    assert (cfg.index, cfg.ef_search, cfg.nprobe) == ("hnsw", 300, 4)
    _, cfg = cli.parse(pairs, ["--dataset", str(tmp_path), "--preset", "paper"])
    assert cfg.index == "auto"
