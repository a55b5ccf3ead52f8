"""studies/database_aggregation.py: database descriptors pulled toward their covisible neighbours or
their descriptor neighbours, R@1 by condition, and where the wrong top-1s lie."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from database_aggregation import covisibility_aggregate, knn_aggregate, misses, normalise, r1_by_condition
from mmcrossvit.geometry import Pose


def _unit(*rows):
    return normalise(np.array(rows, np.float32))


def test_covisibility_pulls_toward_neighbours_only():
    # images 0 and 1 share 40 points, 2 shares 5 with 1: at t = 30 only 0 <-> 1 are neighbours
    D = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    shared = sp.csr_matrix(np.array([[0, 40, 0], [40, 0, 5], [0, 5, 0]], np.int32))
    A = covisibility_aggregate(D, shared, 30, 1.0)
    np.testing.assert_allclose(A[0], normalise(np.array([[1, 1, 0]], np.float32))[0], atol=1e-6)
    np.testing.assert_allclose(A[2], D[2], atol=1e-6)  # no neighbour at t = 30: unchanged
    np.testing.assert_allclose(np.linalg.norm(A, axis=1), 1, atol=1e-6)
    # alpha 0 gives the plain descriptors back
    np.testing.assert_allclose(covisibility_aggregate(D, shared, 8, 0.0), D, atol=1e-6)


def test_covisibility_aggregation_can_turn_a_miss_into_a_hit():
    # the query looks like image 0 (a look-alike elsewhere) a bit more than like image 1 (its place),
    # but image 1's covisible neighbour 2 looks like the query too
    q = _unit([1.0, 0.9, 0.5])
    D = _unit([1, 0.8, 0], [1, 0.3, 0.1], [0.2, 0.6, 0.8])
    shared = sp.csr_matrix(np.array([[0, 0, 0], [0, 0, 50], [0, 50, 0]], np.int32))
    pos, cond = [{1, 2}], ["day"]
    assert r1_by_condition(q, D, pos, cond)["day"] == 0.0
    assert r1_by_condition(q, covisibility_aggregate(D, shared, 8, 1.0), pos, cond)["day"] == 1.0


def test_knn_aggregate_keeps_itself_first():
    D = _unit([1, 0], [0.9, 0.1], [0, 1])
    A = knn_aggregate(D, 1)
    # 0 and 1 are each other's neighbour and blend; 2's neighbour has similarity ~0.11, cubed ~0.001
    assert A[0] @ A[1] > D[0] @ D[1]
    np.testing.assert_allclose(A[2], D[2], atol=2e-3)


def test_r1_skips_queries_without_positives_and_splits_conditions():
    Q = _unit([1, 0], [0, 1], [1, 0])
    D = _unit([1, 0], [0, 1])
    out = r1_by_condition(Q, D, [{0}, {0}, set()], ["day", "night", "night"])
    assert out == {"day": 1.0, "night": 0.0}  # the third query has no positive: not counted


def test_misses_measure_distance_and_turn_of_the_wrong_top1():
    q_poses = [Pose.look_at([0, 0, 1.6], [10, 0, 1.6]), Pose.look_at([0, 0, 1.6], [10, 0, 1.6])]
    db_poses = [Pose.look_at([0, 0, 1.6], [10, 0, 1.6]), Pose.look_at([40, 30, 1.6], [40, 40, 1.6])]
    Q = _unit([0, 1], [1, 0])
    D = _unit([1, 0], [0, 1])
    m = misses(Q, D, [{0}, {0}], q_poses, db_poses)  # query 0 retrieves image 1, 50 m away, turned 90°
    assert m["count"] == 1
    assert abs(m["median_m"] - 50.0) < 1e-6
    assert abs(m["median_deg"] - 90.0) < 1e-4
    assert m["over_30m"] == 1.0
    assert misses(Q[1:], D, [{0}], q_poses[1:], db_poses) == {"count": 0}
