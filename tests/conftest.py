"""Shared pytest fixtures (keep this file small; expensive fixtures are session-scoped)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The synthetic town's `tiny` preset (seed 0), generated once per test session; its root Path."""
    from datasets.synthetic_town import generate
    return generate(tmp_path_factory.mktemp("synthetic") / "tiny", preset="tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory):
    """preprocessing.py + generate_RoPE_embeddings.py on the tiny dataset; returns (dataset, RunPaths)."""
    import preprocessing
    import generate_RoPE_embeddings
    from mmcrossvit.paths import run_paths
    root = tmp_path_factory.mktemp("run")
    out, dbroot = root / "outputs", root / "DataBase"
    preprocessing.main(["--dataset", str(tiny_dataset), "--name", "tiny", "--outputs", str(out),
                        "--database-root", str(dbroot)])
    generate_RoPE_embeddings.main(["--name", "tiny", "--outputs", str(out), "--database-root", str(dbroot)])
    return tiny_dataset, run_paths("tiny", out, dbroot)
