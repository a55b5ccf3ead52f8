"""What real runs meet: interruptions, bad images, hostile or broken files."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmcrossvit.colmap_model import read_images_points2d, read_points3d
from mmcrossvit.errors import DataError
from mmcrossvit.features import SiftConfig, extract_features, read_features, stored_config
from mmcrossvit.images import read_image

REPO = Path(__file__).resolve().parents[1]


def test_localization_killed_midway_resumes_to_the_same_results(tiny_run, tmp_path):
    root, paths = tiny_run
    common = [sys.executable, str(REPO / "localize.py"), "--dataset", str(root), "--name", "tiny",
              "--outputs", str(paths.out.parent), "--retrieval", "all"]
    ref = subprocess.run(common + ["--tag", "ref"], cwd=REPO, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    log = paths.out / "killed" / "localization_log.jsonl"
    proc = subprocess.Popen(common + ["--tag", "killed"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGKILL)  # no chance to clean up
            break
        time.sleep(0.05)
    proc.wait()
    n_done = len(log.read_text().splitlines())
    assert not (paths.out / "killed" / "Pose_Estimation_Results.txt").exists(), "a results file before the end"
    assert 3 <= n_done < 10
    again = subprocess.run(common + ["--tag", "killed"], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert (paths.out / "killed" / "Pose_Estimation_Results.txt").read_text() == \
        (paths.out / "ref" / "Pose_Estimation_Results.txt").read_text()


def _write(path: Path, img: np.ndarray, ext: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path.with_suffix(ext)), img)
    return path.with_suffix(ext).name


def test_feature_extraction_survives_bad_images(tmp_path):
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur((rng.random((240, 320)) * 255).astype(np.uint8), (0, 0), 2)
    d = tmp_path / "imgs"
    good = _write(d / "good", tex, ".jpg")
    black = _write(d / "black", np.zeros((240, 320), np.uint8), ".jpg")
    gray16 = _write(d / "gray16", tex.astype(np.uint16) * 257, ".png")
    rgba = _write(d / "rgba", cv2.cvtColor(tex, cv2.COLOR_GRAY2BGRA), ".png")
    trunc = d / "truncated.jpg"
    trunc.write_bytes((d / good).read_bytes()[:300])
    (d / "notimage.jpg").write_text("hello")
    names = [good, black, gray16, rgba, "truncated.jpg", "notimage.jpg"]
    out = tmp_path / "f.h5"
    s = extract_features(d, names, out, SiftConfig(first_octave=0))
    assert {x["image"] for x in s["skipped"]} == {"truncated.jpg", "notimage.jpg"}
    assert len(read_features(out, black)["keypoints"]) == 0  # night-black: no features, no crash
    n_good = len(read_features(out, good)["keypoints"])
    assert n_good > 50
    assert abs(len(read_features(out, gray16)["keypoints"]) - n_good) < 0.2 * n_good
    # a second run re-extracts nothing readable, retries the unreadable files and reports them again
    s2 = extract_features(d, names, out, SiftConfig(first_octave=0))
    assert s2["extracted"] == 2 and {x["image"] for x in s2["skipped"]} == {"truncated.jpg", "notimage.jpg"}
    # once fixed on disk, an unreadable file is extracted by the next run (no --overwrite needed)
    shutil.copyfile(d / good, trunc)
    s3 = extract_features(d, names, out, SiftConfig(first_octave=0))
    assert s3["extracted"] == 2 and {x["image"] for x in s3["skipped"]} == {"notimage.jpg"}
    assert len(read_features(out, "truncated.jpg")["keypoints"]) == n_good
    # other SIFT settings re-extract everything
    assert extract_features(d, names, out, SiftConfig(first_octave=0, peak_threshold=0.01))["extracted"] == len(names)


def test_affine_and_dsp_sift_are_recorded_only_when_on(tmp_path):
    """Options added later leave the record of files extracted without them unchanged (no needless
    re-extraction); turning one on re-extracts, records it and changes the features."""
    rng = np.random.default_rng(2)
    d = tmp_path / "imgs"
    name = _write(d / "a", cv2.GaussianBlur((rng.random((240, 320)) * 255).astype(np.uint8), (0, 0), 2), ".jpg")
    out = tmp_path / "f.h5"
    extract_features(d, [name], out, SiftConfig(first_octave=0))
    with h5py.File(out, "r") as f:
        assert set(json.loads(f[name].attrs["config"])) == {"max_image_size", "max_num_features", "first_octave",
                                                            "peak_threshold", "num_threads", "contrast"}
    plain = read_features(out, name)
    assert extract_features(d, [name], out, SiftConfig(first_octave=0))["extracted"] == 0
    for opts in ({"affine_shape": True}, {"domain_size_pooling": True}):
        conf = SiftConfig(first_octave=0, **opts)
        assert extract_features(d, [name], out, conf)["extracted"] == 1
        assert stored_config(out) == conf
        other = read_features(out, name)
        assert len(other["keypoints"]) > 50
        same = len(other["keypoints"]) == len(plain["keypoints"]) and \
            np.array_equal(other["descriptors"], plain["descriptors"])
        assert not same, opts


def test_exif_rotation_is_applied(tmp_path):
    """A portrait photo stored landscape with EXIF orientation 6 reads as portrait."""
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :10] = 255  # a white band on the left of the stored pixels
    ok, jpg = cv2.imencode(".jpg", img)
    data = jpg.tobytes()
    # minimal APP1/EXIF segment with Orientation = 6 (rotate 90° clockwise to display)
    tiff = (b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
            + b"\x00\x00\x00\x00")
    app1 = b"\xff\xe1" + (len(tiff) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + tiff
    p = tmp_path / "rot.jpg"
    p.write_bytes(data[:2] + app1 + data[2:])
    out = read_image(p)
    assert out.shape[:2] == (60, 40)
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # the band is now on top


def test_corrupt_features_file_is_restarted(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "imgs"
    name = _write(d / "a", cv2.GaussianBlur((rng.random((120, 160)) * 255).astype(np.uint8), (0, 0), 2), ".jpg")
    out = tmp_path / "f.h5"
    out.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)  # a torn HDF5 file
    s = extract_features(d, [name], out, SiftConfig(first_octave=0))
    assert s["extracted"] == 1 and read_features(out, name)["keypoints"].shape[1] == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet="0123456789 .-#\nabcE", max_size=200))
def test_colmap_text_readers_raise_only_data_errors(tmp_path, text):
    import tempfile
    with tempfile.TemporaryDirectory() as t:
        (Path(t) / "images.txt").write_text(text)
        (Path(t) / "points3D.txt").write_text(text)
        for fn in (read_images_points2d, read_points3d):
            try:
                fn(t)
            except DataError:
                pass


def test_checkpoint_loading_never_unpickles_code(tmp_path):
    """A pickle that would run code on load is refused by weights_only loading."""
    import torch
    from mmcrossvit.train.weights import read_state_dict

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    p = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, p)
    with pytest.raises(DataError):
        read_state_dict(p)
    assert not (tmp_path / "pwned").exists()


def test_one_image_dataset_stops_with_a_clear_message(tmp_path):
    import preprocessing
    from mmcrossvit.colmap_io import CameraSpec
    from mmcrossvit.geometry import Pose
    from mmcrossvit.layout import write_metadata
    rng = np.random.default_rng(2)
    cam = CameraSpec("SIMPLE_RADIAL", 160, 120, (128.0, 80.0, 60.0, 0.0))
    img = cv2.GaussianBlur((rng.random((120, 160, 3)) * 255).astype(np.uint8), (0, 0), 2)
    for n in ("db/0.jpg", "query/day/q.jpg"):
        (tmp_path / "images/images_upright" / n).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "images/images_upright" / n), img)
    write_metadata(tmp_path, {"db/0.jpg": (cam, Pose.look_at([0, 0, 1.6], [0, 10, 1.6]))},
                   {"query/day/q.jpg": (cam, Pose.look_at([0, 1, 1.6], [0, 10, 1.6]))})
    with pytest.raises(DataError, match="no 3D points"):
        preprocessing.main(["--dataset", str(tmp_path), "--outputs", str(tmp_path / "out"),
                            "--database-root", str(tmp_path / "db"), "--first-octave", "0"])


def test_training_killed_midway_resumes_to_the_same_weights(tiny_run, tmp_path):
    """SIGKILL during teacher training, then --resume: the final weights equal an uninterrupted run's."""
    import torch
    root, paths = tiny_run
    base = [sys.executable, str(REPO / "train_multimodal_crossvit_teacher.py"), "--dataset", str(root), "--name", "tiny",
            "--outputs", str(paths.out.parent), "--database-root", str(paths.database.parent), "--preset", "tiny",
            "--epochs", "3", "--threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # the uninterrupted run beside the one that is killed (one thread each: the results do not
    # depend on it, and the test takes the time of one run instead of two), on a copy of the run's
    # outputs, since the run lock rightly refuses two trainings of one run at once
    shutil.copytree(paths.out, tmp_path / "ref_outputs" / paths.out.name, ignore=shutil.ignore_patterns(".lock"))
    ref_cmd = [str(tmp_path / "ref_outputs") if a == str(paths.out.parent) else a for a in base]
    ref = subprocess.Popen(ref_cmd + ["--out", str(tmp_path / "ref")], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(base + ["--out", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "last.pt").exists():
            time.sleep(0.3)  # into the next epoch
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"
    _, err = ref.communicate()
    assert ref.returncode == 0, err[-2000:]
    again = subprocess.run(base + ["--out", str(out), "--resume"], cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)["model"]
    b = torch.load(out / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
