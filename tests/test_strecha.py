"""The Strecha converter (datasets/strecha.py) on a fixture written in the benchmark's camera format."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from datasets import strecha
from mmcrossvit.errors import DataError
from mmcrossvit.geometry import Pose
from mmcrossvit.layout import Dataset

K = np.array([[90.0, 0, 41.5], [0, 91.0, 30.25], [0, 0, 1]])
W, H = 80, 60


def _camera_text(pose: Pose, size=(W, H), distortion=(0, 0, 0)) -> str:
    """A .camera file as the benchmark writes it: K, distortion, R camera-to-world, centre, size."""
    rows = list(K) + [distortion] + list(pose.R.T) + [pose.center]
    return "\n".join(" ".join(f"{v:.9g}" for v in r) for r in rows) + f"\n{size[0]} {size[1]}\n"


def _scene(tmp_path, n=6):
    src = tmp_path / "fountain-P6"
    (src / "images").mkdir(parents=True)
    (src / "gt_dense_cameras").mkdir()
    rng = np.random.default_rng(0)
    poses = {}
    for i in range(n):
        name = f"{i:04d}.jpg"
        cv2.imwrite(str(src / "images" / name), (rng.random((H, W)) * 255).astype(np.uint8))
        pose = Pose.look_at(np.array([3.0 * i, -10.0, 1.5 + 0.1 * i]), np.array([1.5 * i, 5.0, 2.0]))
        (src / "gt_dense_cameras" / f"{name}.camera").write_text(_camera_text(pose))
        poses[name] = pose
    return src, poses


def test_conversion_keeps_the_projection_of_every_camera(tmp_path):
    src, poses = _scene(tmp_path)
    out = tmp_path / "out"
    s = strecha.convert(src, out)
    check = Dataset(out).validate()
    # every 4th image from the 2nd: 0002 is the query of six images
    assert s["query_images"] == ["0002.jpg"] and check["database_images"] == 5 and check["queries"] == 1
    ds = Dataset(out)
    q = "query/day/fountain-P6/0002.jpg"
    assert ds.queries[q].condition == "day"
    assert (out / "images/images_upright" / q).resolve() == (src / "images/0002.jpg").resolve()
    cams, db_poses = ds.reference
    X = np.array([[2.0, 4.0, 3.0], [6.0, 7.0, 1.0]])
    for name, truth in poses.items():
        # the benchmark's projection: x ~ K R_fileᵀ (X - C), with R_file camera-to-world
        R_file, C = truth.R.T, truth.center
        want = (K @ (R_file.T @ (X - C).T)).T
        want = want[:, :2] / want[:, 2:]
        key = f"db/{name}" if f"db/{name}" in db_poses else q
        pose = db_poses[key] if key in db_poses else ds.gt_poses[q]
        cam = cams[key] if key in cams else ds.queries[q].camera
        got = (cam.K @ (pose.R @ X.T + pose.t[:, None])).T
        np.testing.assert_allclose(got[:, :2] / got[:, 2:], want, atol=1e-5)
        assert cam.model == "PINHOLE" and (cam.width, cam.height) == (W, H)


def test_existing_output_needs_overwrite(tmp_path):
    src, _ = _scene(tmp_path)
    out = tmp_path / "out"
    strecha.convert(src, out)
    with pytest.raises(FileExistsError):
        strecha.convert(src, out)
    assert strecha.convert(src, out, overwrite=True, query_every=3)["queries"] == 2  # 0001, 0004


@pytest.mark.parametrize("edit, line, words", [
    (lambda t: "\n".join(t.splitlines()[:8]), None, "expected 9 lines"),
    (lambda t: t.replace(t.splitlines()[3], "0.1 0 0"), 4, "non-zero distortion"),
    (lambda t: t.replace(t.splitlines()[5], "1 2 x"), 6, "expected numbers"),
    (lambda t: t.replace(t.splitlines()[7], "1 2"), 8, "camera centre"),
    (lambda t: t.replace(t.splitlines()[4], "2 0 0"), 5, "not a rotation"),
])
def test_bad_camera_file_names_file_and_line(tmp_path, edit, line, words):
    src, _ = _scene(tmp_path)
    f = src / "gt_dense_cameras/0003.jpg.camera"
    f.write_text(edit(f.read_text()))
    with pytest.raises(DataError) as e:
        strecha.convert(src, tmp_path / "out")
    assert "0003.jpg.camera" in str(e.value) and words in str(e.value)
    if line:
        assert f"line {line}" in str(e.value)


def test_image_size_must_match_the_camera(tmp_path):
    src, poses = _scene(tmp_path)
    (src / "gt_dense_cameras/0001.jpg.camera").write_text(_camera_text(poses["0001.jpg"], size=(W * 2, H * 2)))
    with pytest.raises(DataError, match="0001.jpg is 80x60"):
        strecha.convert(src, tmp_path / "out")
    (src / "gt_dense_cameras/0001.jpg.camera").unlink()
    with pytest.raises(DataError, match="no camera file"):
        strecha.convert(src, tmp_path / "out")


def test_command_line(tmp_path, capsys):
    src, _ = _scene(tmp_path)
    assert strecha.main([str(src), "--out", str(tmp_path / "o"), "--copy"]) == 0
    assert "5 database images, 1 queries" in capsys.readouterr().out
    assert not (tmp_path / "o/images/images_upright/db/0000.jpg").is_symlink()
    assert strecha.main([str(src), "--out", str(tmp_path / "o")]) == 2  # exists: needs --overwrite
