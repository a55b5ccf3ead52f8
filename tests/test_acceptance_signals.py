"""The statistics studies/acceptance_signals.py weighs accepted poses by: the pose's
uncertainty from its inliers, the separation of wrong from right poses, and the replay."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mmcrossvit import cli
from mmcrossvit.acceptance import pose_uncertainty
from mmcrossvit.colmap_io import CameraSpec
from diagnosis import localization_settings
from mmcrossvit.errors import DataError
from mmcrossvit.geometry import Pose
from mmcrossvit.layout import Dataset
from mmcrossvit.localization import SfMModel
from mmcrossvit.steps import execute, localize

BENCH = str(Path(__file__).resolve().parents[1] / "studies")
CAM = CameraSpec("PINHOLE", 640, 480, (500.0, 500.0, 320.0, 240.0))


def _points(spread: float, n: int = 40, seed: int = 0) -> np.ndarray:
    """World points in front of the identity camera, within `spread` of the optical axis."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(8, 12, n)
    return np.c_[rng.uniform(-spread, spread, (n, 2)) * z[:, None], z]


def test_uncertainty_follows_the_noise_the_count_and_the_spread():
    pose = Pose(np.eye(3), np.zeros(3))
    X = _points(0.5)
    sc, sr = pose_uncertainty(X, pose, CAM)
    assert 0 < sc < np.inf and 0 < sr < np.inf
    # linear in the keypoint noise
    assert pose_uncertainty(X, pose, CAM, sigma_px=3.0) == pytest.approx((3 * sc, 3 * sr), rel=1e-6)
    # each point observed four times: four times the information, half the error
    assert pose_uncertainty(np.tile(X, (4, 1)), pose, CAM) == pytest.approx((sc / 2, sr / 2), rel=1e-6)
    # the same number of points bunched near the image centre constrain the pose worse
    bunched = pose_uncertainty(_points(0.05), pose, CAM)
    assert bunched[0] > 3 * sc and bunched[1] > 3 * sr
    # it does not depend on where the camera is: moved and turned with its points, the same figures
    R = Pose.look_at(np.array([5.0, -3.0, 2.0]), np.array([6.0, 10.0, 1.0]))
    moved = R.inverse().transform(X)  # the points where the moved camera sees them as before
    assert pose_uncertainty(moved, R, CAM) == pytest.approx((sc, sr), rel=1e-4)
    # too few points leave the pose unconstrained
    assert pose_uncertainty(X[:2], pose, CAM) == (np.inf, np.inf)


def test_separation_reports_the_cut_its_cost_and_the_auc():
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    from acceptance_signals import separation
    rows = [{"s": v, "wrong": w} for v, w in ((1, True), (3, True), (2, False), (4, False), (5, False), (None, False))]
    sep = separation(rows, "s", higher=True)
    # rejecting every wrong pose (value <= 3) loses the correct pose at 2; pairs ordered: 5 of 6
    assert sep == {"wrong_values": [1.0, 3.0], "cut": 3.0, "correct_lost": 1, "correct": 3, "auc": pytest.approx(5 / 6)}
    low = separation(rows, "s", higher=False)  # lower is better: the cut is at the smallest wrong value
    assert low["cut"] == 1.0 and low["correct_lost"] == 3 and low["auc"] == pytest.approx(1 / 6)
    none_wrong = separation([{"s": 2, "wrong": False}], "s", higher=True)
    assert none_wrong["cut"] is None and none_wrong["correct_lost"] == 0 and none_wrong["auc"] is None


def test_signals_replay_each_accepted_pose_of_a_run(tiny_run):
    _, run = tiny_run
    execute(localize, run, cli.settings(localize, "paper", retrieval="oracle", tag="signals", workers=1))
    log = run.localization_log("signals")
    logged = {r["query"]: r for r in map(json.loads, open(log))}
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    from acceptance_signals import signals
    ds = Dataset(run.dataset)
    rows = signals(run, ds, SfMModel.load(run.sfm), localization_settings(run, "signals", "paper", None)[0], log)
    assert {r["query"] for r in rows} == {q for q, r in logged.items() if r["success"]}
    assert rows
    for r in rows:
        assert r["inliers"] == logged[r["query"]]["inliers"]  # the same hypothesis as the run's
        assert 0 < r["inlier ratio"] <= 1 and 0 <= r["coverage"] <= 1
        assert r["wrong"] == (r["error_m"] > 5 or r["error_deg"] > 10)
        assert r["verified candidates"] is None  # oracle retrieval runs without PnP verification


def test_rival_ratio_by_hand():
    from mmcrossvit.acceptance import rival_ratio
    at = lambda x: Pose(np.eye(3), -np.array([x, 0.0, 0.0]))  # camera centre at (x, 0, 0)  # noqa: E731
    c = np.zeros(3)
    # near: 40 and 10 inliers within 5 m; far: 30 at 8 m; a candidate without a pose is ignored
    assert rival_ratio([40, 10, 30, 99], [at(1), at(-4.9), at(8), None], c, 5.0) == pytest.approx(30 / 40)
    assert rival_ratio([40, 30], [at(1), at(4.9)], c, 5.0) == 0.0   # no other place
    assert rival_ratio([12], [at(20)], c, 5.0) == 12.0              # no candidate near the pose: over 1
    assert rival_ratio([40, 30], [at(1), at(8)], c, 10.0) == 0.0    # the radius decides what is elsewhere


def test_rival_grid_counts_what_each_setting_rejects_and_loses():
    """Each (radius, ratio) of the grid rejects the poses whose ratio at that radius reaches the cut,
    only among those passing the coverage rule, and counts wrong ones and lost fine ones by condition."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    from acceptance_signals import rival_grid

    def row(own, wrong=False, fine=False, condition="day", coverage=0.5):
        return {"own": own, "wrong": wrong, "fine": fine, "condition": condition, "coverage": coverage}
    rows = [row([[10, 1.0], [8, 15.0]], wrong=True),                      # ratio 0.8 at 10 m, 0 at 20 m
            row([[20, 0.0], [6, 30.0], [50, None]], fine=True, condition="night"),  # 0.3 at both
            row([[12, 2.0], [12, 60.0]], fine=True),                        # 1.0 at both
            row([[5, 0.0], [40, 90.0]], wrong=True, coverage=0.01)]         # fails the coverage rule
    grid = {(g["radius"], g["ratio"]): g for g in rival_grid(rows, 0.02, [10.0, 20.0], [0.25, 0.9])}
    assert all(g["poses"] == 3 and g["wrong"] == 1 and g["fine_day"] == 1 and g["fine_night"] == 1
               for g in grid.values())
    assert [grid[10.0, 0.25][k] for k in ("wrong_rejected", "fine_lost_day", "fine_lost_night")] == [1, 1, 1]
    assert [grid[10.0, 0.9][k] for k in ("wrong_rejected", "fine_lost_day", "fine_lost_night")] == [0, 1, 0]
    assert [grid[20.0, 0.25][k] for k in ("wrong_rejected", "fine_lost_day", "fine_lost_night")] == [0, 1, 1]
    assert len(rival_grid(rows, 0.0, [10.0], [0.25])) == 1 and rival_grid(rows, 0.0, [10.0], [0.25])[0]["poses"] == 4


def test_place_ratio_test_rejects_from_its_logged_ratio(tiny_run):
    """The test's value is logged; a run with a threshold rejects exactly the poses at or above
    it; the benchmark recomputes the same value from the run's matches."""
    _, run = tiny_run
    common = dict(retrieval="oracle", workers=1, rival_radius=2.0)
    execute(localize, run, cli.settings(localize, "paper", tag="rival-log", max_rival_ratio=1e9, **common))
    logged = {r["query"]: r for r in map(json.loads, open(run.localization_log("rival-log")))}
    accepted = {q: r for q, r in logged.items() if r["success"]}
    assert accepted and all(r["rival_ratio"] >= 0 for r in accepted.values())
    assert all("rival_ratio" not in r for r in logged.values() if not r["success"])  # tested only once accepted
    values = sorted({r["rival_ratio"] for r in accepted.values()})
    cut = values[len(values) // 2] if values[-1] > 0 else 1e-9
    assert any(r["rival_ratio"] >= cut for r in accepted.values()), "no accepted pose reaches the cut: nothing to reject"
    execute(localize, run, cli.settings(localize, "paper", tag="rival-cut", max_rival_ratio=cut, **common))
    cut_log = {r["query"]: r for r in map(json.loads, open(run.localization_log("rival-cut")))}
    for q, r in logged.items():
        assert cut_log[q]["inliers"] == r["inliers"]  # the same hypothesis
        assert cut_log[q]["success"] == (r["success"] and r["rival_ratio"] < cut), q
    rejected = [q for q, r in cut_log.items() if r.get("rejected_by") == "place ratio"]
    assert rejected and len(rejected) == sum(r["rival_ratio"] >= cut for r in accepted.values())
    with pytest.raises(DataError, match="--max-rival-ratio must be >= 0"):
        execute(localize, run, cli.settings(localize, "paper", tag="rival-cut", max_rival_ratio=-1.0, **common))
    with pytest.raises(DataError, match="--rival-radius must be > 0"):
        execute(localize, run, cli.settings(localize, "paper", tag="rival-cut", max_rival_ratio=cut,
                                            **{**common, "rival_radius": 0.0}))
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    from acceptance_signals import own_rival_ratio
    ds = Dataset(run.dataset)
    model = SfMModel.load(run.sfm)
    s = localization_settings(run, "rival-log", "paper", None)[0]
    from mmcrossvit.features import FeatureStore
    for q, r in accepted.items():
        recomputed = own_rival_ratio(model, FeatureStore.of(run.features), s, {**r, "rival_ratio": None}, ds.queries[q],
                                     Pose.from_qt(r["qvec"], r["tvec"]))
        assert recomputed == pytest.approx(r["rival_ratio"], abs=1e-4)
