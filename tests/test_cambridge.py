"""Cambridge Landmarks converter (datasets/cambridge.py) on a tiny scene in Cambridge's exact format."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets import cambridge
from mmcrossvit.errors import DataError
from mmcrossvit.layout import GT_POSES, IMAGES, NVM, Dataset

HEADER = "Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n"
TRAIN = [  # name, X Y Z (camera centre), W P Q R (world-to-camera quaternion)
    ("seq1/frame00001.png", (10.0, -2.0, 1.7), (0.5, 0.5, -0.5, 0.5)),
    ("seq1/frame00002.png", (11.0, -2.5, 1.6), (0.8, 0.6, 0.0, 0.0)),
    ("seq3/frame00001.png", (-4.0, 5.0, 1.8), (0.7, 0.1, 0.7, 0.1)),
]
TEST = [
    # ShopFacade's seq1/frame00001.png line (as quoted in vislearn/LessMore#2), renamed seq2
    ("seq2/frame00001.png", (-0.157816, -10.413150, 1.832074), (0.712261, 0.682691, -0.123193, 0.106962)),
    ("seq4/frame00001.png", (3.0, 3.0, 1.5), (0.5, 0.5, 0.5, 0.5)),  # no NVM camera: median intrinsics
    # a dataset_test.txt line quoted in kentsommer/tensorflow-posenet#11
    ("seq8/frame00064.png", (-9.123465, -13.208417, 1.722406), (0.683091, 0.543983, -0.314596, 0.372154)),
]
# NVM cameras (named .jpg, as Cambridge's NVM does): focal at 1920x1080, radial distortion
NVM_CAMS = {"seq1/frame00001": (1670.0, -0.03), "seq1/frame00002": (1680.0, -0.01),
            "seq3/frame00001": (1700.0, 0.02), "seq2/frame00001": (1660.0, -0.02),
            "seq8/frame00064": (1690.0, 0.0), "seq9/frame00001": (1650.0, 0.0)}
W, H = 64, 36  # a 1920x1080 image at 1/30
# transforms3d.quaternions.quat2mat of ShopFacade's quaternion above (printed in vislearn/LessMore#2)
SHOP_R = np.array([[9.4676524e-01, -3.2057519e-01, -2.9447146e-02],
                   [-1.5835781e-02, 4.4984371e-02, -9.9886217e-01],
                   [3.2153509e-01, 9.4615430e-01, 3.7513080e-02]])
SCENE = "ShopTest"


def _line(name, xyz, q) -> str:
    return f"{name} " + " ".join(f"{v:.6f}" for v in (*xyz, *q)) + "\n"


def make_scene(root: Path) -> Path:
    scene = root / SCENE
    img = np.zeros((H, W, 3), np.uint8)
    for i, (name, _, _) in enumerate(TRAIN + TEST):
        p = scene / name
        p.parent.mkdir(parents=True, exist_ok=True)
        img[:] = 20 * i
        assert cv2.imwrite(str(p), img)
    (scene / "dataset_train.txt").write_text(HEADER + "".join(_line(*e) for e in TRAIN))
    (scene / "dataset_test.txt").write_text(HEADER + "".join(_line(*e) for e in TEST))
    poses = {n[:-4]: (xyz, q) for n, xyz, q in TRAIN + TEST}
    cams = []
    for key, (f, r) in NVM_CAMS.items():
        xyz, q = poses.get(key, ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0)))
        cams.append(f"{key}.jpg {f} " + " ".join(f"{v:.6f}" for v in (*q, *xyz)) + f" {r} 0\n")
    points = ["1.0 2.0 3.0 255 0 0 2 0 0 10.5 -3.2 1 5 -20.0 4.0\n", "4.0 5.0 6.0 0 255 0 1 2 7 0.5 0.5\n"]
    (scene / "reconstruction.nvm").write_text(f"NVM_V3\n\n{len(cams)}\n" + "".join(cams)
                                              + f"\n{len(points)}\n" + "".join(points) + "\n0\n")
    return scene


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("cambridge")
    scene = make_scene(root)
    out = root / "converted"
    summary = cambridge.convert(scene, out, progress=False)
    return scene, out, summary


def test_layout_validates(converted):
    _, out, summary = converted
    check = Dataset(out).validate()
    assert check["database_images"] == 3 and check["queries"] == 3 and check["ground_truth"] == 3
    assert check["conditions"] == {"day": 3} and check["pose_source"] == str(NVM)
    assert summary["complete"] and summary["intrinsics_from_nvm"] == {"database": 3, "queries": 2}
    # the fixture's NVM poses are the lists' poses: the agreement check reads ~0
    agree = summary["nvm_pose_agreement"]
    assert agree["images"] == 5 and agree["max_m"] < 1e-5 and agree["max_deg"] < 1e-3


def test_names_unique_and_linked(converted):
    scene, out, _ = converted
    ds = Dataset(out)
    assert ds.db_names == ["db/seq1_frame00001.png", "db/seq1_frame00002.png", "db/seq3_frame00001.png"]
    assert sorted(ds.queries) == [f"query/day/{SCENE}/seq2_frame00001.png", f"query/day/{SCENE}/seq4_frame00001.png",
                                  f"query/day/{SCENE}/seq8_frame00064.png"]
    names = ds.db_names + sorted(ds.queries)
    assert len({Path(n).name for n in ds.queries}) == 3
    with open(out / cambridge.NAMES_CSV) as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(names)
    assert rows[f"query/day/{SCENE}/seq4_frame00001.png"]["intrinsics"] == "median"
    assert rows["db/seq3_frame00001.png"]["original"] == "seq3/frame00001.png"
    for n in names:
        p = out / IMAGES / n
        assert p.is_symlink() and p.resolve() == (scene / rows[n]["original"]).resolve()
        assert cv2.imread(str(p)).shape == (H, W, 3)


def test_poses_world_to_camera(converted):
    _, out, _ = converted
    ds = Dataset(out)
    gt = ds.gt_poses[f"query/day/{SCENE}/seq2_frame00001.png"]
    np.testing.assert_allclose(gt.R, SHOP_R, atol=2e-6)  # the quaternion is world-to-camera ...
    np.testing.assert_allclose(gt.center, TEST[0][1], atol=1e-6)  # ... and X Y Z the camera centre
    np.testing.assert_allclose(gt.t, -SHOP_R @ np.array(TEST[0][1]), atol=1e-5)
    # so the real cameras stand ~1.8 m up, looking level, image y axis down the world z axis
    for name in ("seq2_frame00001.png", "seq8_frame00064.png"):
        p = ds.gt_poses[f"query/day/{SCENE}/{name}"]
        assert p.R[1] @ np.array([0.0, 0.0, -1.0]) > 0.95 and abs(p.viewing_direction[2]) < 0.3
        assert 1.5 < p.center[2] < 2.0
    # the database pose from dataset_train.txt, through the NVM the layout reads
    ref = ds.reference[1]["db/seq1_frame00002.png"]
    np.testing.assert_allclose(ref.center, TRAIN[1][1], atol=1e-6)
    np.testing.assert_allclose(ref.qvec, TRAIN[1][2], atol=1e-6)


def test_intrinsics(converted):
    _, out, _ = converted
    ds = Dataset(out)
    s = W / 1920
    q = ds.queries[f"query/day/{SCENE}/seq2_frame00001.png"].camera
    assert (q.model, q.width, q.height) == ("SIMPLE_RADIAL", W, H)
    np.testing.assert_allclose(q.params, (1660.0 * s, W / 2, H / 2, 0.02), rtol=1e-9)
    med = ds.queries[f"query/day/{SCENE}/seq4_frame00001.png"].camera  # median of the training cameras
    np.testing.assert_allclose(med.params, (1680.0 * s, W / 2, H / 2, 0.01), rtol=1e-9)
    db = ds.reference[0]["db/seq3_frame00001.png"]
    np.testing.assert_allclose(db.params, (1700.0 * s, W / 2, H / 2, -0.02), rtol=1e-9)


def _corrupt(tmp_path, file: str, lineno: int, text: str) -> Path:
    scene = make_scene(tmp_path)
    lines = (scene / file).read_text().splitlines(keepends=True)
    lines[lineno - 1] = text
    (scene / file).write_text("".join(lines))
    return scene


def test_malformed_line_named(tmp_path, capsys):
    scene = _corrupt(tmp_path, "dataset_test.txt", 5, "seq4/frame00001.png 3.0 3.0 abc 0.5 0.5 0.5 0.5\n")
    with pytest.raises(DataError) as ei:
        cambridge.convert(scene, tmp_path / "out", progress=False)
    e = ei.value
    assert Path(e.path) == scene / "dataset_test.txt" and e.line == 5 and "line 5" in str(e)
    assert not (tmp_path / "out").exists()  # nothing written on bad input
    assert cambridge.main([str(scene), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "dataset_test.txt, line 5" in capsys.readouterr().err

    short = _corrupt(tmp_path / "b", "dataset_train.txt", 4, "seq1/frame00001.png 1 2 3\n")
    with pytest.raises(DataError, match="line 4: expected '<image> X Y Z W P Q R' \\(8 fields\\), got 4"):
        cambridge.convert(short, tmp_path / "out_b", progress=False)
    headless = make_scene(tmp_path / "c")
    (headless / "dataset_train.txt").write_text("".join(_line(*e) for e in TRAIN))  # header missing
    with pytest.raises(DataError, match="line 1: expected 3 header lines"):
        cambridge.convert(headless, tmp_path / "out_c", progress=False)


def test_copy_overwrite_and_outlier(tmp_path):
    scene = make_scene(tmp_path)
    with open(scene / "dataset_train.txt", "a") as f:  # GreatCourt has such a line
        f.write("seq1/frame00003.png 3117382476.41 -137672612.29 -1240777531.79 0.308042 -0.508641 0.232939 0.769503\n")
    shutil.copy(scene / "seq1/frame00001.png", scene / "seq1/frame00003.png")
    out = tmp_path / "out"
    assert cambridge.main([str(scene), "--out", str(out), "--copy", "--quiet"]) == 0
    ds = Dataset(out)
    assert "db/seq1_frame00003.png" not in ds.db_names and len(ds.db_names) == 3
    assert not (out / IMAGES / "db/seq1_frame00001.png").is_symlink()
    assert (out / GT_POSES).is_file()
    with pytest.raises(FileExistsError, match="--overwrite"):
        cambridge.convert(scene, out, progress=False)
    s = cambridge.convert(scene, out, overwrite=True, progress=False)
    assert s["images"] == "symlinks" and (out / IMAGES / "db/seq1_frame00001.png").is_symlink()
    assert [o["image"] for o in s["skipped_database_outliers"]] == ["seq1/frame00003.png"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a converted Cambridge scene"):
        cambridge.convert(scene, tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "keep.txt").exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as ei:
        cambridge.main(["--help"])
    assert ei.value.code == 0 and "Cambridge Landmarks" in capsys.readouterr().out
