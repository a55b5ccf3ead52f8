"""The statistics benchmarks/acceptance_signals.py weighs accepted poses by: the pose's
uncertainty from its inliers, the separation of wrong from right poses, and the replay."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mmcrossvit import cli
from mmcrossvit.colmap_io import CameraSpec
from mmcrossvit.diagnosis import localization_settings
from mmcrossvit.geometry import Pose
from mmcrossvit.layout import Dataset
from mmcrossvit.localization import SfMModel, pose_uncertainty
from mmcrossvit.steps import execute, localize

BENCH = str(Path(__file__).resolve().parents[1] / "benchmarks")
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
