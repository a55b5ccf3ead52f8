"""The localization diagnosis: GT-consistency, failure kinds, the re-run matching the run's log,
and studies/diagnose_localization.py end to end on the tiny synthetic town."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mmcrossvit.colmap_io import CameraSpec
from diagnosis import KINDS, SETTINGS, diagnose_query, failure_kind, gt_consistent, summarise
from mmcrossvit.errors import DataError
from mmcrossvit.evaluation import THRESHOLDS, gt_covisibility, visible_points
from mmcrossvit.geometry import Pose, pose_error
from mmcrossvit.layout import Dataset
from mmcrossvit.localization import LocalizeOptions, SfMModel, estimate_pose, localize_query
from mmcrossvit.storage import read_json

BENCHMARKS = Path(__file__).resolve().parents[1] / "studies"
TAG = "diag"
CAMERA = CameraSpec("SIMPLE_RADIAL", 640, 480, (500.0, 320.0, 240.0, 0.05))


def _project(camera: CameraSpec, pose: Pose, X: np.ndarray) -> np.ndarray:
    return np.asarray(camera.to_pycolmap().img_from_cam(pose.transform(X)))


def _scene(n=200, seed=0):
    rng = np.random.default_rng(seed)
    pose = Pose.look_at([0.0, -20.0, 2.0], [0.0, 0.0, 2.0])
    X = np.c_[rng.uniform(-6, 6, n), rng.uniform(-3, 3, n), rng.uniform(0, 5, n)]
    return pose, X, _project(CAMERA, pose, X)


# ---- GT-consistency and failure kinds (no run needed) -----------------------------------------
def test_gt_consistent_counts_exact_projections_only():
    pose, X, uv = _scene()
    assert gt_consistent(uv, X, CAMERA, pose, px=0.5).all()  # distortion included: exact, not pinhole
    shifted = uv.copy()
    rng = np.random.default_rng(1)
    half = rng.permutation(len(uv))[: len(uv) // 2]
    ang = rng.uniform(0, 2 * np.pi, len(half))
    shifted[half] += 20.0 * np.c_[np.cos(ang), np.sin(ang)]
    ok = gt_consistent(shifted, X, CAMERA, pose, px=4.0)
    assert ok.sum() == len(uv) - len(half) and not ok[half].any()
    # behind the camera: the mirrored point has the same x/z, y/z (a naive projection lands on the
    # keypoint) but must not count
    behind = pose.inverse().transform(-pose.transform(X))
    assert not gt_consistent(uv, behind, CAMERA, pose, px=4.0).any()
    assert gt_consistent(np.zeros((0, 2)), np.zeros((0, 3)), CAMERA, pose, 4.0).shape == (0,)


def test_points_the_lens_folds_into_the_image_are_neither_visible_nor_consistent():
    """With a radial k < 0, r(1 + k r^2) turns down beyond r^2 = -1/(3k): a point far enough off the
    axis (here 80 degrees, r = 6) lands inside the image, on the other side. It must not count as
    seen or as a correct match; points in view still do, at the image's edge too."""
    cam = CameraSpec("SIMPLE_RADIAL", 640, 480, (500.0, 320.0, 240.0, -0.03))
    pose = Pose(np.eye(3), np.zeros(3))  # world = camera frame
    X = np.array([[0.1, 0.05, 1.0], [6.0, 0.0, 1.0], [-0.6, 0.4, 1.0], [0.0, -5.9, 1.0]]) * 10
    raw = np.asarray(cam.to_pycolmap().img_from_cam(X))
    inside = (raw >= 0).all(1) & (raw < [640, 480]).all(1)
    assert inside.tolist() == [True, True, True, True]  # the folded ones do land in the image
    assert raw[1, 0] < 320 and raw[3, 1] > 240  # ... mirrored across the centre
    assert visible_points(cam, pose, X).tolist() == [0, 2]
    assert visible_points(cam, pose, X, lens_branch=False).tolist() == [0, 1, 2, 3]  # the definition before
    assert gt_consistent(raw, X, cam, pose, px=4.0).tolist() == [True, False, True, False]


def test_failure_kind_uses_the_benchmark_thresholds():
    (fm, fd), (cm, cd) = THRESHOLDS[0], THRESHOLDS[-1]
    assert failure_kind(True, fm, fd, 100, 1) == "localized"
    assert failure_kind(True, fm * 1.01, fd / 2, 100, 1) == "inaccurate"
    assert failure_kind(True, fm / 2, fd * 1.01, 100, 1) == "inaccurate"
    assert failure_kind(True, cm, cd, 100, 1) == "inaccurate"
    assert failure_kind(True, cm * 1.01, 0.0, 100, 1) == "wrong pose accepted"
    assert failure_kind(True, 0.0, cd * 1.01, 100, 0) == "wrong pose accepted"
    assert failure_kind(False, 0.0, 0.0, 500, 0) == "retrieval miss"  # retrieval is judged first
    assert failure_kind(False, 0.0, 0.0, 3, 2) == "no correspondences"
    assert failure_kind(False, 0.0, 0.0, 4, 2) == "few inliers"
    assert failure_kind(False, 0.0, 0.0, 4, 2, "inliers") == "few inliers"
    assert failure_kind(False, 0.0, 0.0, 40, 2, "coverage") == "pose rejected"  # a rule beyond the count
    assert failure_kind(False, 0.0, 0.0, 40, 2, "place ratio") == "pose rejected"
    assert failure_kind(False, 0.0, 0.0, 40, 0, "place ratio") == "retrieval miss"


def test_summarise_counts_and_medians():
    rows = [dict(condition="day", kind="localized", inliers=100, first_covisible_rank=1),
            dict(condition="day", kind="localized", inliers=50, first_covisible_rank=None),
            dict(condition="day", kind="few inliers", inliers=3, first_covisible_rank=4),
            dict(condition="night", kind="retrieval miss", inliers=0, first_covisible_rank=None)]
    s = summarise(rows)
    assert list(s["counts"]) == ["day", "night", "all"]
    assert s["counts"]["day"] == {**{k: 0 for k in KINDS}, "localized": 2, "few inliers": 1, "total": 3}
    assert s["counts"]["all"]["total"] == 4 and sum(s["counts"]["all"][k] for k in KINDS) == 4
    assert s["medians"]["day"]["localized"]["inliers"] == 75
    assert s["medians"]["day"]["localized"]["first_covisible_rank"] == 1  # None left out
    assert s["medians"]["night"]["retrieval miss"]["first_covisible_rank"] is None
    assert s["medians"]["all"]["all"]["inliers"] == 26.5
    assert "inaccurate" not in s["medians"]["day"]


# ---- on the tiny run ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def diag_run(tiny_run):
    """The oracle localization of the tiny run, under its own tag; (root, run, log rows by query)."""
    from mmcrossvit import cli
    from mmcrossvit.steps import execute, localize
    root, run = tiny_run
    execute(localize, run, cli.settings(localize, "tiny", retrieval="oracle", tag=TAG))
    log = [json.loads(line) for line in run.localization_log(TAG).read_text().splitlines()]
    return root, run, {r["query"]: r for r in log}


@pytest.fixture(scope="module")
def context(diag_run):
    root, run, log = diag_run
    ds = Dataset(root)
    model = SfMModel.load(run.sfm)
    db = sorted(model.point3d_ids)
    covis = gt_covisibility(ds, model, db)
    settings = read_json(run.settings(f"localize_{TAG}"))["settings"]
    return ds, run, log, model, db, covis, settings


def _diagnose_all(context, **changes):
    ds, run, log, model, db, covis, settings = context
    s = {**settings, **changes}
    return {q: diagnose_query(q, ds.queries[q].camera, ds.gt_poses[q], log[q]["retrieved"], model, run.features,
                              s, dict(zip(db, covis[q].tolist())), 4.0, 8, ds.queries[q].condition)
            for q in sorted(log)}


def test_diagnosis_reproduces_the_logged_localization(context):
    ds, _, log, *_ = context
    rows = _diagnose_all(context)
    assert set(rows) == set(ds.gt_poses) and len(rows) == 10
    for q, r in rows.items():
        assert (r["success"], r["inliers"], r["matches"]) == (log[q]["success"], log[q]["inliers"], log[q]["matches"])
        assert np.allclose(r["qvec"], log[q]["qvec"]) and np.allclose(r["tvec"], log[q]["tvec"])
        assert r["reproduced"]
        assert 0 <= r["gt_inliers"] <= r["inliers"] <= r["correspondences"] <= r["matches"]
        assert r["inlier_keypoints"] <= r["distinct_inliers"] <= r["inliers"]
        assert r["gt_correspondences"] <= r["correspondences"]
        assert r["kind"] in KINDS
        # judged on the logged pose, independently of the diagnosis's own errors
        dt, dr = pose_error(Pose.from_qt(log[q]["qvec"], log[q]["tvec"]), ds.gt_poses[q])
        if r["kind"] == "localized":
            assert log[q]["success"] and dt <= THRESHOLDS[0][0] and dr <= THRESHOLDS[0][1]
            # exact synthetic ground truth, sub-pixel SfM: a right pose's inliers are nearly all true
            assert r["gt_inliers"] >= 0.9 * r["inliers"] > 0
        # the oracle retrieves the images sharing most points: the first is the best covisible one
        if log[q]["retrieved"]:
            assert r["best_retrieved"] == r["best_db"] == log[q]["retrieved"][0]
        else:  # a query seeing no model point gets no oracle candidates
            assert r["kind"] == "retrieval miss" and r["best_db"] is None and r["first_covisible_rank"] is None
        if r["covisible_retrieved"]:
            assert r["first_covisible_rank"] == 1
    assert sum(r["kind"] == "localized" for r in rows.values()) >= 2, rows


def test_a_place_ratio_rejection_is_taken_from_the_log(context):
    """The replay cannot redo the place ratio test (every candidate's own PnP): the logged verdict
    turns a pose the replay accepts into a rejected one, judged on the same estimate."""
    ds, run, log, model, db, covis, settings = context
    q = next(q for q in sorted(log) if log[q]["success"])
    args = (q, ds.queries[q].camera, ds.gt_poses[q], log[q]["retrieved"], model, run.features, settings,
            dict(zip(db, covis[q].tolist())), 4.0, 8, ds.queries[q].condition)
    plain, rejected = diagnose_query(*args), diagnose_query(*args, rejected_by="place ratio")
    assert plain["success"] and plain["kind"] == "localized"
    assert not rejected["success"] and rejected["kind"] == "pose rejected"
    assert (rejected["inliers"], rejected["position_error_m"]) == (plain["inliers"], plain["position_error_m"])
    assert diagnose_query(*args, rejected_by="coverage")["success"]  # a rule the replay redoes itself


def test_failed_queries_are_diagnosed_from_their_best_hypothesis(context):
    """Every query made to fail (an unreachable min_inliers), clustered by covisibility: the
    rebuilt hypothesis must be the one localize_query scored."""
    ds, run, log, model, _, _, settings = context
    rows = _diagnose_all(context, min_inliers=10**6, covisibility=True)
    for q, r in rows.items():
        cam = ds.queries[q].camera
        ref = localize_query(q, cam, log[q]["retrieved"], model, run.features,
                             LocalizeOptions.of({k: settings[k] for k in SETTINGS}, covisibility=True,
                                                min_inliers=10**6))
        assert not r["success"] and r["inliers"] == ref.num_inliers and r["reproduced"]
        assert r["gt_inliers"] <= r["inliers"]
        assert r["kind"] == ("retrieval miss" if not r["covisible_retrieved"] else
                             "no correspondences" if r["correspondences"] < 4 else "few inliers")
        if log[q]["success"]:  # a hypothesis is still found; only the verdict changed
            assert r["inliers"] > 0


def test_true_pose_fed_back_counts_every_consistent_correspondence(context):
    ds, _, _, model, *_ = context
    q = sorted(ds.gt_poses)[0]
    cam, gt = ds.queries[q].camera, ds.gt_poses[q]
    X = model.xyz[visible_points(cam, gt, model.xyz)]
    assert len(X) >= 50
    uv = _project(cam, gt, X)
    assert gt_consistent(uv, X, cam, gt, px=0.5).all()
    rng = np.random.default_rng(0)
    out = rng.permutation(len(X))[: len(X) // 4]
    uv[out] += 30.0  # outliers: 42 px off
    consistent = gt_consistent(uv, X, cam, gt, px=4.0)
    assert consistent.sum() == len(X) - len(out)
    pose, inliers, _ = estimate_pose(uv, X, cam, 12.0)
    dt, dr = pose_error(pose, gt)
    assert failure_kind(True, dt, dr, len(X), 1) == "localized"
    assert (consistent & inliers).sum() == len(X) - len(out) == inliers.sum()


# ---- the script ------------------------------------------------------------------------------
def _script():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    import diagnose_localization
    return diagnose_localization


def _run_args(root, run, tmp_path):
    return ["--dataset", str(root), "--name", run.name, "--outputs", str(run.outputs),
            "--database-root", str(run.database_root), "--results", str(tmp_path)]


def test_script_end_to_end(diag_run, tmp_path, capsys):
    root, run, log = diag_run
    result = _script().main(_run_args(root, run, tmp_path) + ["--tag", TAG, "--px", "4"])
    for path in (run.diagnosis_csv(TAG), run.diagnosis_json(TAG), run.diagnosis_md(TAG), run.diagnosis_figure(TAG),
                 tmp_path / f"diagnosis_{run.name}_{TAG}.md", tmp_path / f"diagnosis_{run.name}_{TAG}.json"):
        assert path.is_file() and path.stat().st_size > 0, path
    assert run.diagnosis_figure(TAG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(run.diagnosis_json(TAG).read_text())  # strict JSON: no NaN tokens
    counts = summary["counts"]
    n = len(Dataset(root).gt_poses)
    assert summary["queries"] == n == len(log)
    assert counts["all"]["total"] == n == sum(counts["all"][k] for k in KINDS)
    assert counts["day"]["total"] + counts["night"]["total"] == n
    for c in ("day", "night"):
        assert sum(counts[c][k] for k in KINDS) == counts[c]["total"]
    assert counts["all"]["localized"] == sum(r["kind"] == "localized" for r in result["rows"])
    assert summary["differ_from_log"] == [] and summary["not_in_log"] == []
    assert summary["settings_from"].endswith(f"localize_{TAG}.json")
    with open(run.diagnosis_csv(TAG)) as f:
        table = list(csv.DictReader(f))
    assert sorted(r["query"] for r in table) == sorted(log)
    assert all(int(r["inliers"]) == log[r["query"]]["inliers"] for r in table)
    out = capsys.readouterr().out
    assert "| condition | localized |" in out and run.diagnosis_md(TAG).read_text() in out


def test_script_names_what_is_missing(diag_run, tmp_path):
    root, run, _ = diag_run
    with pytest.raises(DataError, match=r"localization_log.jsonl.*localize.py .*--tag nothing-here"):
        _script().main(_run_args(root, run, tmp_path) + ["--tag", "nothing-here"])
    with pytest.raises(DataError, match=r"query_poses.txt.*ground truth"):
        _script().main(["--dataset", str(tmp_path), "--outputs", str(tmp_path / "o"), "--results", str(tmp_path)])


def test_visible_points_benchmark_reports_each_definitions_own_counts(tiny_run, tmp_path):
    """studies/visible_points.py on the tiny run: each definition's visible pairs are its own, and
    the folded / hidden pairs account for the difference between them."""
    import importlib
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    bench = importlib.import_module("visible_points")
    root, run = tiny_run
    result = bench.main(_run_args(root, run, tmp_path) + ["--preset", "tiny"])
    ds, model = Dataset(root), SfMModel.load(run.sfm)
    for label, branch in bench.DEFINITIONS.items():
        assert result["visible_pairs"][label] == sum(
            len(visible_points(ds.queries[q].camera, ds.gt_poses[q], model.xyz, lens_branch=branch)) for q in ds.gt_poses)
    pairs = result["visible_pairs"]
    assert (pairs["lens-aware (current)"] - pairs["lens-blind (before)"]
            == result["pairs_hidden_by_folded"] - result["folded_pairs_counted_visible"])
    assert result["queries"] == len(ds.gt_poses) and result["oracle_k"] == 10
    assert (tmp_path / f"visible_points_{run.name}.md").is_file()
