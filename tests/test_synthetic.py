"""The synthetic town: determinism, exact geometry (poses, intrinsics, distortion, depth), dataset layout."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from datasets.synthetic_town import NON_CONTENT, build_scene, generate, render, rotation_from_angles
from datasets.synthetic_town.lens import distort, undistort
from datasets.synthetic_town.trace import GROUND, SKY, trace
from mmcrossvit.colmap_io import CameraSpec, read_intrinsics
from mmcrossvit.geometry import Pose, fundamental_from_poses
from mmcrossvit.layout import Dataset
from mmcrossvit.presets import PRESETS
from mmcrossvit.storage import read_json

MINI = dict(blocks_x=1, blocks_y=1, num_db=4, num_day=1, num_night=1, width=96, height=72, detail_tile=256)


@pytest.fixture(scope="module")
def scene():
    return build_scene(0, "tiny")


@pytest.fixture(scope="module")
def view_pair(scene):
    """Two nearby views of the same facades: a pinhole one and a distorted one with an off-centre
    principal point and another focal length, so any convention error shows up."""
    x = scene.layout.x_streets[1]
    c0 = np.array([x + 2.0, 30.0, 1.6])
    pose0 = Pose.from_center(rotation_from_angles(math.radians(150), math.radians(5), 0.0), c0)
    pose1 = Pose.from_center(rotation_from_angles(math.radians(142), math.radians(7), math.radians(2)),
                             c0 + np.array([-0.8, 1.2, 0.1]))
    cam0 = CameraSpec("SIMPLE_RADIAL", 320, 240, (256.0, 160.0, 120.0, 0.0))
    cam1 = CameraSpec("SIMPLE_RADIAL", 320, 240, (280.0, 161.3, 118.6, 0.06))
    img0, depth0 = render(scene, cam0, pose0, rng=np.random.default_rng(1))
    img1, depth1 = render(scene, cam1, pose1, rng=np.random.default_rng(2))
    return (cam0, pose0, img0, depth0), (cam1, pose1, img1, depth1)


def sift_matches(img0, img1, ratio=0.8):
    """Ratio-test SIFT matches as COLMAP pixel coordinates (OpenCV puts pixel centres at integers)."""
    sift = cv2.SIFT_create()
    k0, e0 = sift.detectAndCompute(cv2.cvtColor(img0, cv2.COLOR_BGR2GRAY), None)
    k1, e1 = sift.detectAndCompute(cv2.cvtColor(img1, cv2.COLOR_BGR2GRAY), None)
    good = [m for m, n in cv2.BFMatcher().knnMatch(e0, e1, k=2) if m.distance < ratio * n.distance]
    u0 = np.array([k0[m.queryIdx].pt for m in good]) + 0.5
    u1 = np.array([k1[m.trainIdx].pt for m in good]) + 0.5
    return u0, u1


def epipolar_distances(F, u0, u1):
    """Symmetric epipolar distance: mean of the point-to-epipolar-line distances in both images."""
    x0 = np.c_[u0, np.ones(len(u0))]
    x1 = np.c_[u1, np.ones(len(u1))]
    l1, l0 = x0 @ F.T, x1 @ F
    r = np.abs((x1 * l1).sum(1))
    return 0.5 * (r / np.linalg.norm(l1[:, :2], axis=1) + r / np.linalg.norm(l0[:, :2], axis=1))


def backproject(camera, pose, uv, depth):
    """World points of pixels `uv` (COLMAP convention) at camera depth `depth`; pycolmap undistorts."""
    xy = camera.to_pycolmap().cam_from_img(np.asarray(uv, np.float64))
    return pose.inverse().transform(np.c_[xy, np.ones(len(xy))] * depth[:, None])


def project(camera, pose, X):
    Xc = pose.transform(X)
    return camera.to_pycolmap().img_from_cam(np.ascontiguousarray(Xc)), Xc[:, 2]


# ------------------------------------------------------------------------------- determinism
def test_render_is_deterministic(scene):
    cam = CameraSpec("SIMPLE_RADIAL", 96, 72, (80.0, 48.0, 36.0, 0.02))
    pose = Pose.from_center(rotation_from_angles(0.3, 0.1, 0.0), [scene.layout.x_streets[1], 20.0, 1.6])
    for night in (False, True):
        a, da = render(scene, cam, pose, night=night, rng=np.random.default_rng(5))
        b, db = render(scene, cam, pose, night=night, rng=np.random.default_rng(5))
        assert np.array_equal(a, b) and np.array_equal(da, db)
        c, dc = render(scene, cam, pose, night=night, rng=np.random.default_rng(6))
        assert not np.array_equal(a, c)          # sensor noise / exposure follow the rng
        assert np.array_equal(da, dc)            # geometry does not
    other = build_scene(1, "tiny")
    assert not np.array_equal(render(other, cam, pose)[0], render(scene, cam, pose)[0])


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic(tmp_path_factory):
    base = tmp_path_factory.mktemp("determinism")
    a = _files(generate(base / "a", "tiny", seed=3, progress=False, **MINI))
    b = _files(generate(base / "b", "tiny", seed=3, progress=False, **MINI))
    c = _files(generate(base / "c", "tiny", seed=4, progress=False, **MINI))
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), "same seed must give identical files"
    images = [k for k in a if k.endswith(".jpg")]
    assert len(images) == 6 and images == [k for k in c if k.endswith(".jpg")]
    assert all(a[k] != c[k] for k in images), "another seed must give another town"


# ------------------------------------------------------------------------------- geometry
def test_sift_matches_obey_ground_truth_epipolar_geometry(view_pair):
    (cam0, pose0, img0, _), (cam1, pose1, img1, _) = view_pair
    u0, u1 = sift_matches(img0, img1)
    assert len(u0) > 50
    # view 1 is distorted: undistort its keypoints (pycolmap, independent of the renderer), then
    # express them in the pinhole image of the same focal length and principal point
    xy1 = cam1.to_pycolmap().cam_from_img(u1)
    u1_ideal = xy1 @ cam1.K[:2, :2].T + cam1.K[:2, 2]
    F = fundamental_from_poses(cam0.K, pose0, cam1.K, pose1)
    d = epipolar_distances(F, u0, u1_ideal)
    print(f"{len(u0)} SIFT matches, median symmetric epipolar distance {np.median(d):.3f} px")
    assert np.median(d) < 0.5
    assert (d < 2.0).mean() > 0.7
    # the threshold is tight: a 0.5 degree rotation error or ignoring the distortion breaks it
    turn = rotation_from_angles(0.0, math.radians(0.5), 0.0) @ rotation_from_angles(0.0, 0.0, 0.0).T
    tilt = Pose.from_center(turn @ pose1.R, pose1.center)
    assert np.median(epipolar_distances(fundamental_from_poses(cam0.K, pose0, cam1.K, tilt), u0, u1_ideal)) > 1.0
    assert np.median(epipolar_distances(F, u0, u1)) > 1.5 * np.median(d)


def test_matches_transfer_through_rendered_depth(view_pair):
    (cam0, pose0, img0, depth0), (cam1, pose1, img1, _) = view_pair
    u0, u1 = sift_matches(img0, img1)
    i, j = np.floor(u0[:, 1]).astype(int), np.floor(u0[:, 0]).astype(int)
    z = depth0[i, j]
    ok = np.isfinite(z)
    assert ok.mean() > 0.9
    X = backproject(cam0, pose0, u0[ok], z[ok])
    uv, _ = project(cam1, pose1, X)
    err = np.linalg.norm(uv - u1[ok], axis=1)
    print(f"median transfer error {np.median(err):.3f} px over {ok.sum()} matches")
    assert np.median(err) < 1.0
    # ignoring view 1's distortion when projecting is clearly worse
    Xc = pose1.transform(X)
    pinhole = Xc[:, :2] / Xc[:, 2:3] @ cam1.K[:2, :2].T + cam1.K[:2, 2]
    assert np.median(np.linalg.norm(pinhole - u1[ok], axis=1)) > 2.0 * np.median(err)


def test_depth_is_exact(scene, view_pair):
    (cam0, pose0, _, depth0), (cam1, pose1, _, depth1) = view_pair
    H, W = depth0.shape
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    for cam, pose, depth in ((cam0, pose0, depth0), (cam1, pose1, depth1)):
        hit = np.isfinite(depth)
        assert 0.3 < hit.mean() < 1.0  # the views see both buildings and sky
        uv = np.c_[jj[hit] + 0.5, ii[hit] + 0.5]
        X = backproject(cam, pose, uv, depth[hit].astype(np.float64))
        # every back-projected pixel centre lies on the ground or on a facade rectangle
        F = scene.facades
        plane = np.abs(np.where(F.axis[None] == 0, X[:, :1], X[:, 1:2]) - F.c[None])
        a = np.where(F.axis[None] == 0, X[:, 1:2], X[:, :1])
        out_a = np.maximum(np.maximum(F.a0[None] - a, a - F.a1[None]), 0)
        out_z = np.maximum(np.maximum(-X[:, 2:3], X[:, 2:3] - F.height[None]), 0)
        dist = np.minimum(np.sqrt(plane ** 2 + out_a ** 2 + out_z ** 2).min(1), np.abs(X[:, 2]))
        assert np.percentile(dist, 99.9) < 2e-3 + 1e-4 * depth[hit].max()
        # and projects back onto its own pixel centre
        back, _ = project(cam, pose, X)
        assert np.abs(back - uv).max() < 1e-3
    # cross-view consistency: view 0's points land in view 1 at the depth view 1 rendered
    hit = np.isfinite(depth0)
    X = backproject(cam0, pose0, np.c_[jj[hit] + 0.5, ii[hit] + 0.5], depth0[hit].astype(np.float64))
    uv, z = project(cam1, pose1, X)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H) & (z > 0)
    seen = depth1[uv[inside, 1].astype(int), uv[inside, 0].astype(int)]
    rel = np.abs(seen - z[inside]) / z[inside]
    assert inside.mean() > 0.3
    assert np.median(rel) < 0.005 and (rel < 0.02).mean() > 0.75


def test_trace_labels_surfaces(scene, view_pair):
    (cam0, pose0, _, depth0), _ = view_pair
    depth, sid, _, _ = trace(scene, cam0, pose0, 1)
    assert np.array_equal(depth, depth0)
    assert np.array_equal(np.isinf(depth), sid == SKY)
    assert (sid == GROUND).any() and (sid >= 0).any()


def test_undistort_matches_pycolmap():
    cam = CameraSpec("SIMPLE_RADIAL", 320, 240, (250.0, 158.0, 123.0, -0.03))
    uv = np.random.default_rng(0).uniform([0, 0], [320, 240], (500, 2))
    xy = undistort(cam, uv)
    assert np.allclose(xy, cam.to_pycolmap().cam_from_img(uv), atol=1e-9)
    # the renderer's lens is pycolmap's, so also check it against COLMAP's SIMPLE_RADIAL formula
    # written out here: u = f x (1 + k r^2) + cx
    f, cx, cy, k = cam.params
    r2 = (xy ** 2).sum(1, keepdims=True)
    assert np.abs(f * xy * (1 + k * r2) + [cx, cy] - uv).max() < 1e-6
    assert np.abs(distort(cam, xy) - uv).max() < 1e-6
    with pytest.raises(ValueError):
        undistort(CameraSpec("OPENCV_FISHEYE", 320, 240, (250.0, 250.0, 160.0, 120.0, 0.1, 0.0, 0.0, 0.0)), uv)


# ------------------------------------------------------------------------------- dataset
def test_tiny_dataset_layout(tiny_dataset, scene):
    ds = Dataset(tiny_dataset)
    summary = ds.validate()
    assert summary["database_images"] == 40
    assert summary["queries"] == 10 and summary["conditions"] == {"day": 5, "night": 5}
    assert summary["ground_truth"] == 10
    meta = read_json(tiny_dataset / "scene.json")
    assert meta["counts"] == {"db": 40, "day": 5, "night": 5} and meta["seed"] == 0
    # the scene parameters come from the project's one preset table
    assert meta["params"] == {k: v for k, v in PRESETS["tiny"]["generate"].items() if k not in NON_CONTENT}
    assert (tiny_dataset / "contact_sheet.png").is_file()
    cams, poses = ds.reference
    assert all(c.model == "SIMPLE_RADIAL" and c.params[3] == 0.0 for c in cams.values())
    for name, q in ds.queries.items():
        assert q.camera.model == "SIMPLE_RADIAL" and abs(q.camera.params[3]) <= 0.03
        img = cv2.imread(str(ds.image_path(name)))
        assert img.shape[:2] == (q.camera.height, q.camera.width)
    # db cameras walk the streets at eye height, spaced a few metres apart
    centres = np.array([p.center for p in poses.values()])
    assert np.all(np.abs(centres[:, 2] - 1.6) < 0.5)
    gaps = np.linalg.norm(centres[:, None, :2] - centres[None, :, :2], axis=-1) + np.eye(len(centres)) * 1e9
    assert np.median(gaps.min(1)) < 5.0


def test_dataset_poses_reproduce_the_images(tiny_dataset, scene):
    """Re-rendering from the poses and intrinsics read back from the files gives the written images."""
    ds = Dataset(tiny_dataset)
    cams, poses = ds.reference
    gt = ds.gt_poses
    day = sorted(n for n, q in ds.queries.items() if q.condition == "day")
    for name, cam, pose in (("db/0007.jpg", cams["db/0007.jpg"], poses["db/0007.jpg"]),
                            (day[0], ds.queries[day[0]].camera, gt[day[0]])):
        stored = cv2.cvtColor(cv2.imread(str(ds.image_path(name))), cv2.COLOR_BGR2GRAY).astype(np.float32)
        ncc = []
        for shift in (0.0, 1.0):  # the true pose, and the camera turned by one degree
            R = rotation_from_angles(math.radians(shift), 0.0, 0.0) @ rotation_from_angles(0.0, 0.0, 0.0).T @ pose.R
            img, _ = render(scene, cam, Pose.from_center(R, pose.center), appearance=False)
            a = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
            a, b = a - a.mean(), stored - stored.mean()
            ncc.append(float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())))
        print(name, "NCC true pose / turned 1 degree:", np.round(ncc, 3))
        assert ncc[0] > 0.97 and ncc[1] < ncc[0] - 0.05, (name, ncc)


def test_generate_skips_or_refuses_existing(tiny_dataset, capsys):
    assert generate(tiny_dataset, "tiny", seed=0, progress=False) == tiny_dataset
    assert "already generated" in capsys.readouterr().out
    with pytest.raises(FileExistsError):
        generate(tiny_dataset, "tiny", seed=1, progress=False)
    qfile = tiny_dataset / "queries" / "night_time_queries_with_intrinsics.txt"
    assert all("/night/" in n for n in read_intrinsics(qfile))


def test_windowed_stain_equals_blurring_the_whole_canvas():
    import cv2
    from datasets.synthetic_town.textures import darken_ellipse
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 1.0, (120, 160, 3)).astype(np.float32)
    for center, axes, sigma in [((80, 60), (10, 6), 2.0), ((2, 3), (20, 9), 3.5), ((159, 119), (4, 30), 1.0),
                                ((-40, 50), (10, 10), 2.0)]:
        want = base.copy()
        blot = np.zeros(want.shape[:2], np.float32)
        cv2.ellipse(blot, center, axes, 30.0, 0, 360, 1.0, -1)
        want *= (1.0 - 0.4 * cv2.GaussianBlur(blot, (0, 0), sigma))[..., None]
        got = base.copy()
        darken_ellipse(got, center, axes, 30.0, sigma, lambda: 0.4)
        # OpenCV's blur rounds by the canvas width in the last bit, so equal to float precision
        assert np.allclose(got, want, rtol=0, atol=1e-6), (center, axes, sigma)
        assert (got != base).any() == (center[0] >= 0)
