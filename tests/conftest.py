"""Shared pytest fixtures (keep this file small; expensive fixtures are session-scoped)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the studies' scripts and their diagnosis module, and the benchmarks' shared report.py, as they run
for _d in ("studies", "benchmarks"):
    _p = str(Path(__file__).resolve().parents[1] / _d)
    if _p not in sys.path:
        sys.path.append(_p)

TINY_RUN_PRESET = "paper"  # the SfM settings of the `tiny_run` fixture (its tokens: the tiny preset's)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The synthetic town's `tiny` preset (seed 0), generated once per test session; its root Path."""
    from datasets.synthetic_town import generate
    return generate(tmp_path_factory.mktemp("synthetic") / "tiny", preset="tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory):
    """Steps 1-2 (preprocess, tokens) on the tiny dataset, in-process: the paper's SfM settings (denser
    than the tiny preset's, for the localization tests) and the tiny preset's token grid (7 x 7: the
    trainers' tests run 3x faster than on the paper's 14 x 14); returns (dataset, RunLayout)."""
    from mmcrossvit import cli
    from mmcrossvit.paths import RunLayout
    from mmcrossvit.steps import execute, preprocess, tokens
    root = tmp_path_factory.mktemp("run")
    run = RunLayout.create(tiny_dataset, "tiny", root / "outputs", root / "DataBase")
    execute(preprocess, run, cli.settings(preprocess, TINY_RUN_PRESET))
    execute(tokens, run, cli.settings(tokens, "tiny"))
    return tiny_dataset, run
