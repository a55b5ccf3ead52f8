"""Bad input and faults through the documented commands: each ends in one line naming the file
(and line) with a non-zero exit, no traceback, no crash, and no result that claims success."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmcrossvit.colmap_model import write_colmap_text
from mmcrossvit.layout import DB_INTRINSICS, NVM, Dataset

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run_script(script: str, data: Path, tmp: Path, *extra: str, preexec=None, wrap=()) -> subprocess.CompletedProcess:
    cmd = [*wrap, sys.executable, str(REPO / script), "--dataset", str(data), "--outputs", str(tmp / "outputs"),
           "--database-root", str(tmp / "DataBase"), "--preset", "tiny", *extra]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, preexec_fn=preexec, timeout=600)


def one_error_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    """The run failed with exit code 1 and its last stderr line is the error, naming what is expected."""
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "Segmentation" not in r.stderr, r.stderr[-3000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), r.stderr[-3000:]
    for n in needles:
        assert n in line, (n, line)
    return line


def copy_dataset(src: Path, dst: Path) -> Path:
    """The dataset's text files copied (to edit), its images linked."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("images"))
    (dst / "images").symlink_to(src / "images")
    return dst


def edit_line(path: Path, name: str, fn) -> int:
    """Replace the fields of the line whose first field is `name` by fn(fields); its line number."""
    lines = path.read_text().splitlines()
    for i, ln in enumerate(lines):
        if ln.split()[:1] == [name]:
            lines[i] = " ".join(fn(ln.split()))
            path.write_text("\n".join(lines) + "\n")
            return i + 1
    raise AssertionError(f"{name} not in {path}")


# ---------------------------------------------------------------- cameras and poses, at read time
def _set(i: int, v: str):
    return lambda f: f[:i] + [v] + f[i + 1:]


QUERY_CASES = {  # field index in "<name> SIMPLE_RADIAL w h f cx cy k" -> value, and what the error says
    "negative focal": (4, "-1500", "focal length -1500 must be positive"),
    "zero focal": (4, "0", "focal length 0 must be positive"),
    "principal point outside": (5, "5000", "principal point (5000,"),
    "non-finite distortion": (7, "nan", "non-finite value"),
}


@pytest.mark.parametrize("case", sorted(QUERY_CASES))
def test_a_bad_query_camera_is_one_error_before_any_work(tiny_dataset, tmp_path, case):
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    ds = Dataset(data)
    q = sorted(ds.queries)[0]
    src = ds.query_source[q]
    field, value, says = QUERY_CASES[case]
    line = edit_line(src, q, _set(field, value))
    r = run_script("preprocessing.py", data, tmp_path)
    one_error_line(r, str(src), f"line {line}", says)
    assert not (tmp_path / "outputs").exists()  # refused before anything was written


@pytest.mark.parametrize("rel, field", [(DB_INTRINSICS, 4), (NVM, 1)])
def test_a_negative_database_focal_is_one_error(tiny_dataset, tmp_path, rel, field):
    """In the intrinsics list and in the NVM: the image lost all its 3D points before."""
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    line = edit_line(data / rel, Dataset(data).db_names[2], _set(field, "-800"))
    one_error_line(run_script("preprocessing.py", data, tmp_path), str(data / rel), f"line {line}",
                   "focal length -800 must be positive")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_a_zero_quaternion_in_a_colmap_reference_is_one_error(tiny_dataset, tmp_path, fmt):
    """COLMAP keeps a zero quaternion as read and makes it the identity rotation: refused, text and binary."""
    import pycolmap
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    cams, poses = Dataset(data).reference
    shutil.rmtree(data / "3D-models")
    shutil.rmtree(data / "reference", ignore_errors=True)
    write_colmap_text(data / "reference", cams, poses)
    name = sorted(poses)[3]
    images = data / "reference" / "images.txt"
    line = edit_line(images, next(ln.split()[0] for ln in images.read_text().splitlines()
                                  if ln.split()[-1:] == [name]), lambda f: f[:1] + ["0"] * 4 + f[5:])
    if fmt == "bin":
        rec = pycolmap.Reconstruction(str(data / "reference"))
        for f in ("cameras.txt", "images.txt", "points3D.txt"):
            (data / "reference" / f).unlink()
        rec.write_binary(str(data / "reference"))
    r = run_script("preprocessing.py", data, tmp_path)
    where = f"images.{fmt}" + (f", line {line}" if fmt == "txt" else ":")
    one_error_line(r, where, repr(name), "non-zero, finite quaternion")


def test_a_query_list_that_is_not_utf8_names_its_line(tiny_dataset, tmp_path):
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    src = Dataset(data).query_files[0]
    lines = src.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b".jpg", b"\xe9.jpg", 1)
    src.write_bytes(b"".join(lines))
    one_error_line(run_script("preprocessing.py", data, tmp_path), str(src), "line 3", "not UTF-8")


# ---------------------------------------------------------------- the run folder
def test_a_missing_dataset_leaves_no_outputs_behind(tmp_path):
    r = run_script("run_pipeline.py", tmp_path / "nowhere", tmp_path)
    one_error_line(r, str(tmp_path / "nowhere"), "dataset folder not found")
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "DataBase").exists()


def test_a_checkpoint_holding_code_is_refused_in_one_line(tiny_dataset, tmp_path):
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo payload ran",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, evil)
    r = run_script("generate_localization_pairs.py", tiny_dataset, tmp_path, "--checkpoint", str(evil))
    line = one_error_line(r, str(evil), "holds Python objects")
    assert "payload ran" not in r.stdout + r.stderr and "weights_only" not in line
    assert len(r.stderr.strip().splitlines()) == 1


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))  # Python ignores SIGXFSZ: writes fail with EFBIG


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def test_a_file_size_limit_while_writing_features_is_one_line(tiny_dataset, tmp_path):
    """HDF5's own driver segfaulted here and left a truncated features.h5 and its workers behind."""
    r = run_script("preprocessing.py", tiny_dataset, tmp_path, "--workers", "2", preexec=_limit_file_size)
    one_error_line(r, "features.h5", "File too large (EFBIG)")
    out = tmp_path / "outputs" / tiny_dataset.name
    assert not (out / "features.h5").exists() and not (out / "features.h5.partial").exists()
    r = run_script("preprocessing.py", tiny_dataset, tmp_path)  # the limit gone, the same command completes
    assert r.returncode == 0, r.stderr[-2000:]


def test_workers_end_when_their_parent_is_killed(tiny_dataset, tmp_path):
    cmd = [sys.executable, str(REPO / "preprocessing.py"), "--dataset", str(tiny_dataset), "--outputs",
           str(tmp_path / "outputs"), "--database-root", str(tmp_path / "DataBase"), "--preset", "tiny",
           "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, kids = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None:
        kids = [k for k in _children(proc.pid) if "spawn_main" in Path(f"/proc/{k}/cmdline").read_text()]
        if len(kids) >= 2:
            break
        time.sleep(0.05)
    assert len(kids) >= 2, "the extraction workers never started"
    time.sleep(1.0)  # into the extraction
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    assert not any(_alive(k) for k in kids), "worker processes outlived their killed parent"


def _namespace_mount() -> bool:
    """A private mount namespace (unshare -rm) is available: the tmpfs and read-only cases need one."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not _namespace_mount(), reason="needs unshare -rm (a private mount namespace)")


@needs_mounts
@pytest.mark.parametrize("script, size, names", [
    ("preprocessing.py", "600k", "features.h5.partial: No space left"),      # HDF5 (it segfaulted here)
    ("preprocessing.py", "2200k", "No space left on device (COLMAP: "),      # COLMAP's SQLite database
    ("run_pipeline.py", "30m", "/teacher/"),                                 # a training checkpoint
])
def test_a_full_disk_is_one_line(tiny_dataset, tmp_path, script, size, names):
    (tmp_path / "outputs").mkdir()
    shell = f"mount -t tmpfs -o size={size} tmpfs {tmp_path / 'outputs'} && exec \"$@\""
    r = run_script(script, tiny_dataset, tmp_path, *(["--workers", "2"] if script == "preprocessing.py" else []),
                   wrap=("unshare", "-rm", "sh", "-c", shell, "sh"))
    one_error_line(r, str(tmp_path / "outputs" / tiny_dataset.name), names, "(ENOSPC)")


@needs_mounts
def test_a_read_only_run_folder(tiny_run, tmp_path):
    """Up to date: the run succeeds and writes nothing. With work to do: one line naming the path."""
    root, run = tiny_run
    mine = tmp_path / "run"
    shutil.copytree(run.out.parent.parent, mine)
    outs = mine / run.out.parent.name
    args = ["--name", "tiny", "--outputs", str(outs), "--database-root", str(mine / run.database.parent.name),
            "--preset", "paper"]
    ro = f"mount --bind {mine} {mine} && mount -o remount,bind,ro {mine} && exec \"$@\""
    wrap = ("unshare", "-rm", "sh", "-c", ro, "sh")
    ok = subprocess.run([*wrap, sys.executable, str(REPO / "preprocessing.py"), "--dataset", str(root), *args],
                        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    (outs / "tiny" / "preprocessing_summary.json").unlink()  # now the step has something to write
    r = subprocess.run([*wrap, sys.executable, str(REPO / "preprocessing.py"), "--dataset", str(root), *args],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    one_error_line(r, str(outs / "tiny"), "Read-only file system (EROFS)")


def test_os_errors_end_in_one_line():
    """Permission denied (untestable as root through a real folder) takes the same path as EROFS."""
    code = ("from mmcrossvit.cli import run_cli\n"
            "def main():\n    raise PermissionError(13, 'Permission denied', '/data/outputs/x/features.h5')\n"
            "run_cli(main)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and r.stderr.strip() == \
        "error: /data/outputs/x/features.h5: Permission denied (EACCES)"
