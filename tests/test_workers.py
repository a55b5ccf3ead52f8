"""--workers: extraction, matching and localization in worker processes give byte-identical
outputs to one process (the parent writes in input order; matching is exact integer arithmetic)."""
from __future__ import annotations

import sqlite3

import h5py
import numpy as np
import pytest

from mmcrossvit import cli
from mmcrossvit.features import match_descriptors
from mmcrossvit.parallel import ordered_map, resolve_workers
from mmcrossvit.paths import RunLayout
from mmcrossvit.steps import execute, localize, preprocess


def _square(state, x):
    return state * x * x


def _offset(k):
    return k


def test_ordered_map_keeps_the_input_order_in_every_mode():
    items = list(range(37))
    one = list(ordered_map(_square, items, 1, _offset, (3,)))
    two = list(ordered_map(_square, items, 2, _offset, (3,), chunksize=4))
    assert one == two == [3 * x * x for x in items]
    assert resolve_workers(0) >= 1 and resolve_workers(3) == 3
    with pytest.raises(ValueError):
        resolve_workers(-1)


SCRIPT = """
import os, sys
sys.path.insert(0, {repo!r})
with open({marker!r}, "a") as f:  # one line per import of this script
    f.write(str(os.getpid()) + "\\n")
from mmcrossvit.parallel import ordered_map

def local(state, x):
    return state + x

if __name__ == "__main__":
    mine = list(ordered_map(local, range(5), 2, int, (10,)))        # a callable of this script
    lib = list(ordered_map({lib}, range(4), 2, {init}, ()))            # the library's own
    print(mine, len(lib))
"""


def test_workers_import_the_calling_script_only_when_they_need_it(tmp_path):
    """Workers given only library functions do not re-import the script that started them (its
    top-level code runs once); workers given one of the script's functions still get it."""
    import subprocess
    import sys
    from pathlib import Path
    marker = tmp_path / "imports.txt"
    script = tmp_path / "caller.py"
    script.write_text(SCRIPT.format(repo=str(Path(__file__).resolve().parents[1]), marker=str(marker),
                                    lib="_noop", init="_noop_init").replace(
        "from mmcrossvit.parallel import ordered_map", "from mmcrossvit.parallel import ordered_map, _noop, _noop_init"))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[10,", "11,", "12,", "13,", "14]", "4"]
    pids = marker.read_text().split()
    # the parent, then the two workers of the first pool (they need `local`); none from the second
    assert len(pids) == 3, pids


def test_matching_does_not_depend_on_the_thread_count():
    import torch
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (700, 128)).astype(np.uint8)
    b = np.clip(a[rng.permutation(700)[:500]].astype(int) + rng.integers(-20, 21, (500, 128)), 0, 255).astype(np.uint8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        m1 = match_descriptors(a, b, ratio=0.9)
        torch.set_num_threads(2)
        m2 = match_descriptors(a, b, ratio=0.9)
    finally:
        torch.set_num_threads(before)
    assert len(m1) > 300 and np.array_equal(m1, m2)


def _h5_arrays(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def _db_rows(path):
    with sqlite3.connect(path) as c:
        return {t: c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in ("keypoints", "descriptors", "matches", "two_view_geometries")}


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """The tiny dataset preprocessed and localized (oracle retrieval) with 1 and with 2 workers."""
    out = {}
    for w in (1, 2):
        root = tmp_path_factory.mktemp(f"workers{w}")
        run = RunLayout.create(tiny_dataset, "tiny", root / "outputs", root / "DataBase")
        execute(preprocess, run, cli.settings(preprocess, "tiny", workers=w, match_workers=w))
        execute(localize, run, cli.settings(localize, "tiny", workers=w, retrieval="oracle"))
        out[w] = run
    return out


def test_two_workers_write_identical_features_matches_model_and_poses(runs):
    one, two = runs[1], runs[2]
    f1, f2 = _h5_arrays(one.features), _h5_arrays(two.features)
    assert f1.keys() == f2.keys() and len(f1) > 0
    for k in f1:
        assert np.array_equal(f1[k], f2[k]), k
    d1, d2 = _db_rows(one.sfm_database), _db_rows(two.sfm_database)
    assert len(d1["matches"]) > 0
    assert d1 == d2
    for p in sorted(one.sfm.iterdir()):
        assert p.read_bytes() == (two.sfm / p.name).read_bytes(), p.name
    r1, r2 = one.results_file("oracle"), two.results_file("oracle")
    assert r1.read_bytes() == r2.read_bytes() and len(r1.read_text().splitlines()) == 10
