"""Never a stale or partial result: strict JSON, file modes, one run at a time, honest evaluation."""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmcrossvit import cli
from mmcrossvit.colmap_io import write_poses
from mmcrossvit.errors import DataError
from mmcrossvit.layout import Dataset
from mmcrossvit.paths import RunLayout
from mmcrossvit.runlock import RunLockedError, run_lock
from mmcrossvit.steps import evaluate as evaluate_step
from mmcrossvit.storage import write_json, write_npz, write_text

REPO = Path(__file__).resolve().parents[1]


def strict_loads(text: str):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- strict JSON
def test_write_json_turns_non_finite_floats_into_null(tmp_path):
    obj = {"nan": float("nan"), "inf": [math.inf, -math.inf, 1.5], "np": np.float32("nan"),
           "arr": np.array([1.0, np.inf]), "nested": {np.int64(3): (np.float64(2.0), None)}, "path": tmp_path}
    write_json(tmp_path / "a.json", obj)
    got = strict_loads((tmp_path / "a.json").read_text())
    assert got == {"nan": None, "inf": [None, None, 1.5], "np": None, "arr": [1.0, None],
                   "nested": {"3": [2.0, None]}, "path": str(tmp_path)}


def test_write_json_still_rejects_unknown_types(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "a.json", {"x": object()})
    assert not (tmp_path / "a.json").exists()
    assert not list(tmp_path.iterdir())  # no temporary file left either


# ---------------------------------------------------------------- file modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        write_json(tmp_path / "a.json", {"a": 1})
        write_npz(tmp_path / "a.npz", a=np.zeros(2))
        write_text(tmp_path / "a.txt", "y")  # replacing a file gives the same mode
    finally:
        os.umask(old)
    for name in ("a.txt", "a.json", "a.npz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


# ---------------------------------------------------------------- one run at a time
HOLDER = """
import sys, time
from mmcrossvit.runlock import hold
with hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def start_holder(lock: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RANK", None)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_stops_a_concurrent_run_and_is_taken_over_after_a_crash(tmp_path, capsys):
    run = RunLayout.create(tmp_path / "data", "locked", tmp_path / "outputs", tmp_path / "DataBase")
    assert run.lock == run.out / ".lock"
    proc = start_holder(run.lock)
    try:
        with pytest.raises(RunLockedError) as ei:
            with run_lock(run):
                pytest.fail("entered a lock another process holds")
        msg = str(ei.value)
        assert isinstance(ei.value, DataError) and "\n" not in msg
        assert str(run.lock) in msg and f"pid {proc.pid}" in msg and "delete" in msg
        owner = json.loads(run.lock.read_text())
        assert owner["pid"] == proc.pid and owner["host"]
    finally:
        proc.kill()  # a crash: no clean release, the file keeps the dead owner's pid
        proc.wait()
    assert json.loads(run.lock.read_text())["pid"] == proc.pid
    capsys.readouterr()
    with run_lock(run):
        assert json.loads(run.lock.read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert "warning" in err and "stale" in err and f"pid {proc.pid}" in err
    assert run.lock.read_text() == ""  # a clean release empties it: the next run takes it silently
    with run_lock(run):
        pass
    assert "warning" not in capsys.readouterr().err


def test_lock_is_reentrant_and_rank_zero_only(tmp_path, monkeypatch):
    run = RunLayout.create(tmp_path / "data", "nested", tmp_path / "outputs", tmp_path / "DataBase")
    with run_lock(run):
        with run_lock(run):  # a step executed inside another's lock, in the same process
            pass
        assert json.loads(run.lock.read_text())["pid"] == os.getpid()  # still held by the outer block
    assert run.lock.read_text() == ""
    proc = start_holder(run.lock)
    try:
        monkeypatch.setenv("RANK", "1")
        with run_lock(run):  # torchrun's other ranks do not contend with rank 0
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunLockedError):
            with run_lock(run):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_execute_holds_the_lock(tmp_path):
    from mmcrossvit.steps import execute

    class Step:
        STEP = "probe"

        @staticmethod
        def main(run, cfg):
            return json.loads(run.lock.read_text())["pid"]

    run = RunLayout.create(tmp_path / "data", "probe", tmp_path / "outputs", tmp_path / "DataBase")
    assert execute(Step, run, argparse.Namespace(x=1)) == os.getpid()
    proc = start_holder(run.lock)
    try:
        with pytest.raises(RunLockedError):
            execute(Step, run, argparse.Namespace(x=1))
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- evaluation that refuses to mislead
def evaluate(data: Path, outputs: Path, *extra: str, name: str = "eval") -> dict:
    argv = ["--dataset", str(data), "--name", name, "--outputs", str(outputs), "--database-root",
            str(outputs.parent / "DataBase"), "--preset", "tiny", *extra]
    return cli.main(evaluate_step, argv)


def gt_results(data: Path, path: Path, drop: int = 0, full_names: bool = False) -> list[str]:
    """Write the true poses as a results file (basenames), leaving out the first `drop` queries."""
    gt = Dataset(data).gt_poses
    names = sorted(gt)
    write_poses(path, {(q if full_names else Path(q).name): gt[q] for q in names[drop:]})
    return names[:drop]


def test_unknown_run_name_is_an_error_naming_the_folder(tiny_dataset, tmp_path):
    (tmp_path / "outputs" / "real").mkdir(parents=True)
    with pytest.raises(DataError) as ei:
        evaluate(tiny_dataset, tmp_path / "outputs", name="typo")
    assert ei.value.path == tmp_path / "outputs" / "typo" and "real" in str(ei.value)
    assert not (tmp_path / "outputs" / "typo").exists()  # nothing created for a typo


def test_run_without_results_is_an_error(tiny_dataset, tmp_path):
    run = RunLayout.create(tiny_dataset, "eval", tmp_path / "outputs")
    run.out.mkdir(parents=True)
    with pytest.raises(DataError) as ei:
        evaluate(tiny_dataset, tmp_path / "outputs")
    assert ei.value.path == run.results


def test_empty_or_absent_results_file_is_an_error(tiny_dataset, tmp_path):
    run = RunLayout.create(tiny_dataset, "eval", tmp_path / "outputs")
    write_text(run.results, "")
    with pytest.raises(DataError) as ei:
        evaluate(tiny_dataset, tmp_path / "outputs")
    assert ei.value.path == run.results and "empty" in str(ei.value)
    with pytest.raises(DataError) as ei:
        evaluate(tiny_dataset, tmp_path / "outputs", "--results", str(tmp_path / "nope.txt"))
    assert ei.value.path == tmp_path / "nope.txt" and "not found" in str(ei.value)
    assert not run.evaluation_json.exists()


def test_results_flag_evaluates_a_hand_written_file(tiny_dataset, tmp_path):
    """hloc-style basenames and full names both work; the run needs no outputs of its own."""
    gt_results(tiny_dataset, tmp_path / "hloc.txt")
    gt_results(tiny_dataset, tmp_path / "full.txt", full_names=True)
    report = evaluate(tiny_dataset, tmp_path / "outputs", "--results", f"hloc={tmp_path / 'hloc.txt'}",
                      "--results", str(tmp_path / "full.txt"))
    n = len(Dataset(tiny_dataset).gt_poses)
    assert list(report["localization"]) == ["hloc", str(tmp_path / "full.txt")]
    for table in report["localization"].values():
        assert table["all"]["n"] == n and table["all"]["recall"] == [100.0, 100.0, 100.0]
    run = RunLayout.create(tiny_dataset, "eval", tmp_path / "outputs")
    saved = strict_loads(run.evaluation_json.read_text())
    assert saved["results"]["hloc"] == {"file": str(tmp_path / "hloc.txt"), "poses": n, "queries": n,
                                        "missing": 0, "missing_first": []}
    assert "| hloc |" in run.evaluation_md.read_text()
    with pytest.raises(DataError, match="taken"):
        evaluate(tiny_dataset, tmp_path / "outputs", "--results", f"hloc={tmp_path / 'hloc.txt'}",
                 "--results", f"hloc={tmp_path / 'full.txt'}")


def test_missing_queries_are_counted_named_and_warned(tiny_dataset, tmp_path, capsys):
    run = RunLayout.create(tiny_dataset, "eval", tmp_path / "outputs")
    missing = gt_results(tiny_dataset, run.results, drop=3)
    report = evaluate(tiny_dataset, tmp_path / "outputs")
    n = len(Dataset(tiny_dataset).gt_poses)
    entry = strict_loads(run.evaluation_json.read_text())["results"]["student retrieval"]
    assert entry["missing"] == 3 and entry["missing_first"] == missing and entry["poses"] == n - 3
    assert report["localization"]["student retrieval"]["all"]["recall"][0] == pytest.approx(100 * (n - 3) / n)
    err = capsys.readouterr().err
    assert "warning: 3 of" in err and missing[0] in err
    assert "**Warning:** 3 of" in run.evaluation_md.read_text()


def test_nothing_localized_gives_null_medians_not_infinity(tiny_dataset, tmp_path):
    run = RunLayout.create(tiny_dataset, "eval", tmp_path / "outputs")
    gt = Dataset(tiny_dataset).gt_poses
    gt_results(tiny_dataset, run.results, drop=len(gt) - 1)  # one query of many: median error inf
    evaluate(tiny_dataset, tmp_path / "outputs")
    text = run.evaluation_json.read_text()
    assert "Infinity" not in text and "NaN" not in text
    row = strict_loads(text)["localization"]["student retrieval"]["all"]
    assert row["median_m"] is None and row["median_deg"] is None
    assert "| inf | inf |" in run.evaluation_md.read_text()
    from mmcrossvit.evaluation import format_localization
    assert "| - | - |" in format_localization(strict_loads(text)["localization"]["student retrieval"], "x")
