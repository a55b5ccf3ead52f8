"""Spatial-contrastive database (mmcrossvit.spatial_db) against brute-force loops over image pairs."""
from __future__ import annotations

import numpy as np
import pytest

from mmcrossvit.geometry import box_iou, robust_box
from mmcrossvit.spatial_db import SpatialDB, build, incidence, observations, robust_boxes, shared_counts, stats

N_IMG, N_PTS = 30, 400
EMPTY = N_IMG - 1    # the last image observes nothing (an edge case for per-image reductions)
OUTLIER_IMG = 4      # sees one far-away point on top of its normal ones
FLAT_IMG = 7         # sees extra points that all share one z value


@pytest.fixture(scope="module")
def model():
    """Random model: points along a street, each seen by a run of nearby images (with drop-outs)."""
    rng = np.random.default_rng(42)
    pos = rng.uniform(0, N_IMG - 1, size=N_PTS)  # where along the street each point lies
    xyz = np.stack([pos * 3.0, rng.normal(0, 2, N_PTS), rng.normal(5, 1, N_PTS)], 1)
    img, pt = [], []
    for j in range(N_PTS):
        half = rng.integers(1, 5)
        for i in range(max(0, int(pos[j]) - half), min(EMPTY, int(pos[j]) + half + 1)):  # never EMPTY
            if rng.random() < 0.7:
                img.append(i)
                pt.append(j)
    # a duplicated observation (same image, same point) must count once
    img += [img[0], img[1]]
    pt += [pt[0], pt[1]]
    # an outlier point seen only by OUTLIER_IMG
    xyz = np.vstack([xyz, [[1e4, -3e3, 50.0]]])
    img.append(OUTLIER_IMG)
    pt.append(N_PTS)
    # points with identical z seen only by FLAT_IMG
    flat = np.stack([np.linspace(20, 22, 10), np.linspace(-1, 1, 10), np.full(10, 4.5)], 1)
    xyz = np.vstack([xyz, flat])
    img += [FLAT_IMG] * 10
    pt += list(range(N_PTS + 1, N_PTS + 11))
    perm = rng.permutation(len(img))  # observation order must not matter
    img, pt = np.array(img)[perm], np.array(pt)[perm]
    names = [f"db/{i:03d}.jpg" for i in range(N_IMG)]
    sets = [set(pt[img == i].tolist()) for i in range(N_IMG)]
    return names, img, pt, xyz, sets


def brute_shared(sets):
    n = len(sets)
    S = np.zeros((n, n), dtype=int)
    for a in range(n):
        for b in range(n):
            if a != b:
                S[a, b] = len(sets[a] & sets[b])
    return S


def brute_boxes(sets, xyz):
    out = []
    for s in sets:
        b = robust_box(xyz[sorted(s)]) if s else None
        out.append(np.full((2, 3), np.nan) if b is None else b)
    return np.array(out)


def test_model_has_the_edge_cases(model):
    _, _, _, xyz, sets = model
    assert len(sets[EMPTY]) == 0
    S = brute_shared(sets)
    assert (S >= 8).sum() > 20 and ((S > 0) & (S < 8)).sum() > 10 and (S == 0).sum() > 100
    # the outlier really is removed by the z-score filter, so the test below is not vacuous
    b = robust_box(xyz[sorted(sets[OUTLIER_IMG])])
    assert b[1, 0] < 1e3


def test_incidence_collapses_duplicates(model):
    _, img, pt, xyz, sets = model
    A = incidence(img, pt, N_IMG, len(xyz))
    assert A.shape == (N_IMG, len(xyz))
    dense = A.toarray()
    assert set(np.unique(dense)) <= {0.0, 1.0}
    for i in range(N_IMG):
        assert set(np.flatnonzero(dense[i])) == sets[i]


def test_shared_counts_brute_force(model):
    _, img, pt, xyz, sets = model
    S = shared_counts(incidence(img, pt, N_IMG, len(xyz)))
    np.testing.assert_array_equal(S.toarray(), brute_shared(sets))
    assert S.dtype == np.int32 and (S.data > 0).all()  # no stored zeros (the diagonal included)


def test_robust_boxes_match_robust_box(model):
    _, img, pt, xyz, sets = model
    boxes = robust_boxes(incidence(img, pt, N_IMG, len(xyz)), xyz)
    expected = brute_boxes(sets, xyz)
    assert np.isnan(boxes[EMPTY]).all() and not np.isnan(boxes[:EMPTY]).any()
    np.testing.assert_allclose(boxes, expected, rtol=1e-12, atol=1e-9)
    # the outlier is dropped; the flat points' common z does not break the filter
    assert boxes[OUTLIER_IMG, 1, 0] < 1e3


@pytest.mark.parametrize("z_thresh", [0.5, 1.0, 2.0])  # at 0.5 some images lose every point
def test_robust_boxes_thresholds(model, z_thresh):
    _, img, pt, xyz, sets = model
    boxes = robust_boxes(incidence(img, pt, N_IMG, len(xyz)), xyz, z_thresh)
    expected = np.array([np.full((2, 3), np.nan) if not s else robust_box(xyz[sorted(s)], z_thresh) for s in sets])
    np.testing.assert_allclose(boxes, expected, rtol=1e-12, atol=1e-9)


def test_robust_boxes_small_cases():
    # image 0: empty; 1: one point; 2: three identical points (std ~ 0 by cancellation);
    # 3: a tight cluster far from the origin with one outlier; 4: empty (trailing)
    rng = np.random.default_rng(5)
    cluster = 5000.0 + rng.normal(0, 0.01, size=(25, 3))
    xyz = np.vstack([[[1.0, 2.0, 3.0]], [[0.1, 0.2, 0.3]] * 3, cluster, [[5000.0, 5000.0, 5001.0]]])
    img = np.array([1] + [2] * 3 + [3] * 26)
    pt = np.arange(len(xyz))
    boxes = robust_boxes(incidence(img, pt, 5, len(xyz)), xyz)
    assert np.isnan(boxes[0]).all() and np.isnan(boxes[4]).all()
    # with a tiny threshold every point of image 3 is an outlier on some axis: all are kept
    tiny = robust_boxes(incidence(img, pt, 5, len(xyz)), xyz, z_thresh=1e-3)
    np.testing.assert_allclose(tiny[3], [xyz[4:].min(0), xyz[4:].max(0)])
    np.testing.assert_allclose(tiny[3], robust_box(xyz[4:], 1e-3))
    np.testing.assert_array_equal(boxes[1], [[1, 2, 3], [1, 2, 3]])
    np.testing.assert_allclose(boxes[2], [[0.1, 0.2, 0.3]] * 2)
    np.testing.assert_allclose(boxes[3], [cluster.min(0), cluster.max(0)])
    np.testing.assert_allclose(boxes[3], robust_box(xyz[4:]))


def test_robust_boxes_no_observations():
    boxes = robust_boxes(incidence(np.zeros(0, int), np.zeros(0, int), 3, 2), np.zeros((2, 3)))
    assert boxes.shape == (3, 2, 3) and np.isnan(boxes).all()


@pytest.fixture(scope="module")
def db(model):
    names, img, pt, xyz, _ = model
    return build(names, img, pt, xyz, min_shared=8, folds=5, seed=0)


def test_build_positives_and_iou(model, db):
    names, _, _, xyz, sets = model
    S = brute_shared(sets)
    boxes = brute_boxes(sets, xyz)
    np.testing.assert_array_equal(db.names, names)
    np.testing.assert_array_equal(db.shared.toarray(), S)
    np.testing.assert_array_equal(db.num_points, [len(s) for s in sets])
    total = 0
    for i in range(N_IMG):
        idx, iou = db.positives(i)
        expected = [j for j in range(N_IMG) if j != i and S[i, j] >= 8]
        np.testing.assert_array_equal(idx, expected)
        for j, v in zip(idx, iou):
            assert v == pytest.approx(float(box_iou(boxes[i], boxes[j])), rel=1e-6, abs=1e-7)
            assert 0.0 < v <= 1.0
        total += len(expected)
    assert total == len(db.pos_indices) == len(db.pos_iou) > 0


def test_build_negatives(model, db):
    S = brute_shared(model[4])
    for i in range(N_IMG):
        expected = np.array([j != i and S[i, j] == 0 for j in range(N_IMG)])
        np.testing.assert_array_equal(db.negative_mask(i), expected)
    # the image without points shares nothing: every other image is its negative
    assert db.negative_mask(EMPTY).sum() == N_IMG - 1
    assert len(db.positives(EMPTY)[0]) == 0


def test_build_min_shared_changes_positives(model):
    names, img, pt, xyz, sets = model
    S = brute_shared(sets)
    for k in (1, 15):
        d = build(names, img, pt, xyz, min_shared=k)
        assert len(d.pos_indices) == int((S >= k).sum())


def test_folds_balanced_and_deterministic(model, db):
    names, img, pt, xyz, _ = model
    counts = np.bincount(db.fold, minlength=5)
    assert len(counts) == 5 and counts.max() - counts.min() <= 1 and counts.sum() == N_IMG
    again = build(names, img, pt, xyz, min_shared=8, folds=5, seed=0)
    np.testing.assert_array_equal(again.fold, db.fold)
    other = build(names, img, pt, xyz, min_shared=8, folds=5, seed=1)
    assert not np.array_equal(other.fold, db.fold)
    assert sorted(np.bincount(other.fold)) == sorted(counts)
    three = build(names, img, pt, xyz, folds=3, seed=0)
    np.testing.assert_array_equal(np.bincount(three.fold), [10, 10, 10])


def test_save_load_round_trip(db, tmp_path):
    p = tmp_path / "spatial_db.npz"
    db.save(p)
    back = SpatialDB.load(p)
    np.testing.assert_array_equal(back.names, db.names)
    assert (back.shared != db.shared).nnz == 0 and back.shared.shape == db.shared.shape
    np.testing.assert_array_equal(back.boxes, db.boxes)  # NaNs in the same places
    for f in ("num_points", "pos_indptr", "pos_indices", "pos_iou", "fold"):
        np.testing.assert_array_equal(getattr(back, f), getattr(db, f))
    assert back.min_shared == db.min_shared == 8
    for i in range(N_IMG):
        np.testing.assert_array_equal(back.negative_mask(i), db.negative_mask(i))
    assert stats(back) == stats(db)


def test_stats(model, db):
    S = brute_shared(model[4])
    st = stats(db)
    npos = (S >= 8).sum(1)
    assert st["images"] == N_IMG
    assert st["images_without_points"] == 1
    assert st["anchors_with_positives"] == int((npos > 0).sum())
    assert st["positives_per_anchor"]["max"] == int(npos.max())
    assert st["positives_per_anchor"]["mean"] == pytest.approx(npos.mean())
    assert st["negatives_per_anchor"]["mean"] == pytest.approx(((S == 0).sum(1) - 1).mean())
    assert st["folds"] == 5 and st["min_shared"] == 8


def test_observations_maps_ids_to_indices():
    names = ["a.jpg", "b.jpg", "c.jpg"]
    point_ids = np.array([100, 7, 55, 3])
    image_points = {"a.jpg": (np.zeros((2, 2)), np.array([55, 100])),
                    "c.jpg": (np.zeros((3, 2)), np.array([3, 7, 55]))}  # b.jpg has no entry
    ii, pp = observations(names, image_points, point_ids)
    pairs = sorted(zip(ii.tolist(), pp.tolist()))
    index = {pid: k for k, pid in enumerate(point_ids.tolist())}
    expected = sorted((names.index(n), index[pid]) for n, (_, ids) in image_points.items() for pid in ids.tolist())
    assert pairs == expected
