"""Never a stale result: a step whose inputs or settings changed recomputes exactly what changed."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np

from mmcrossvit import cli
from mmcrossvit.colmap_io import write_pairs
from mmcrossvit.evaluation import oracle_candidates
from mmcrossvit.layout import Dataset
from mmcrossvit.localization import SfMModel
from mmcrossvit.paths import RunLayout
from mmcrossvit.steps import execute, localize, preprocess
from tests.conftest import TINY_RUN_PRESET


def _localize(run, tag, **kw):
    return execute(localize, run, cli.settings(localize, "tiny", tag=tag, **kw))


def _rows(run, tag):
    return {r["query"]: r for r in map(json.loads, run.localization_log(tag).read_text().splitlines())}


def _oracle_pairs(root, run, k=5):
    ds = Dataset(root)
    return oracle_candidates(ds, SfMModel.load(run.sfm), k)


def test_changed_pairs_relocalize_only_those_queries(tiny_run, tmp_path, capsys):
    root, run = tiny_run
    cands = _oracle_pairs(root, run)
    pairs = tmp_path / "pairs.txt"
    write_pairs(pairs, [(q, d) for q, c in sorted(cands.items()) for d in c])
    _localize(run, "pairs_a", pairs=pairs)
    before = _rows(run, "pairs_a")
    changed = sorted(cands)[:2]
    for q in changed:
        cands[q] = cands[q][::-1][:3]
    write_pairs(pairs, [(q, d) for q, c in sorted(cands.items()) for d in c])
    capsys.readouterr()
    _localize(run, "pairs_a", pairs=pairs)
    assert "pairs changed for 2 queries: re-localizing 2 queries" in capsys.readouterr().out
    after = _rows(run, "pairs_a")
    for q in before:  # untouched rows are reused as they were (their timings too)
        assert (after[q] == before[q]) == (q not in changed), q
    assert [after[q]["retrieved"] for q in changed] == [cands[q] for q in changed]
    _localize(run, "pairs_clean", pairs=pairs)  # the same pairs from scratch
    assert run.results_file("pairs_a").read_bytes() == run.results_file("pairs_clean").read_bytes()


def test_changed_settings_relocalize_every_query(tiny_run, capsys):
    _, run = tiny_run
    _localize(run, "settings", retrieval="all", num_retrieved=4)
    capsys.readouterr()
    _localize(run, "settings", retrieval="all", num_retrieved=4, ratio=0.7)
    out = capsys.readouterr().out
    n = len(_rows(run, "settings"))
    assert f"settings, model or features changed for {n}: re-localizing {n} queries" in out
    _localize(run, "settings_clean", retrieval="all", num_retrieved=4, ratio=0.7)
    assert run.results_file("settings").read_bytes() == run.results_file("settings_clean").read_bytes()


def test_a_query_removed_from_the_list_leaves_the_results(tiny_run, tmp_path, capsys):
    root, run = tiny_run
    data = tmp_path / "tiny"
    shutil.copytree(root, data)
    run2 = RunLayout.create(data, run.name, run.outputs, run.database_root)
    _localize(run2, "qlist", retrieval="all", num_retrieved=3)
    qfile = Dataset(data).query_files[0]
    lines = qfile.read_text().splitlines()
    removed = lines[0].split()[0]
    qfile.write_text("\n".join(lines[1:]) + "\n")
    capsys.readouterr()
    _localize(run2, "qlist", retrieval="all", num_retrieved=3)
    assert "1 queries no longer listed (dropped)" in capsys.readouterr().out
    assert removed not in _rows(run2, "qlist")
    names = [ln.split()[0] for ln in run2.results_file("qlist").read_text().splitlines()]
    assert len(names) == len(Dataset(data).queries) and removed.split("/")[-1] not in names


def test_new_sift_settings_reextract_and_recompute_the_model(tiny_run, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    root, run = tiny_run
    run2 = RunLayout.create(root, "sift", tmp_path / "outputs", tmp_path / "DataBase")
    shutil.copytree(run.out, run2.out)  # an earlier run with the tiny preset's settings
    shutil.copytree(run.database, run2.database)
    execute(preprocess, run2, cli.settings(preprocess, TINY_RUN_PRESET))
    assert "re-extracting" not in caplog.text and "stale" not in caplog.text
    points = run2.sfm_points.read_bytes()
    caplog.clear()
    execute(preprocess, run2, cli.settings(preprocess, TINY_RUN_PRESET, peak_threshold=0.01))
    assert "re-extracting features: SIFT settings changed for" in caplog.text
    assert "SfM model" in caplog.text and "is stale" in caplog.text
    assert run2.sfm_points.read_bytes() != points
    from mmcrossvit.features import stored_config
    assert np.isclose(stored_config(run2.features).peak_threshold, 0.01)
