"""localize.py --min-inlier-coverage: the coverage measure, and the rule turning poses whose
inliers cover too little of the image into failures."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mmcrossvit import cli
from mmcrossvit.colmap_io import CameraSpec
from mmcrossvit.diagnosis import localization_settings
from mmcrossvit.layout import Dataset
from mmcrossvit.localization import SfMModel
from mmcrossvit.acceptance import inlier_coverage
from mmcrossvit.steps import execute, localize


def test_coverage_is_the_hull_area_over_the_image_area():
    cam = CameraSpec("PINHOLE", 200, 100, (100.0, 100.0, 100.0, 50.0))
    square = np.array([[0, 0], [100, 0], [100, 50], [0, 50], [50, 25]], np.float32)  # a quarter of the image
    assert inlier_coverage(square, cam) == pytest.approx(0.25)
    assert inlier_coverage(square[:2], cam) == 0.0  # fewer than 3 points span no area
    line = np.array([[0, 0], [10, 10], [20, 20]], np.float32)
    assert inlier_coverage(line, cam) == 0.0


def test_the_rule_rejects_poses_below_the_coverage(tiny_run):
    _, run = tiny_run
    logs = {}
    for tag, cov in (("cov-off", 0.0), ("cov-all", 1.01), ("cov-tiny", 1e-9)):
        execute(localize, run, cli.settings(localize, "paper", retrieval="oracle", tag=tag, min_coverage=cov, workers=1))
        logs[tag] = [json.loads(line) for line in open(run.localization_log(tag))]
    off = {r["query"]: r for r in logs["cov-off"]}
    assert sum(r["success"] for r in off.values()) > 0
    # no hull covers more than the whole image: every pose fails and gets its fallback
    assert not any(r["success"] for r in logs["cov-all"])
    # a vanishing threshold keeps exactly the poses the rule-free run keeps, with the same poses
    for r in logs["cov-tiny"]:
        assert (r["success"], r["qvec"], r["tvec"]) == (off[r["query"]]["success"], off[r["query"]]["qvec"],
                                                      off[r["query"]]["tvec"])
    # the setting is part of each row's key only when the rule is on
    assert logs["cov-tiny"][0]["key"] != logs["cov-off"][0]["key"]

    # the replay (diagnosis, the coverage benchmark) reads the rule from the recorded settings...
    assert localization_settings(run, "cov-all", "paper", None)[0]["min_coverage"] == 1.01
    assert localization_settings(run, "cov-off", "paper", None)[0]["min_coverage"] == 0.0
    # ...and the benchmark recovers the poses a run made with the rule on rejected
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from inlier_coverage import coverages
    ds, model = Dataset(run.dataset), SfMModel.load(run.sfm)
    rows = {tag: {r["query"]: r for r in coverages(run, ds, model, localization_settings(run, tag, "paper", None)[0],
                                                     run.localization_log(tag))} for tag in ("cov-off", "cov-all")}
    for q, r in rows["cov-off"].items():
        back = rows["cov-all"][q]
        assert back["success"] == r["success"]
        if r["success"]:
            assert back["coverage"] == r["coverage"] and np.allclose(back["pose"].t, r["pose"].t)
