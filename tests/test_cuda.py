"""The CUDA paths give the CPU's results (skipped without a GPU; run them on one with
`pytest tests/test_cuda.py`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_descriptor_matching_on_cuda_equals_cpu():
    from mmcrossvit.features import match_descriptors
    rng = np.random.default_rng(0)
    # SIFT-like: uint8, with near-duplicates so that the ratio test and mutual check both decide
    base = rng.integers(0, 160, (3000, 128), dtype=np.uint8)
    other = np.clip(base[rng.permutation(3000)[:2500]].astype(int) + rng.integers(-12, 13, (2500, 128)), 0, 255)
    other = np.concatenate([other, rng.integers(0, 160, (700, 128))]).astype(np.uint8)
    for ratio, mutual in ((0.8, True), (0.9, False)):
        cpu = match_descriptors(base, other, ratio, mutual, device="cpu")
        gpu = match_descriptors(base, other, ratio, mutual, device="cuda")
        assert len(cpu) > 1000
        np.testing.assert_array_equal(cpu, gpu)


def test_matching_and_localization_on_cuda_equal_cpu(tiny_run, tmp_path):
    """Database matching and per-query localization write the same bytes with --device cuda."""
    from mmcrossvit import cli, sfm
    from mmcrossvit.colmap_io import read_pairs
    from mmcrossvit.layout import Dataset
    from mmcrossvit.steps import execute, localize
    dataset, run = tiny_run
    ds = Dataset(dataset)
    cams, poses = ds.reference
    pairs = list(read_pairs(run.pairs_db))
    rows = {}
    for dev in ("cpu", "cuda"):
        db = tmp_path / f"{dev}.db"
        ids = sfm.create_database(sfm.reference_reconstruction(cams, poses), db)
        sfm.match_and_verify(db, ids, pairs, run.features, cams, poses, device=dev)
        import sqlite3
        with sqlite3.connect(db) as c:
            rows[dev] = [c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                         for t in ("matches", "two_view_geometries")]
        execute(localize, run, cli.settings(localize, "paper", retrieval="oracle", tag=f"cuda-test-{dev}",
                                            device=dev, workers=1))
    assert rows["cpu"] == rows["cuda"] and rows["cpu"][0]
    assert run.results_file("cuda-test-cpu").read_bytes() == run.results_file("cuda-test-cuda").read_bytes()


def test_trainers_run_on_cuda(tiny_run, tmp_path):
    """One epoch of each trainer on the GPU (bf16 autocast where supported), validated there:
    finite weights and retrieval metrics."""
    from mmcrossvit import cli
    from mmcrossvit.steps import execute, student, teacher
    from mmcrossvit.storage import read_json
    _, run = tiny_run
    execute(teacher, run, cli.settings(teacher, "tiny", out=tmp_path / "t", epochs=1, device="cuda"))
    execute(student, run, cli.settings(student, "tiny", out=tmp_path / "s", epochs=1, device="cuda",
                                       teacher=tmp_path / "t" / "best.pt"))
    for kind in ("t", "s"):
        s = read_json(tmp_path / kind / "summary.json")
        assert s["device"].startswith("cuda") and s["finished"]
        assert 0 <= s["last"]["R@1"] <= 1
        state = torch.load(tmp_path / kind / "last.pt", weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
