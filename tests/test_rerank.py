"""Re-ranking by local verification (localize --rerank N --rerank-keep K): the K of the first N
candidates with the most distinct 2D-3D correspondences are localized, matched once; with
--rerank-pnp M, the candidates whose own PnP pose agrees with the best-verified one's."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mmcrossvit import cli, presets
from mmcrossvit.colmap_io import write_pairs
from mmcrossvit.errors import DataError
from mmcrossvit.evaluation import gt_covisibility
from mmcrossvit.layout import Dataset
from mmcrossvit.geometry import Pose
from mmcrossvit.localization import (ImageMatches, LocalizeOptions, SfMModel, agreeing, candidate_pose,
                                     correspondences, localize_query, match_image, pool, ransac_threshold, rerank)
from mmcrossvit.features import read_features
from mmcrossvit.steps import execute, localize


def _im(keypoints, points, raw=None):
    kp, pt = np.asarray(keypoints, np.int64), np.asarray(points, np.int64)
    return ImageMatches(kp, pt, len(kp) if raw is None else raw)


# ---- the re-ranking function, on synthetic correspondences -----------------------------------
def test_most_distinct_correspondences_win_ties_keep_rank_and_keep_is_respected():
    names = ["a", "b", "c", "d", "e"]
    matches = [_im([0, 0, 1, 2], [5, 5, 6, 7]),   # a: 3 distinct (one pair found twice)
               _im([0, 1, 2, 3, 4], [1, 2, 3, 4, 5]),  # b: 5
               _im([7, 8, 9], [1, 1, 2]),          # c: 3 (one 3D point from two keypoints: distinct pairs)
               _im([], [], raw=40),                # d: 0 (many raw matches, none triangulated)
               _im([3, 3], [9, 9])]                # e: 1
    kept, scores = rerank(names, matches, keep=2)
    assert scores == [3, 5, 3, 0, 1]  # every candidate's score, in the order given
    assert kept == ["b", "a"]
    assert rerank(names, matches, keep=3)[0] == ["b", "a", "c"]  # the tie a/c: retrieval order
    assert rerank(names, matches, keep=10)[0] == ["b", "a", "c", "e", "d"]  # keep > candidates: all, ranked
    rev = rerank(names[::-1], matches[::-1], keep=3)[0]
    assert rev == ["b", "c", "a"]  # the tie follows whichever order the candidates came in
    with pytest.raises(ValueError):
        rerank(names, matches, keep=0)


def test_agreeing_keeps_the_candidates_posed_near_the_best_verified_one():
    def at(x):
        return Pose.from_center(np.eye(3), [x, 0.0, 0.0])
    names = ["a", "b", "c", "d", "e", "f"]
    scores = [50, 40, 30, 30, 20, 10]
    inliers = [20, 30, 15, 5, 25, 0]
    poses = [at(1.0), at(0.0), at(30.0), at(0.5), at(4.0), None]
    # b verifies best; e (4 m off) and a agree; c is 30 m away; d has too few inliers; f no pose
    assert agreeing(names, scores, inliers, poses, keep=5, radius=5.0, min_inliers=12) == ["b", "e", "a"]
    assert agreeing(names, scores, inliers, poses, keep=2, radius=5.0, min_inliers=12) == ["b", "e"]
    assert agreeing(names, scores, inliers, poses, keep=5, radius=2.0, min_inliers=12) == ["b", "a"]
    assert agreeing(names, scores, inliers, poses, keep=5, radius=5.0, min_inliers=10) == ["b", "e", "a", "d"]
    # an inlier tie goes to the higher match score, then to retrieval order
    assert agreeing(["x", "y", "z"], [1, 2, 2], [20, 20, 20], [at(0), at(9), at(0)], keep=3, radius=1.0,
                    min_inliers=12) == ["y"]
    # no candidate reaches the bar on its own: the best one alone
    assert agreeing(names, scores, [3, 2, 1, 0, 0, 0], poses, keep=5, radius=5.0, min_inliers=12) == ["a"]


def test_pooling_keeps_each_pair_once_in_the_order_given():
    q = {"keypoints": np.arange(20, dtype=np.float32).reshape(10, 2)}

    class M:  # the few fields of SfMModel that pooling reads
        xyz = np.arange(30, dtype=np.float64).reshape(10, 3)

    p2, p3, src, total = pool(M, q, [("x", _im([1, 2], [3, 4], raw=7)), ("y", _im([2, 5], [4, 6], raw=9))])
    assert total == 16 and src == ["x", "x", "y"]
    assert p2.tolist() == [[2, 3], [4, 5], [10, 11]] and p3[:, 0].tolist() == [9, 12, 18]


# ---- through the localize step on the tiny run ------------------------------------------------
@pytest.fixture(scope="module")
def weak(tiny_run, tmp_path_factory):
    """A deliberately weak retrieval: per query the 5 least covisible database images first, then the
    5 most covisible ones (ground truth); the pairs file is 10 deep. (root, run, model, cands, pairs)"""
    root, run = tiny_run
    ds = Dataset(root)
    model = SfMModel.load(run.sfm)
    db = sorted(model.point3d_ids)
    covis = gt_covisibility(ds, model, db)
    cands = {}
    for q in sorted(ds.queries):
        order = np.argsort(-covis[q], kind="stable")
        cands[q] = [db[j] for j in order[::-1][:5]] + [db[j] for j in order[:5]]
    pairs = tmp_path_factory.mktemp("rerank") / "pairs-weak.txt"
    write_pairs(pairs, [(q, d) for q, c in cands.items() for d in c])
    return root, run, model, cands, pairs


def _localize(run, tag, **kw):
    return execute(localize, run, cli.settings(localize, "tiny", tag=tag, **kw))


def _rows(run, tag):
    return {r["query"]: r for r in map(json.loads, run.localization_log(tag).read_text().splitlines())}


def test_rerank_keeps_the_verified_candidates_and_changing_it_relocalizes(weak, capsys):
    root, run, model, cands, pairs = weak
    top5 = _localize(run, "rerank-off", pairs=pairs, num_retrieved=5)  # as today: the first 5
    on = _localize(run, "rerank-on", pairs=pairs, rerank=10, rerank_keep=5, rerank_pnp=0)
    rows = _rows(run, "rerank-on")
    moved = 0
    for q, r in rows.items():
        assert r["candidates"] == cands[q] and len(r["verification"]) == 10
        scores = dict(zip(r["candidates"], r["verification"]))
        assert len(r["retrieved"]) == 5 and set(r["retrieved"]) <= set(cands[q])
        # the kept are the best verified, best first, ties by retrieval rank
        expect = sorted(cands[q], key=lambda n: -scores[n])[:5]
        assert r["retrieved"] == expect
        moved += r["retrieved"] != cands[q][:5]
    assert moved >= len(rows) // 2  # the weak list's head is not what verification keeps
    assert on["localized"] > top5["localized"], (on, top5)
    assert on["rerank"] == {"candidates": 10, "keep": 5}

    # the kept list alone, without re-ranking, reproduces the logged pose (diagnosis relies on it)
    ds = Dataset(root)
    q = next(q for q, r in rows.items() if r["success"])
    cam = ds.queries[q].camera
    ref = localize_query(q, cam, rows[q]["retrieved"], model, run.features, LocalizeOptions())  # the paper's
    assert (ref.num_inliers, ref.num_matches) == (rows[q]["inliers"], rows[q]["matches"])
    assert np.allclose(ref.pose.t, rows[q]["tvec"])
    # ...and a candidate's score is its distinct correspondences from matching the query to its
    # triangulated keypoints (rerank_points, the presets' default)...
    qf = read_features(run.features, q)
    best = rows[q]["retrieved"][0]
    scores = dict(zip(rows[q]["candidates"], rows[q]["verification"]))
    assert match_image(model, qf, run.features, best, points_only=True).distinct() == scores[best]
    # ...or, without it, to every keypoint: the correspondences as the localizer pools them
    _localize(run, "rerank-full", pairs=pairs, rerank=10, rerank_keep=5, rerank_points=False, rerank_pnp=0)
    full = _rows(run, "rerank-full")[q]
    p2, p3, _, _ = correspondences(model, qf, run.features, [best])
    assert len(p2) == dict(zip(full["candidates"], full["verification"]))[best]
    assert full["verification"] != rows[q]["verification"]  # the two scores differ

    # changing the setting re-localizes every query; the same settings reuse the log
    n = len(rows)
    capsys.readouterr()
    _localize(run, "rerank-on", pairs=pairs, rerank=10, rerank_keep=3, rerank_pnp=0)
    assert f"settings, model or features changed for {n}: re-localizing {n} queries" in capsys.readouterr().out
    assert all(len(r["retrieved"]) == 3 for r in _rows(run, "rerank-on").values())
    _localize(run, "rerank-on", pairs=pairs, rerank=8, rerank_keep=3, rerank_pnp=0)  # fewer candidates: the pairs moved
    assert f"pairs changed for {n} queries: re-localizing {n} queries" in capsys.readouterr().out
    assert all(len(r["candidates"]) == 8 for r in _rows(run, "rerank-on").values())
    _localize(run, "rerank-on", pairs=pairs, rerank=8, rerank_keep=3, rerank_pnp=0)
    assert "re-localizing" not in capsys.readouterr().out
    _localize(run, "rerank-on", pairs=pairs, rerank=0, num_retrieved=2)  # off again: re-localized, no scores
    assert f"re-localizing {n} queries" in capsys.readouterr().out
    off = _rows(run, "rerank-on")
    assert all("verification" not in r and r["retrieved"] == cands[q][:2] for q, r in off.items())


def test_pnp_verification_pools_only_candidates_that_agree_and_the_kept_list_reproduces_the_pose(weak, capsys):
    root, run, model, cands, pairs = weak
    ds = Dataset(root)
    s = presets.step_settings("tiny", "localize")
    assert s["rerank_pnp"] > 0  # the presets' default
    by_count = _localize(run, "rerank-count", pairs=pairs, rerank=10, rerank_keep=5, rerank_pnp=0)
    on = _localize(run, "rerank-pnp", pairs=pairs, rerank=10, rerank_keep=5)
    rows = _rows(run, "rerank-pnp")
    assert on["localized"] >= by_count["localized"] > 0, (on, by_count)
    pooled_fewer = checked = 0
    for q, r in rows.items():
        cam = ds.queries[q].camera
        threshold = ransac_threshold(cam, s["ransac_max_error"], s["ransac_ref_size"])
        assert r["candidates"] == cands[q] and len(r["pnp_inliers"]) == 10
        inl = dict(zip(r["candidates"], r["pnp_inliers"]))
        scores = dict(zip(r["candidates"], r["verification"]))
        kept = r["retrieved"]
        assert 1 <= len(kept) <= 5 and set(kept) <= set(cands[q])
        assert kept[0] == max(cands[q], key=lambda n: (inl[n], scores[n]))  # max() keeps the first of ties
        pooled_fewer += len(kept) < 5
        if inl[kept[0]] < s["min_inliers"]:
            assert len(kept) == 1
            continue
        # every kept candidate's own pose is within --rerank-agree of the best one's, recomputed here
        qf = read_features(run.features, q)
        own = {n: candidate_pose(model, qf, match_image(model, qf, run.features, n, points_only=True), cam,
                                 threshold, s["seed"]) for n in kept}
        assert all(own[n][0] == inl[n] >= s["min_inliers"] // 2 for n in kept)
        c0 = own[kept[0]][1].center
        assert all(np.linalg.norm(own[n][1].center - c0) <= s["rerank_agree"] for n in kept)
        # the kept list alone, without re-ranking, reproduces the logged pose (verification reseeds)
        ref = localize_query(q, cam, kept, model, run.features,
                             LocalizeOptions.of({k: s[k] for k in ("ratio", "ransac_max_error", "ransac_ref_size",
                                                                   "min_inliers", "seed")}))
        assert (ref.num_inliers, ref.num_matches, ref.success) == (r["inliers"], r["matches"], r["success"])
        assert np.allclose(ref.pose.t, r["tvec"])
        checked += 1
    assert checked > 0  # tiny localizes few queries; those that verify are checked in full
    assert pooled_fewer > 0  # some candidates of the weak list were kept out of the pool
    # inconclusive verification (no candidate reaches min_inliers on its own): --rerank-fallback scores
    # pools the best --rerank-keep by score, as without PnP; conclusive queries are untouched
    _localize(run, "rerank-fallback", pairs=pairs, rerank=10, rerank_keep=5, rerank_fallback="scores")
    inconclusive = 0
    for q, r in _rows(run, "rerank-fallback").items():
        assert r["pnp_inliers"] == rows[q]["pnp_inliers"]
        if max(r["pnp_inliers"]) < s["min_inliers"]:
            inconclusive += 1
            by_score = sorted(range(10), key=lambda i: -r["verification"][i])[:5]
            assert r["retrieved"] == [r["candidates"][i] for i in by_score]
        else:
            assert (r["retrieved"], r["tvec"]) == (rows[q]["retrieved"], rows[q]["tvec"])
    assert inconclusive > 0
    # the setting enters the log key: changing it re-localizes, turning it off too
    capsys.readouterr()
    _localize(run, "rerank-pnp", pairs=pairs, rerank=10, rerank_keep=5, rerank_agree=1.0)
    assert f"re-localizing {len(rows)} queries" in capsys.readouterr().out
    with pytest.raises(DataError, match="--rerank-pnp must be >= 0"):
        _localize(run, "rerank-pnp", pairs=pairs, rerank=10, rerank_keep=5, rerank_pnp=-1)
    with pytest.raises(DataError, match="--rerank-fallback must be one of best, scores"):
        _localize(run, "rerank-pnp", pairs=pairs, rerank=10, rerank_keep=5, rerank_fallback="all")


def test_rerank_off_keys_are_unchanged_by_rerank_keep(weak, capsys):
    _, run, _, _, pairs = weak
    _localize(run, "rerank-keys", pairs=pairs, num_retrieved=3)
    capsys.readouterr()
    _localize(run, "rerank-keys", pairs=pairs, num_retrieved=3, rerank_keep=7)  # unused while rerank=0
    assert "re-localizing" not in capsys.readouterr().out


def test_a_pairs_file_shallower_than_rerank_is_an_error_naming_it(weak):
    _, run, _, _, pairs = weak
    with pytest.raises(DataError, match=r"pairs-weak\.txt.*--rerank 20 needs the first 20.*at most 10"):
        _localize(run, "rerank-deep", pairs=pairs, rerank=20, rerank_keep=5)
    with pytest.raises(DataError, match=r"pairs-query-ranked\.txt.*pairs file not found"):
        _localize(run, "rerank-deep", rerank=20, rerank_keep=5)  # the default: the pairs step's full ranking
    with pytest.raises(DataError, match=r"--rerank-keep.*1\.\.5, got 10"):
        _localize(run, "rerank-deep", pairs=pairs, rerank=5, rerank_keep=10)
    with pytest.raises(DataError, match=r"--num-retrieved"):
        _localize(run, "rerank-deep", pairs=pairs, rerank=10, rerank_keep=5, num_retrieved=5)


def test_rerank_is_a_flag_with_help_and_a_preset_value(tmp_path):
    text = cli.parser(localize).format_help()
    assert "--rerank " in text and "--rerank-keep" in text and "--rerank-pnp" in text and "--rerank-agree" in text
    assert "--rerank-fallback" in text
    _, cfg = cli.parse(localize, ["--dataset", str(tmp_path), "--preset", "demo"])
    demo = presets.PRESETS["demo"]["localize"]
    assert (cfg.rerank, cfg.rerank_keep) == (demo["rerank"], demo["rerank_keep"]) and cfg.rerank > cfg.rerank_keep
    _, cfg = cli.parse(localize, ["--dataset", str(tmp_path), "--preset", "paper"])
    assert cfg.rerank == 0  # the paper's pipeline
    _, cfg = cli.parse(localize, ["--dataset", str(tmp_path), "--preset", "demo", "--rerank", "0"])
    assert (cfg.rerank, cfg.rerank_keep) == (0, demo["rerank_keep"])
