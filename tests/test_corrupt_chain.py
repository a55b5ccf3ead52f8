"""A corrupt image through the whole tiny chain: found by the first step, excluded consistently by
every later one, listed, the query still placed; once fixed on disk, the next run uses it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from mmcrossvit.colmap_io import read_pairs
from mmcrossvit.layout import Dataset
from mmcrossvit.paths import RunLayout
from mmcrossvit.spatial_db import SpatialDB
from mmcrossvit.storage import read_json

REPO = Path(__file__).resolve().parents[1]


def test_a_corrupt_image_is_handled_by_every_step_and_retried_when_fixed(tiny_dataset, tmp_path):
    import run_pipeline
    data = tmp_path / "tiny"
    shutil.copytree(tiny_dataset, data)
    ds = Dataset(data)
    bad_db, bad_q = ds.db_names[3], sorted(ds.queries)[0]
    originals = {n: ds.image_path(n).read_bytes() for n in (bad_db, bad_q)}
    for n in originals:
        ds.image_path(n).write_bytes(b"not an image")
    run = RunLayout.create(data, "corrupt", tmp_path / "outputs", tmp_path / "DataBase")
    argv = ["--dataset", str(data), "--name", "corrupt", "--outputs", str(run.outputs),
            "--database-root", str(run.database_root), "--preset", "tiny"]
    run_pipeline.main(argv)

    assert set(read_json(run.preprocessing_summary)["unreadable_images"]) == {bad_db, bad_q}
    assert bad_db not in {str(n) for n in SpatialDB.load(run.spatial_db).names}
    pairs = read_pairs(run.pairs_query)
    assert bad_q not in {q for q, _ in pairs} and bad_db not in {d for _, d in pairs}
    results = [ln.split()[0] for ln in run.results.read_text().splitlines()]
    assert Path(bad_q).name in results and len(results) == len(ds.queries)  # still placed ...
    assert bad_q in read_json(run.localization_summary())["failed"]       # ... and counted as failed
    assert read_json(run.evaluation_json)["localization"]["student retrieval"]["all"]["n"] == len(ds.queries)

    for n, b in originals.items():  # fixed on disk
        ds.image_path(n).write_bytes(b)
    run_pipeline.main(argv)
    assert read_json(run.preprocessing_summary)["unreadable_images"] == {}
    assert bad_db in {str(n) for n in SpatialDB.load(run.spatial_db).names}
    assert bad_q in {q for q, _ in read_pairs(run.pairs_query)}


def test_ctrl_c_ends_in_one_line_saying_how_to_resume():
    code = ("from mmcrossvit.cli import run_cli\n"
            "def main():\n    raise KeyboardInterrupt\n"
            "run_cli(main)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 130
    assert r.stderr.strip().startswith("interrupted: run the same command again to resume")
    assert "Traceback" not in r.stderr
