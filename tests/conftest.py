"""Shared pytest fixtures (keep this file small; expensive fixtures are session-scoped)."""
from __future__ import annotations

import pytest

TINY_RUN_PRESET = "paper"  # the settings of the `tiny_run` fixture's steps


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The synthetic town's `tiny` preset (seed 0), generated once per test session; its root Path."""
    from datasets.synthetic_town import generate
    return generate(tmp_path_factory.mktemp("synthetic") / "tiny", preset="tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory):
    """Steps 1-2 (preprocess, tokens) on the tiny dataset with the paper's SfM settings (denser
    than the tiny preset's, for the localization tests), in-process; returns (dataset, RunLayout)."""
    from mmcrossvit import cli
    from mmcrossvit.paths import RunLayout
    from mmcrossvit.steps import execute, preprocess, tokens
    root = tmp_path_factory.mktemp("run")
    run = RunLayout.create(tiny_dataset, "tiny", root / "outputs", root / "DataBase")
    for step in (preprocess, tokens):
        execute(step, run, cli.settings(step, TINY_RUN_PRESET))
    return tiny_dataset, run
