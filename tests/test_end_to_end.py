"""The whole chain on the tiny preset, then the walkthrough notebook executed against its outputs."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmcrossvit.colmap_io import read_poses
from mmcrossvit.layout import Dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chain(tiny_dataset, tmp_path_factory):
    import run_pipeline
    root = tmp_path_factory.mktemp("e2e")
    data = root / "tiny"
    shutil.copytree(tiny_dataset, data)
    out, dbroot = root / "outputs", root / "DataBase"
    timings = run_pipeline.main(["--dataset", str(data), "--preset", "tiny", "--outputs", str(out),
                                 "--database-root", str(dbroot)])
    return data, out / "tiny", dbroot, timings


def test_chain_writes_benchmark_results(chain):
    data, out, _, timings = chain
    assert {"preprocess", "tokens", "teacher", "student", "pairs", "localize", "oracle", "evaluate"} <= set(timings)
    queries = Dataset(data).queries
    lines = (out / "Pose_Estimation_Results.txt").read_text().splitlines()
    assert len(lines) == len(queries)
    assert {ln.split()[0] for ln in lines} == {Path(q).name for q in queries}
    assert all(len(ln.split()) == 8 for ln in lines)
    ev = json.loads((out / "evaluation.json").read_text())
    assert set(ev["localization"]) == {"student retrieval", "oracle retrieval"}
    assert ev["localization"]["student retrieval"]["all"]["n"] == len(queries)
    assert "queries" in ev["retrieval"]
    for where in (out, out / "oracle"):  # where the queries were placed, beside each results file
        assert (where / "topdown.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_and_reproduces(chain):
    """Every step skips its work when its outputs are complete: the rerun writes no file at all
    (each file's bytes and modification time stay; only the run's lock is touched)."""
    import run_pipeline
    data, out, dbroot, _ = chain

    def files():
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for root in (out, dbroot) for p in sorted(root.rglob("*"))
                if p.is_file() and p.name != ".lock"}
    before = files()
    run_pipeline.main(["--dataset", str(data), "--preset", "tiny", "--outputs", str(out.parent),
                       "--database-root", str(dbroot)])
    after = files()
    assert after.keys() == before.keys()
    rewritten = [str(p.relative_to(p.parents[1])) for p in before if after[p] != before[p]]
    assert not rewritten, f"an up-to-date rerun wrote {rewritten}"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_ctrl_c_in_the_teacher_then_the_same_make_command_gives_the_same_results(chain, tmp_path):
    """The documented command, on a dataset path with a space: Ctrl-C while the teacher trains says
    "run the same command again"; that command resumes the teacher, and the results file equals
    the uninterrupted run's byte for byte."""
    import os
    import signal
    import subprocess
    import sys
    import time
    data = tmp_path / "my data" / "tiny"
    shutil.copytree(chain[0], data)
    out = tmp_path / "my outputs"
    cmd = ["make", "-s", "-o", ".venv/.installed", "pipeline", f"PY={sys.executable}", f"DATASET={data}",
           "PRESET=tiny", f"OUTPUTS={out}", f"DATABASE_ROOT={tmp_path / 'my DataBase'}", "NOTEBOOK="]
    # Ctrl-C's default action restored: a test run started in the background by a non-interactive shell
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler (the run would go on)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = out / "tiny" / "teacher" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not last.exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, "the run ended before it could be interrupted"
    assert "interrupted: run the same command again to resume" in err and "Traceback" not in err, err[-3000:]
    assert not json.loads((out / "tiny" / "teacher" / "summary.json").read_text()).get("finished", False) \
        if (out / "tiny" / "teacher" / "summary.json").exists() else True
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed" in again.stdout
    assert (out / "tiny" / "Pose_Estimation_Results.txt").read_bytes() == \
        (chain[1] / "Pose_Estimation_Results.txt").read_bytes()


def test_notebook_executes_and_shows_the_json_tables(chain):
    """What `make demo` leaves: the notebook executed against the run, as .ipynb and as HTML."""
    import nbformat
    from mmcrossvit import notebook
    from mmcrossvit.paths import RunLayout
    data, out, dbroot, _ = chain
    ipynb, html = notebook.write(RunLayout.create(data, None, out.parent, dbroot))
    assert ipynb.parent == html.parent == out
    nb = nbformat.read(ipynb, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    shown = [o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code"
             for o in c.get("outputs", []) if "data" in o and "text/markdown" in o["data"]]
    ev = json.loads((out / "evaluation.json").read_text())
    for label, table in ev["localization"].items():
        block = next(b for b in shown if b.splitlines()[0].startswith(f"| {label} |"))
        for cond, row in table.items():
            line = next(ln for ln in block.splitlines() if ln.startswith(f"| {cond} |"))
            assert [float(v) for v in re.findall(r"([\d.]+)%", line)] == pytest.approx(
                [round(v, 1) for v in row["recall"]], abs=0.051)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "data" in o and "image/png" in o["data"]]
    assert len(images) >= 4  # retrieval (day, night), matches, top-down
    page = html.read_text()
    assert page.count("<img") >= len(images) and "data:image/png;base64," in page  # self-contained
    stamp = (ipynb.stat().st_mtime_ns, html.stat().st_mtime_ns)
    notebook.write(RunLayout.create(data, None, out.parent, dbroot))  # nothing changed: not re-executed
    assert (ipynb.stat().st_mtime_ns, html.stat().st_mtime_ns) == stamp


def test_results_match_estimates_in_log(chain):
    from mmcrossvit.geometry import Pose, pose_error
    data, out, _, _ = chain
    res = read_poses(out / "Pose_Estimation_Results.txt")
    from mmcrossvit.localization import SfMModel
    from mmcrossvit.localization import map_region, written_pose
    rows = [json.loads(x) for x in (out / "localization_log.jsonl").read_text().splitlines()]
    assert len(rows) == len(res)
    policy = json.loads((out / "localization_summary.json").read_text())["unverified_pose"]
    region = map_region(SfMModel.load(out / "sfm"))
    for r in rows:  # a localized pose, an unverified one's estimate, or the stand-in, as the run wrote it
        pose, what = written_pose(r, policy, region)
        dt, dr = pose_error(res[Path(r["query"]).name], pose)
        assert dt < 1e-6 and dr < 1e-3
        if what == "unverified":  # the estimate itself, not the stand-in logged beside it
            e = r["estimate"]
            assert pose_error(pose, Pose.from_qt(e["qvec"], e["tvec"]))[0] < 1e-6


def test_same_seed_gives_identical_pairs_and_results(chain, tmp_path):
    """A second, independent run of the whole chain (same seed, CPU) reproduces the files byte for byte."""
    import run_pipeline
    data, out, _, _ = chain
    out2, db2 = tmp_path / "outputs", tmp_path / "DataBase"
    run_pipeline.main(["--dataset", str(data), "--preset", "tiny", "--outputs", str(out2),
                       "--database-root", str(db2), "--from-step", "preprocess"])
    for f in ("pairs-query.txt", "Pose_Estimation_Results.txt"):
        assert (out2 / "tiny" / f).read_bytes() == (out / f).read_bytes(), f


def test_an_unverified_estimate_off_the_map_is_not_written():
    """PnP on a wrong place can put a camera kilometres (or 1e15 m) away: the stand-in is written instead."""
    from mmcrossvit.geometry import Pose
    from mmcrossvit.localization import written_pose
    stand_in = Pose.from_center(np.eye(3), [1.0, 2.0, 3.0])
    row = {"success": False, "qvec": stand_in.qvec.tolist(), "tvec": stand_in.t.tolist(),
           "stand_in": "top retrieved image", "rejected_by": "inliers"}
    region = (np.zeros(3), 100.0)
    for centre, expected in (([30.0, 40.0, 0.0], "unverified"), ([1700.0, 0.0, 0.0], "top retrieved image"),
                             ([1e15, 0.0, 0.0], "top retrieved image")):
        est = Pose.from_center(np.eye(3), centre)
        r = {**row, "estimate": {"qvec": est.qvec.tolist(), "tvec": est.t.tolist()}}
        pose, what = written_pose(r, "estimate", region)
        assert what == expected
        assert np.allclose(pose.center, centre if expected == "unverified" else stand_in.center)


def test_the_top_down_view_frames_the_map_not_far_estimates():
    import matplotlib
    matplotlib.use("Agg")
    from mmcrossvit.geometry import Pose
    from mmcrossvit.visualization import plot_topdown
    upright = np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]])  # looking along x, the image's up along z
    db = {f"db{i}": Pose.from_center(upright, [x, y, 0.0]) for i, (x, y) in enumerate([(0, 0), (100, 0), (0, 80)])}
    est = {"near": Pose.from_center(upright, [50.0, 40.0, 0.0]), "far": Pose.from_center(upright, [1e15, 0.0, 0.0])}
    points = np.array([[0.0, 0.0, 0.0], [-1500.0, 800.0, 0.0]])
    ax = plot_topdown(db, None, est, points).axes[0]
    assert ax.get_xlim() == (-50.0, 150.0) and ax.get_ylim() == (-50.0, 130.0)
    assert "1 estimate(s) outside the frame" in ax.get_title()


def test_the_top_down_view_looks_down_the_cameras_up_direction():
    """A map made from photos has no set axis (its frame is the first camera's: y down): the view
    looks down the cameras' mean up direction, so the cameras' spread shows and their height does not."""
    from mmcrossvit.geometry import Pose
    from mmcrossvit.visualization import ground_axes
    R = np.eye(3)  # the first camera's frame: x right, y down, z forward
    db = {f"db{i}": Pose.from_center(R, [x, 0.0, z]) for i, (x, z) in enumerate([(0, 0), (4, 1), (8, 0)])}
    A = ground_axes(db)
    assert np.allclose(np.abs(A @ [0.0, 1.0, 0.0]), 0)  # the up axis (-y) is out of the picture
    assert np.allclose(sorted(np.abs(A @ [1.0, 0, 0])), [0, 1]) and np.allclose(sorted(np.abs(A @ [0, 0, 1.0])), [0, 1])
