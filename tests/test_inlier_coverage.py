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
from diagnosis import localization_settings
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
    bench = str(Path(__file__).resolve().parents[1] / "studies")
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


def test_a_rejected_pose_is_unverified_and_the_results_file_holds_its_estimate(tiny_run):
    """The rules decide what counts as localized; --unverified-pose decides what the results file
    holds for a rejected pose (its estimate, or the stand-in), from the same log rows."""
    from mmcrossvit.colmap_io import read_poses
    from mmcrossvit.evaluation import pose_status
    from mmcrossvit.storage import read_jsonl
    _, run = tiny_run
    ds = Dataset(run.dataset)
    loc = lambda tag, **kw: execute(localize, run, cli.settings(localize, "paper", retrieval="oracle", tag=tag,  # noqa: E731
                                                                  workers=1, **kw))
    s_off = loc("unv-off", min_coverage=0.0)
    s_est = loc("unv-all", min_coverage=1.01)
    rows_off = {r["query"]: r for r in read_jsonl(run.localization_log("unv-off"))}
    rows = {r["query"]: r for r in read_jsonl(run.localization_log("unv-all"))}
    good = sorted(q for q, r in rows_off.items() if r["success"])
    assert good and s_off["localized"] == len(good) and s_est["localized"] == 0
    # every pose the rule-free run accepted is now rejected by the coverage rule, its estimate kept
    assert s_est["unverified"]["coverage"] == good
    for q in good:
        assert rows[q]["rejected_by"] == "coverage" and not rows[q]["success"]
        assert rows[q]["estimate"] == {"qvec": rows_off[q]["qvec"], "tvec": rows_off[q]["tvec"]}
    off, est = read_poses(run.results_file("unv-off")), read_poses(run.results_file("unv-all"))
    assert off.keys() == est.keys()
    for name in off:  # the same poses go to the benchmark, rule or no rule
        assert np.allclose(off[name].qvec, est[name].qvec) and np.allclose(off[name].t, est[name].t)
    assert not set(good) & set(s_est["stand_in_poses"]["top retrieved image"])

    # the stand-ins instead: the same rows are reused (the setting is not part of their key)
    s_fb = loc("unv-all", min_coverage=1.01, unverified_pose="stand-in")
    assert [r["key"] for r in read_jsonl(run.localization_log("unv-all"))] == [r["key"] for r in rows.values()]
    fb = read_poses(run.results_file("unv-all"))
    for q in good:
        name = ds.results_name(q)
        assert np.allclose(fb[name].qvec, rows[q]["qvec"]) and not np.allclose(fb[name].t, off[name].t)
    assert set(good) <= set(s_fb["stand_in_poses"]["top retrieved image"])

    # the evaluation's pose status judges each query's own estimate
    st = pose_status(list(rows.values()), ds.gt_poses)["all"]
    assert st["localized"]["n"] == 0 and st["unverified"]["n"] == sum("estimate" in r for r in rows.values())
    assert st["unverified"]["n"] + st["stand-in"]["n"] == len(rows)
    st_off = pose_status(list(rows_off.values()), ds.gt_poses)["all"]
    assert st_off["localized"]["n"] == len(good) and st["unverified"]["fine"] >= st_off["localized"]["fine"]
