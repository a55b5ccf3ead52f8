"""Readers/writers of the text formats (mmcrossvit.colmap_io) and the geometry helpers.

Every expected value is computed independently of the code under test: rotations with
scipy.spatial.transform.Rotation, boxes and overlaps by hand.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from mmcrossvit.colmap_io import (CAMERA_MODELS, SINGLE_FOCAL_MODELS, CameraSpec, NVMCamera, NVMModel,
                                  read_intrinsics, read_nvm, read_pairs, read_poses, write_intrinsics, write_nvm,
                                  write_pairs, write_poses)
from mmcrossvit.colmap_model import read_colmap_cameras_poses, read_model_observations, write_colmap_text
from mmcrossvit.errors import DataError
from mmcrossvit.geometry import Pose, box_iou, pose_error, qvec_to_rotmat, robust_box, rotmat_to_qvec

HYP = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scipy_R(q) -> np.ndarray:
    """Rotation matrix of a (qw, qx, qy, qz) quaternion, computed by scipy (scalar-last)."""
    w, x, y, z = q
    return Rotation.from_quat([x, y, z, w]).as_matrix()


def expect_data_error(fn, path, line=None, contains: str | None = None) -> DataError:
    with pytest.raises(DataError) as ei:
        fn()
    e = ei.value
    assert e.path is not None and Path(e.path) == Path(path), (e.path, path)
    assert str(path) in str(e)
    if line is not None:
        assert e.line == line, (e.line, line, str(e))
        assert f"line {line}" in str(e)
    if contains is not None:
        assert contains in str(e), str(e)
    return e


# ---------------------------------------------------------------- NVM in Aachen's format
# Camera lines copied in the Aachen layout: name, focal, qw qx qy qz (world-to-camera),
# camera centre cx cy cz, radial distortion, 0.
AACHEN_NVM = """NVM_V3

3
db/1045.jpg 1057.47 0.997828 -0.00137186 -0.0654437 -0.00528574 -56.6627 1.59693 -74.6297 -0.0367052 0
db/1046.jpg 1061.3 0.707107 0 0.707107 0 10.5 -2.25 3 0.012 0
db/sub/2000.jpg 980.125 0.5 0.5 -0.5 0.5 0 0 0 0 0

2
1.5 -2.25 30.75 255 128 0 2 0 17 10.5 -4.25 2 3 -100 20
-7 8 9.5 1 2 3 3 0 1 0.5 0.5 1 2 5 -6 2 9 -1.5 1.25

0
"""
NVM_CAMERAS = [  # name, focal, q, centre, radial
    ("db/1045.jpg", 1057.47, (0.997828, -0.00137186, -0.0654437, -0.00528574), (-56.6627, 1.59693, -74.6297), -0.0367052),
    ("db/1046.jpg", 1061.3, (0.707107, 0, 0.707107, 0), (10.5, -2.25, 3), 0.012),
    ("db/sub/2000.jpg", 980.125, (0.5, 0.5, -0.5, 0.5), (0, 0, 0), 0.0),
]


def test_read_aachen_nvm(tmp_path):
    p = tmp_path / "aachen_cvpr2018_db.nvm"
    p.write_text(AACHEN_NVM)
    m = read_nvm(p)
    assert [c.name for c in m.cameras] == [c[0] for c in NVM_CAMERAS]
    for cam, (name, f, q, ctr, radial) in zip(m.cameras, NVM_CAMERAS):
        assert cam.focal == pytest.approx(f)
        assert cam.radial == pytest.approx(radial)
        np.testing.assert_allclose(cam.pose.center, ctr, atol=1e-9)
        np.testing.assert_allclose(cam.pose.R, scipy_R(q), atol=1e-12)
        # world-to-camera: the centre maps to the camera origin
        np.testing.assert_allclose(cam.pose.transform(np.array([ctr]))[0], 0, atol=1e-9)
    np.testing.assert_allclose(m.points_xyz, [[1.5, -2.25, 30.75], [-7, 8, 9.5]])
    np.testing.assert_array_equal(m.points_rgb, [[255, 128, 0], [1, 2, 3]])
    assert m.points_rgb.dtype == np.uint8
    assert m.observations == [[(0, 17, 10.5, -4.25), (2, 3, -100.0, 20.0)],
                              [(0, 1, 0.5, 0.5), (1, 2, 5.0, -6.0), (2, 9, -1.5, 1.25)]]
    skipped = read_nvm(p, skip_points=True)
    assert len(skipped.points_xyz) == 0 and [c.name for c in skipped.cameras] == [c[0] for c in NVM_CAMERAS]


def test_nvm_round_trip(tmp_path):
    p = tmp_path / "a.nvm"
    p.write_text(AACHEN_NVM)
    m = read_nvm(p)
    q = tmp_path / "b.nvm"
    write_nvm(q, m)
    text = q.read_text()
    assert text.startswith("NVM_V3\n") and text.rstrip().endswith("\n0")
    m2 = read_nvm(q)
    assert [c.name for c in m2.cameras] == [c.name for c in m.cameras]
    for a, b in zip(m.cameras, m2.cameras):
        assert b.focal == pytest.approx(a.focal, rel=1e-9)
        assert b.radial == pytest.approx(a.radial, rel=1e-9, abs=1e-12)
        assert pose_error(b.pose, a.pose)[0] < 1e-6
        np.testing.assert_allclose(b.pose.R, a.pose.R, atol=1e-9)
    np.testing.assert_allclose(m2.points_xyz, m.points_xyz)
    np.testing.assert_array_equal(m2.points_rgb, m.points_rgb)
    assert m2.observations == m.observations


def test_nvm_writer_uses_centres_and_world_to_camera_rotation(tmp_path):
    R = scipy_R(np.array([0.9, 0.1, -0.3, 0.2]) / np.linalg.norm([0.9, 0.1, -0.3, 0.2]))
    c = np.array([3.0, -4.0, 12.5])
    m = NVMModel([NVMCamera("db/x.jpg", 700.0, Pose.from_center(R, c), 0.0)])
    p = tmp_path / "x.nvm"
    write_nvm(p, m)
    line = [ln for ln in p.read_text().splitlines() if ln.startswith("db/x.jpg")][0].split()
    assert len(line) == 11 and line[-1] == "0"
    q = np.array([float(v) for v in line[2:6]])
    np.testing.assert_allclose(scipy_R(q), R, atol=1e-8)
    np.testing.assert_allclose([float(v) for v in line[6:9]], c, atol=1e-8)


# ---------------------------------------------------------------- intrinsics / poses / pairs
def test_intrinsics_round_trip_and_values(tmp_path):
    p = tmp_path / "night_time_queries_with_intrinsics.txt"
    p.write_text("# comment\n\nquery/night/nexus5x/IMG_1.jpg SIMPLE_RADIAL 1600 1200 1469.2 800 600 -0.0353019\n"
                 "query/day/milestone/2010.jpg PINHOLE 640 480 500.5 501 320 240\n")
    cams = read_intrinsics(p)
    assert list(cams) == ["query/night/nexus5x/IMG_1.jpg", "query/day/milestone/2010.jpg"]
    c = cams["query/night/nexus5x/IMG_1.jpg"]
    assert c == CameraSpec("SIMPLE_RADIAL", 1600, 1200, (1469.2, 800.0, 600.0, -0.0353019))
    np.testing.assert_array_equal(c.K, [[1469.2, 0, 800], [0, 1469.2, 600], [0, 0, 1]])
    np.testing.assert_array_equal(cams["query/day/milestone/2010.jpg"].K, [[500.5, 0, 320], [0, 501, 240], [0, 0, 1]])
    q = tmp_path / "out.txt"
    write_intrinsics(q, cams)
    assert read_intrinsics(q) == cams


def test_poses_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    poses = {f"q{i}.jpg": Pose(Rotation.random(random_state=i).as_matrix(), rng.normal(size=3) * 50)
             for i in range(5)}
    p = tmp_path / "poses.txt"
    write_poses(p, poses)
    back = read_poses(p)
    assert list(back) == list(poses)
    for n in poses:
        np.testing.assert_allclose(back[n].R, poses[n].R, atol=1e-8)
        np.testing.assert_allclose(back[n].t, poses[n].t, rtol=1e-8, atol=1e-8)
    # the written quaternion is the world-to-camera rotation with qw >= 0
    for ln in p.read_text().splitlines():
        tok = ln.split()
        q = np.array([float(v) for v in tok[1:5]])
        assert q[0] >= 0
        np.testing.assert_allclose(scipy_R(q), poses[tok[0]].R, atol=1e-8)


def test_poses_values(tmp_path):
    p = tmp_path / "gt.txt"
    p.write_text("IMG_1.jpg 0.5 0.5 0.5 0.5 1 2 3\n")
    pose = read_poses(p)["IMG_1.jpg"]
    # q = (1/2)(1, 1, 1, 1) is a 120 degree rotation about (1,1,1): x -> y -> z -> x
    np.testing.assert_allclose(pose.R, [[0, 0, 1], [1, 0, 0], [0, 1, 0]], atol=1e-12)
    np.testing.assert_allclose(pose.t, [1, 2, 3])


def test_pairs_round_trip(tmp_path):
    pairs = [("query/day/a.jpg", "db/1.jpg"), ("query/day/a.jpg", "db/2.jpg"), ("q b.jpg".replace(" ", "_"), "db/3.jpg")]
    p = tmp_path / "pairs.txt"
    write_pairs(p, pairs)
    assert read_pairs(p) == pairs
    p.write_text("a.jpg b.jpg\na.jpg b.jpg c.jpg\n")
    expect_data_error(lambda: read_pairs(p), p, 2)


def test_colmap_text_model_read_by_pycolmap(tmp_path):
    cams = {"db/a.jpg": CameraSpec("PINHOLE", 640, 480, (500.0, 510.0, 320.0, 240.0)),
            "db/b.jpg": CameraSpec("SIMPLE_RADIAL", 1600, 1200, (1400.0, 800.0, 600.0, -0.03)),
            "db/sub/c.jpg": CameraSpec("OPENCV", 800, 600, (700.0, 705.0, 400.0, 300.0, 0.01, -0.002, 1e-4, 2e-4))}
    rng = np.random.default_rng(3)
    poses = {n: Pose.from_center(Rotation.random(random_state=10 + i).as_matrix(), rng.normal(size=3) * 20)
             for i, n in enumerate(cams)}
    write_colmap_text(tmp_path / "ref", cams, poses)
    cams2, poses2 = read_colmap_cameras_poses(tmp_path / "ref")
    assert set(poses2) == set(poses)
    for n in poses:
        dt, dr = pose_error(poses2[n], poses[n])
        assert dt < 1e-6 and dr < 1e-3  # arccos near 1 amplifies the 12-digit rounding
        np.testing.assert_allclose(poses2[n].R, poses[n].R, atol=1e-10)
        np.testing.assert_allclose(poses2[n].t, poses[n].t, atol=1e-9)
        assert cams2[n].model == cams[n].model and (cams2[n].width, cams2[n].height) == (cams[n].width, cams[n].height)
        np.testing.assert_allclose(cams2[n].params, cams[n].params, rtol=1e-10)


def test_colmap_reader_rejects_non_model(tmp_path):
    (tmp_path / "empty").mkdir()
    expect_data_error(lambda: read_colmap_cameras_poses(tmp_path / "empty"), tmp_path / "empty")


def test_read_model_observations(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "images.txt").write_text(
        "# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME\n# POINTS2D[] as (X, Y, POINT3D_ID)\n"
        "1 1 0 0 0 0 0 0 1 db/a.jpg\n"
        "10.5 20.5 7 11 12 -1 30 40 9\n"
        "2 1 0 0 0 1 0 0 1 db/b.jpg\n"
        "\n")
    (d / "points3D.txt").write_text("# POINT3D_ID X Y Z R G B ERROR TRACK[]\n"
                                    "7 1 2 3 0 0 0 0.5 1 0\n9 -4 5.5 6 0 0 0 0.5 1 2\n")
    images, pids, xyz = read_model_observations(d)
    kp, ids = images["db/a.jpg"]
    np.testing.assert_allclose(kp, [[10.5, 20.5], [30, 40]])
    np.testing.assert_array_equal(ids, [7, 9])
    assert images["db/b.jpg"][0].shape == (0, 2) and len(images["db/b.jpg"][1]) == 0
    np.testing.assert_array_equal(pids, [7, 9])
    np.testing.assert_allclose(xyz, [[1, 2, 3], [-4, 5.5, 6]])


# ---------------------------------------------------------------- bad input
BAD_INTRINSICS = [
    ("malformed", "q/b.jpg PINHOLE 640\n", "expected"),
    ("name only", "q/b.jpg\n", "expected"),
    ("unknown model", "q/b.jpg PINHOL 640 480 1 2 3 4\n", "unknown camera model"),
    ("param count", "q/b.jpg PINHOLE 640 480 500 500 320\n", "takes 4 parameters"),
    ("non-numeric param", "q/b.jpg PINHOLE 640 480 500 abc 320 240\n", "abc"),
    ("non-integer width", "q/b.jpg PINHOLE 640.5 480 500 500 320 240\n", "640.5"),
    ("zero height", "q/b.jpg PINHOLE 640 0 500 500 320 240\n", "positive"),
    ("nan param", "q/b.jpg PINHOLE 640 480 500 nan 320 240\n", "non-finite"),
    ("duplicate", "q/a.jpg PINHOLE 640 480 500 500 320 240\n", "listed twice"),
    ("parent dir", "../x.jpg PINHOLE 640 480 500 500 320 240\n", "relative path"),
    ("parent dir inside", "q/../../x.jpg PINHOLE 640 480 500 500 320 240\n", "relative path"),
    ("absolute", "/abs.jpg PINHOLE 640 480 500 500 320 240\n", "relative path"),
]


@pytest.mark.parametrize("case,bad,msg", BAD_INTRINSICS, ids=[c[0] for c in BAD_INTRINSICS])
def test_bad_intrinsics_line(tmp_path, case, bad, msg):
    p = tmp_path / "day_time_queries_with_intrinsics.txt"
    # the bad line is line 4: a valid line, a comment, a blank line, then it
    p.write_text("q/a.jpg PINHOLE 640 480 500 500 320 240\n# comment\n\n" + bad
                 + "q/z.jpg PINHOLE 640 480 500 500 320 240\n")
    expect_data_error(lambda: read_intrinsics(p), p, 4, msg)


BAD_POSES = [
    ("nan", "b.jpg nan 0 0 0 1 2 3\n", "non-finite"),
    ("inf translation", "b.jpg 1 0 0 0 1 inf 3\n", "non-finite"),
    ("non-unit quaternion", "b.jpg 0.5 0 0 0 1 2 3\n", "unit"),
    ("zero quaternion", "b.jpg 0 0 0 0 1 2 3\n", "unit"),
    ("too few fields", "b.jpg 1 0 0 0 1 2\n", "fields"),
    ("non-numeric", "b.jpg 1 0 0 0 1 two 3\n", "two"),
    ("duplicate", "a.jpg 1 0 0 0 4 5 6\n", "listed twice"),
]


@pytest.mark.parametrize("case,bad,msg", BAD_POSES, ids=[c[0] for c in BAD_POSES])
def test_bad_pose_line(tmp_path, case, bad, msg):
    p = tmp_path / "query_poses.txt"
    p.write_text("a.jpg 1 0 0 0 1 2 3\n" + bad)
    expect_data_error(lambda: read_poses(p), p, 2, msg)


def test_missing_file_is_data_error(tmp_path):
    for reader in (read_intrinsics, read_poses, read_pairs, read_nvm):
        expect_data_error(lambda: reader(tmp_path / "nope.txt"), tmp_path / "nope.txt", contains="not found")


def test_binary_file_is_data_error(tmp_path):
    p = tmp_path / "x.txt"
    p.write_bytes(b"\xff\xfe\x00\x81garbage")
    expect_data_error(lambda: read_intrinsics(p), p, contains="text")


def _nvm_lines():
    return AACHEN_NVM.splitlines(keepends=True)


def test_nvm_truncated_cameras(tmp_path):
    p = tmp_path / "t.nvm"
    p.write_text("".join(_nvm_lines()[:4]))  # header, blank, "3", one camera
    # the error points at the camera count that promised more
    expect_data_error(lambda: read_nvm(p), p, 3, "1 of 3 cameras")


def test_nvm_truncated_points(tmp_path):
    p = tmp_path / "t.nvm"
    p.write_text("".join(_nvm_lines()[:9]))  # ... "2", first point only
    expect_data_error(lambda: read_nvm(p), p, 8, "1 of 2 points")


def test_nvm_truncated_inside_camera_line(tmp_path):
    lines = _nvm_lines()
    lines[4] = " ".join(lines[4].split()[:7]) + "\n"
    p = tmp_path / "t.nvm"
    p.write_text("".join(lines))
    expect_data_error(lambda: read_nvm(p), p, 5)


def test_nvm_measurement_of_missing_camera(tmp_path):
    lines = _nvm_lines()
    lines[9] = "-7 8 9.5 1 2 3 2 0 1 0.5 0.5 3 2 5 -6\n"  # camera 3 of 3 (indices 0..2)
    p = tmp_path / "t.nvm"
    p.write_text("".join(lines))
    expect_data_error(lambda: read_nvm(p), p, 10, "camera 3")
    lines[9] = "-7 8 9.5 1 2 3 1 -1 1 0.5 0.5\n"
    p.write_text("".join(lines))
    expect_data_error(lambda: read_nvm(p), p, 10, "camera -1")


def test_nvm_measurement_count_mismatch(tmp_path):
    lines = _nvm_lines()
    lines[8] = "1.5 -2.25 30.75 255 128 0 3 0 17 10.5 -4.25 2 3 -100 20\n"
    p = tmp_path / "t.nvm"
    p.write_text("".join(lines))
    expect_data_error(lambda: read_nvm(p), p, 9, "3 measurements")


@pytest.mark.parametrize("name", ["../x.jpg", "/abs.jpg", "db/../../x.jpg"])
def test_nvm_camera_name_escaping(tmp_path, name):
    lines = _nvm_lines()
    lines[4] = lines[4].replace("db/1046.jpg", name)
    assert name in lines[4]
    p = tmp_path / "t.nvm"
    p.write_text("".join(lines))
    expect_data_error(lambda: read_nvm(p), p, 5, "relative path")


@pytest.mark.parametrize("header,line", [("NVM_V2\n", 1), ("NVM_V3\n\nthree\n", 3), ("NVM_V3\n\n-1\n", 3),
                                         ("NVM_V3\n\n1 2\n", 3)])
def test_nvm_bad_header_or_count(tmp_path, header, line):
    p = tmp_path / "t.nvm"
    p.write_text(header)
    expect_data_error(lambda: read_nvm(p), p, line)


def test_nvm_negative_point_count(tmp_path):
    lines = _nvm_lines()
    lines[7] = "-2\n"
    p = tmp_path / "t.nvm"
    p.write_text("".join(lines))
    expect_data_error(lambda: read_nvm(p), p, 8)


def test_nvm_empty_and_header_only(tmp_path):
    p = tmp_path / "t.nvm"
    p.write_text("")
    expect_data_error(lambda: read_nvm(p), p, contains="NVM_V3")
    p.write_text("NVM_V3\n\n")
    expect_data_error(lambda: read_nvm(p), p, contains="camera count")


# ---------------------------------------------------------------- property-based
NAME = st.from_regex(r"[A-Za-z0-9_-]{1,8}(/[A-Za-z0-9_.-]{1,8}){0,2}\.jpg", fullmatch=True).filter(
    lambda n: ".." not in n.split("/"))
FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def camera_specs(draw):
    model = draw(st.sampled_from(sorted(CAMERA_MODELS)))
    w, h = draw(st.integers(1, 10000)), draw(st.integers(1, 10000))
    params = draw(st.lists(FINITE, min_size=CAMERA_MODELS[model], max_size=CAMERA_MODELS[model]))
    # a usable camera (what the readers accept): positive focal lengths, principal point in the image
    n_f = 1 if model in SINGLE_FOCAL_MODELS else 2
    focal = st.floats(1e-6, 1e9, allow_nan=False)
    params[:n_f] = [draw(focal) for _ in range(n_f)]
    params[n_f:n_f + 2] = [draw(st.floats(0, w)), draw(st.floats(0, h))]
    return CameraSpec(model, w, h, tuple(params))


@st.composite
def poses(draw):
    q = np.array(draw(st.lists(st.floats(-1, 1, allow_nan=False), min_size=4, max_size=4)))
    if np.linalg.norm(q) < 1e-3:
        q = np.array([1.0, 0, 0, 0])
    t = draw(st.lists(FINITE, min_size=3, max_size=3))
    return Pose.from_qt(q / np.linalg.norm(q), t)


@HYP
@given(st.dictionaries(NAME, camera_specs(), min_size=1, max_size=6))
def test_property_intrinsics_round_trip(cams):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "i.txt"
        write_intrinsics(p, cams)
        back = read_intrinsics(p)
    assert list(back) == list(cams)
    for n, c in cams.items():
        b = back[n]
        assert (b.model, b.width, b.height) == (c.model, c.width, c.height)
        np.testing.assert_allclose(b.params, c.params, rtol=1e-11, atol=1e-300)


@HYP
@given(st.dictionaries(NAME, poses(), min_size=1, max_size=6))
def test_property_poses_round_trip(ps):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "p.txt"
        write_poses(p, ps)
        back = read_poses(p)
    assert list(back) == list(ps)
    for n, pose in ps.items():
        np.testing.assert_allclose(back[n].R, pose.R, atol=1e-8)
        np.testing.assert_allclose(back[n].t, pose.t, rtol=1e-9, atol=1e-9)


def parse_text(reader, text: str):
    """Write `text` to a fresh file and read it; return the result or the DataError."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.txt"
        p.write_text(text, encoding="utf-8")
        try:
            return reader(p)
        except DataError as e:  # any other exception type fails the test
            assert e.path == p and str(p) in str(e)
            return e


# token soup that reaches deep into the parsers, plus arbitrary unicode lines
TOKENS = st.sampled_from(["PINHOLE", "SIMPLE_RADIAL", "OPENCV", "FOO", "NVM_V3", "0", "1", "2", "-1", "3",
                          "640", "480", "0.5", "1e400", "-0", "nan", "inf", "1e-3", "x", "../a.jpg", "/b.jpg",
                          "a.jpg", "db/c.jpg", "C:x", "#", "99999999999999999999", "1_0", "٣", "\t"])
LINE = st.one_of(st.lists(TOKENS, max_size=16).map(" ".join), st.text(max_size=40))
GARBAGE = st.lists(LINE, max_size=12).map("\n".join)


@HYP
@given(GARBAGE)
def test_property_garbage_intrinsics(text):
    r = parse_text(read_intrinsics, text)
    if not isinstance(r, DataError):
        for n, c in r.items():
            assert c.model in CAMERA_MODELS and len(c.params) == CAMERA_MODELS[c.model]
            assert c.width > 0 and c.height > 0 and all(math.isfinite(v) for v in c.params)


@HYP
@given(GARBAGE)
def test_property_garbage_poses(text):
    r = parse_text(read_poses, text)
    if not isinstance(r, DataError):
        for pose in r.values():
            np.testing.assert_allclose(pose.R @ pose.R.T, np.eye(3), atol=1e-9)
            assert np.isfinite(pose.t).all()


@HYP
@given(GARBAGE)
def test_property_garbage_pairs(text):
    r = parse_text(read_pairs, text)
    if not isinstance(r, DataError):
        assert all(len(p) == 2 for p in r)


@HYP
@given(GARBAGE)
def test_property_garbage_nvm_body(text):
    r = parse_text(read_nvm, "NVM_V3\n\n" + text)
    if not isinstance(r, DataError):
        assert len(r.points_xyz) == len(r.observations)
        for o in r.observations:
            assert all(0 <= ci < len(r.cameras) for ci, *_ in o)


@HYP
@given(st.data())
def test_property_mutated_nvm(data):
    """Replace, drop or duplicate a few tokens of a valid NVM: parse or DataError, nothing else."""
    lines = [ln.split() for ln in AACHEN_NVM.splitlines()]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        if not lines[i]:
            continue
        j = data.draw(st.integers(0, len(lines[i]) - 1))
        op = data.draw(st.sampled_from(["replace", "drop", "dup"]))
        if op == "replace":
            lines[i][j] = data.draw(TOKENS)
        elif op == "drop":
            del lines[i][j]
        else:
            lines[i].insert(j, lines[i][j])
    r = parse_text(read_nvm, "\n".join(" ".join(t) for t in lines) + "\n")
    if not isinstance(r, DataError):
        assert len(r.points_xyz) == len(r.observations)
        for o in r.observations:
            assert all(0 <= ci < len(r.cameras) for ci, *_ in o)


@st.composite
def inconsistent_nvm(draw):
    """NVM text whose counts, field counts and camera indices may disagree with its content."""
    small = st.integers(-2, 4)
    n_cam_said, n_cam = draw(small), draw(st.integers(0, 4))
    out = ["NVM_V3", "", str(n_cam_said)]
    for i in range(n_cam):
        fields = [f"db/{i}.jpg", "1000", "1", "0", "0", "0", "1", "2", "3", "0", "0"]
        out.append(" ".join(fields[:draw(st.integers(8, 11))]))
    if draw(st.booleans()):
        n_pts_said, n_pts = draw(small), draw(st.integers(0, 4))
        out += ["", str(n_pts_said)]
        for _ in range(n_pts):
            m_said, m = draw(small), draw(st.integers(0, 3))
            meas = [f"{draw(st.integers(-1, 5))} 7 1.5 -2.5" for _ in range(m)]
            out.append(" ".join(["1", "2", "3", "10", "20", "30", str(m_said)] + meas))
        out += ["", "0"]
    return "\n".join(out) + "\n"


@HYP
@given(inconsistent_nvm())
def test_property_inconsistent_nvm(text):
    r = parse_text(read_nvm, text)
    lines = text.splitlines()
    if isinstance(r, DataError):
        assert r.line is not None and 1 <= r.line <= len(lines)
    else:
        # accepted only when the file is consistent: counts match and indices are valid
        assert len(r.cameras) == int(lines[2])
        assert len(r.points_xyz) == len(r.observations)
        for o in r.observations:
            assert all(0 <= ci < len(r.cameras) for ci, *_ in o)


# ---------------------------------------------------------------- geometry
def test_qvec_rotmat_round_trip_random():
    rots = Rotation.random(200, random_state=7)
    for r in rots:
        x, y, z, w = r.as_quat()
        q = np.array([w, x, y, z]) * (1 if w >= 0 else -1)
        R = r.as_matrix()
        np.testing.assert_allclose(qvec_to_rotmat(q), R, atol=1e-12)
        np.testing.assert_allclose(rotmat_to_qvec(R), q, atol=1e-9)
        np.testing.assert_allclose(qvec_to_rotmat(rotmat_to_qvec(R)), R, atol=1e-12)
    # non-normalised input is normalised
    np.testing.assert_allclose(qvec_to_rotmat([2, 0, 0, 0]), np.eye(3))


@pytest.mark.parametrize("axis", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0)])
def test_rotmat_to_qvec_half_turns(axis):
    a = np.array(axis, float) / np.linalg.norm(axis)
    R = Rotation.from_rotvec(np.pi * a).as_matrix()
    q = rotmat_to_qvec(R)
    assert q[0] >= 0 and abs(q[0]) < 1e-9
    np.testing.assert_allclose(np.abs(q[1:]), np.abs(a), atol=1e-9)
    np.testing.assert_allclose(qvec_to_rotmat(q), R, atol=1e-12)


@pytest.mark.parametrize("axis", [(0, 0, 1), (1, -2, 0.5)])
def test_pose_error_known_perturbation(axis):
    truth = Pose.look_at([10.0, -3.0, 1.5], [0.0, 0.0, 1.0])
    a = np.array(axis, float) / np.linalg.norm(axis)
    dR = Rotation.from_rotvec(np.radians(3.0) * a).as_matrix()
    move = np.array([0.3, 0.0, -0.4]) / 0.5 * 0.4  # length 0.4
    est = Pose.from_center(dR @ truth.R, truth.center + move)
    dt, dr = pose_error(est, truth)
    assert dt == pytest.approx(0.4, abs=1e-12)
    assert dr == pytest.approx(3.0, abs=1e-9)
    assert pose_error(truth, truth) == pytest.approx((0.0, 0.0), abs=1e-6)


def test_look_at_and_project():
    pose = Pose.look_at([0.0, -5.0, 0.0], [0.0, 0.0, 0.0])
    K = np.array([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
    from mmcrossvit.geometry import project
    uv, z = project(K, pose, np.array([[0.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]]))
    np.testing.assert_allclose(z, [5, 5, 5])
    # x right, y down (z up in the world appears upwards in the image: smaller v)
    np.testing.assert_allclose(uv, [[50, 40], [70, 40], [50, 20]], atol=1e-9)


def test_box_iou():
    a = np.array([[0.0, 0, 0], [2, 2, 2]])
    b = np.array([[1.0, 1, 1], [3, 3, 4]])
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, a + 10) == 0.0
    assert box_iou(a, np.array([[2.0, 0, 0], [3, 2, 2]])) == 0.0  # touching faces
    assert box_iou(a, np.array([[3.0, 0, 0], [5, 2, 2]])) == 0.0  # apart along x only
    assert box_iou(a, np.array([[-1.0, 3, -1], [3, 4, 3]])) == 0.0  # apart along y only
    # intersection [1,2]^3 = 1; volumes 8 and 2*2*3 = 12; union 19
    assert box_iou(a, b) == pytest.approx(1 / 19)
    assert box_iou(b, a) == pytest.approx(1 / 19)
    # a box inside another: IoU = small / big
    assert box_iou(a, np.array([[0.5, 0.5, 0.5], [1.5, 1.5, 1.5]])) == pytest.approx(1 / 8)
    # degenerate (flat) boxes give 0
    flat = np.array([[0.0, 0, 0], [2, 2, 0]])
    assert box_iou(flat, flat) == 0.0
    # broadcasting over a batch
    np.testing.assert_allclose(box_iou(np.stack([a, b, a + 10]), a), [1, 1 / 19, 0])


def test_robust_box_drops_outlier():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, size=(40, 3))
    with_outlier = np.vstack([pts, [[100.0, 0, 0]]])
    box = robust_box(with_outlier)
    np.testing.assert_allclose(box, [pts.min(0), pts.max(0)])
    assert robust_box(np.zeros((0, 3))) is None
    np.testing.assert_allclose(robust_box(np.array([[1.0, 2, 3]])), [[1, 2, 3], [1, 2, 3]])
