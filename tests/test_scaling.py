"""The sub-quadratic rewrites give what the direct definitions give: database pairs from poses
(k-d tree) and the ground-truth covisibility counts (observations grouped by 3D point)."""
from __future__ import annotations

import numpy as np
import pytest

from mmcrossvit.evaluation import gt_covisibility, visible_points
from mmcrossvit.geometry import Pose
from mmcrossvit.layout import Dataset
from mmcrossvit.localization import SfMModel
from mmcrossvit.sfm import pairs_from_poses


def _looking(yaw: float) -> np.ndarray:
    z = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    x = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    return np.stack([x, np.cross(z, x), z])


def _by_definition(poses: dict, num: int, max_angle: float) -> list:
    """Each image's `num` nearest (ties by name) among the others looking within max_angle."""
    names = sorted(poses)
    pairs = set()
    for a in names:
        ca, da = poses[a].center, poses[a].viewing_direction
        cands = [(float(np.linalg.norm(ca - poses[b].center)), b) for b in names if b != a
                 and np.degrees(np.arccos(np.clip(da @ poses[b].viewing_direction, -1, 1))) <= max_angle]
        for _, b in sorted(cands)[:num]:
            pairs.add(tuple(sorted((a, b))))
    return sorted(pairs)


@pytest.mark.parametrize("grid", [False, True])
@pytest.mark.parametrize("num,max_angle", [(20, 60.0), (4, 30.0), (3, 180.0)])
def test_pairs_from_poses_equal_the_definition(grid, num, max_angle):
    rng = np.random.default_rng(7)
    poses = {}
    for i in range(250):
        # grid: integer centres and four headings, so distances tie and angles sit on the bound
        c = np.round(rng.uniform(0, 12, 3)) if grid else rng.uniform(0, 100, 3)
        R = _looking(rng.choice([0.0, 0.5, 1.0, 1.5]) * np.pi if grid else rng.uniform(0, 2 * np.pi))
        poses[f"db/{i:04d}.jpg"] = Pose(R, -R @ c)
    got = pairs_from_poses(poses, num, max_angle)
    assert got == _by_definition(poses, num, max_angle)
    assert len(got) >= len(poses) * min(num, 3) // 2  # not vacuous: most images found neighbours


def test_pairs_from_poses_small_and_degenerate():
    R = _looking(0.0)
    one = {"a.jpg": Pose(R, np.zeros(3))}
    assert pairs_from_poses(one) == []
    two = {"a.jpg": Pose(R, np.zeros(3)), "b.jpg": Pose(R, np.array([0.0, 0.0, -1.0]))}
    assert pairs_from_poses(two) == [("a.jpg", "b.jpg")]
    # the same centre twice is a neighbour at distance 0, not the image itself
    same = {"a.jpg": Pose(R, np.zeros(3)), "b.jpg": Pose(R, np.zeros(3)), "c.jpg": Pose(_looking(np.pi), np.zeros(3))}
    assert pairs_from_poses(same, 5, 60.0) == [("a.jpg", "b.jpg")]


def test_gt_covisibility_counts_by_definition(tiny_run):
    root, paths = tiny_run
    ds = Dataset(root)
    model = SfMModel.load(paths.sfm)
    db = sorted(model.point3d_ids)[::2] + ["db/not-in-model.jpg"]
    counts = gt_covisibility(ds, model, db)
    assert set(counts) == set(ds.gt_poses)
    total = 0
    for q, c in counts.items():
        seen = set(visible_points(ds.queries[q].camera, ds.gt_poses[q], model.xyz).tolist())
        want = [sum(int(p) in seen for p in model.point_index(model.point3d_ids[n][model.point3d_ids[n] >= 0]))
                if n in model.point3d_ids else 0 for n in db]
        assert c.tolist() == want, q
        total += sum(want)
    assert total > 100
