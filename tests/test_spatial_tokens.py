"""3D spatial tokens (mmcrossvit.spatial_tokens) against the docstring's formula written out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mmcrossvit.colmap_io import CameraSpec
from mmcrossvit.geometry import Pose, project
from mmcrossvit.spatial_tokens import (Encoding, Normaliser, encode, image_tokens, patch_centres, patch_points_sfm,
                                       patch_rays)

W, H, G = 64, 48, 4
CAM = CameraSpec("PINHOLE", W, H, (60.0, 62.0, 31.0, 25.0))
POSE = Pose.look_at([2.0, -6.0, 1.5], [0.5, 0.0, 1.0])
CENTRES = np.array([[0.0, 0, 0], [4.0, 0, 0], [0, 3.0, 1.0], [2.0, 1.0, -1.0]])


def gamma(v, L, r):
    """The docstring's gamma, one scalar at a time: for each coordinate c, for k = 0..L-1,
    [sin(w_k v_c), cos(w_k v_c)] with w_k = (pi/2) * r ** (k / (L - 1))."""
    out = []
    for c in v:
        for k in range(L):
            w = (math.pi / 2) * r ** (k / (L - 1)) if L > 1 else math.pi / 2
            out += [math.sin(w * c), math.cos(w * c)]
    return out


def token(p, q, D=192):
    """Patch (or camera) token [gamma(p; L_p, 1024), gamma(q; L_q, 8)], zero-padded to D."""
    L_q = max(1, D // 32)
    L_p = (D - 8 * L_q) // 6
    t = gamma(p, L_p, 1024.0) + gamma(q, L_q, 8.0)
    return np.array(t + [0.0] * (D - len(t)))


def normalise(p, centres):
    mu = sum(centres) / len(centres)
    s = math.sqrt(sum(float(np.dot(c - mu, c - mu)) for c in centres) / len(centres))
    return (np.asarray(p) - mu) / s


def test_encoding_sizes():
    e = Encoding(192)
    assert (e.n_rot, e.n_pos) == (6, 24)
    assert 2 * 3 * 24 + 2 * 4 * 6 == 192
    assert (Encoding(100).n_rot, Encoding(100).n_pos) == (3, 12)
    with pytest.raises(ValueError):
        Encoding(13)


def test_encode_matches_formula_d192():
    p = np.array([0.3, -1.7, 2.25])
    q = np.array([0.9, 0.1, -0.3, 0.2]) / np.linalg.norm([0.9, 0.1, -0.3, 0.2])
    out = encode(p, q, Encoding(192))
    assert out.shape == (192,)
    np.testing.assert_allclose(out, token(p, q), atol=1e-12)
    # spot checks by hand: first entries are sin/cos of (pi/2) * p_x, the last position entry
    # is cos of (pi/2) * 1024 * p_z, and the quaternion part starts at 144
    assert out[0] == pytest.approx(math.sin(math.pi / 2 * 0.3))
    assert out[1] == pytest.approx(math.cos(math.pi / 2 * 0.3))
    assert out[2] == pytest.approx(math.sin(math.pi / 2 * 1024 ** (1 / 23) * 0.3))
    assert out[143] == pytest.approx(math.cos(math.pi / 2 * 1024 * 2.25))
    assert out[144] == pytest.approx(math.sin(math.pi / 2 * q[0]))
    assert out[191] == pytest.approx(math.cos(math.pi / 2 * 8 * q[3]))


def test_encode_pads_with_zeros():
    p, q = np.array([1.0, 2.0, 3.0]), np.array([1.0, 0, 0, 0])
    out = encode(p, q, Encoding(100))
    assert out.shape == (100,)
    np.testing.assert_allclose(out, token(p, q, 100), atol=1e-12)
    np.testing.assert_array_equal(out[96:], 0.0)


def test_encode_batched():
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 4))
    out = encode(p, q, Encoding(64))
    assert out.shape == (2, 5, 64)
    for a in range(2):
        for b in range(5):
            np.testing.assert_allclose(out[a, b], token(p[a, b], q[a, b], 64), atol=1e-12)


def test_identical_points_identical_distinct_points_distinct():
    rng = np.random.default_rng(1)
    q = np.broadcast_to([1.0, 0, 0, 0], (50, 4))
    pts = rng.normal(size=(50, 3)) * 2
    pts[10] = pts[3]                       # an exact duplicate
    pts[20] = pts[4] + [1e-3, 0, 0]        # a very close neighbour
    pts[30] = pts[5] + [4.0, 0, 0]         # one period of the lowest frequency away
    enc = encode(pts, q, Encoding(192))
    np.testing.assert_array_equal(enc[10], enc[3])
    d = np.linalg.norm(enc[:, None] - enc[None], axis=-1)
    off = ~np.eye(50, dtype=bool)
    off[3, 10] = off[10, 3] = False
    assert d[off].min() > 0.1
    assert d[4, 20] > 0.1 and d[5, 30] > 0.1


def test_normaliser():
    n = Normaliser.from_centres(CENTRES)
    mu = CENTRES.mean(0)
    np.testing.assert_allclose(n.mu, mu)
    assert n.s == pytest.approx(math.sqrt(np.mean(np.sum((CENTRES - mu) ** 2, 1))))
    np.testing.assert_allclose(n(np.array([1.0, 2.0, 3.0])), normalise([1.0, 2.0, 3.0], list(CENTRES)))
    # the normalised centres have RMS distance 1 to the origin
    assert np.sqrt(np.mean(np.sum(n(CENTRES) ** 2, 1))) == pytest.approx(1.0)
    assert Normaliser.from_centres(np.ones((3, 3))).s == 1.0  # degenerate: no division by zero


def test_patch_centres():
    c = patch_centres(CAM, G)
    assert c.shape == (G * G, 2)
    np.testing.assert_allclose(c[0], [8.0, 6.0])             # (0.5 * 64/4, 0.5 * 48/4)
    np.testing.assert_allclose(c[1], [24.0, 6.0])            # row-major: next column first
    np.testing.assert_allclose(c[G], [8.0, 18.0])
    np.testing.assert_allclose(c[-1], [56.0, 42.0])


def test_patch_points_sfm_medians_and_empty_cells():
    # cells are 16 x 12 pixels; cell = row * 4 + col
    kp = np.array([
        [1.0, 1.0], [15.99, 11.99], [8.0, 5.0],        # cell 0
        [16.0, 12.0], [31.0, 23.0],                    # cell 5 (16.0 is the first column of col 1)
        [64.0, 48.0],                                  # on the far border: clipped into cell 15
        [40.0, 30.0], [41.0, 31.0], [42.0, 32.0], [43.0, 33.0], [44.0, 34.0],  # cell 10
    ])
    X = np.array([
        [1.0, 10.0, -3.0], [2.0, -5.0, 7.0], [9.0, 0.0, 1.0],
        [1.0, 1.0, 1.0], [3.0, 5.0, -1.0],
        [7.0, 8.0, 9.0],
        [0.0, 0.0, 0.0], [100.0, 100.0, 100.0], [1.0, 2.0, 3.0], [2.0, 1.0, 4.0], [3.0, 3.0, 2.0],
    ])
    perm = np.random.default_rng(0).permutation(len(kp))  # input order does not matter
    pts, valid = patch_points_sfm(CAM, kp[perm], X[perm], G)
    assert pts.shape == (16, 3) and valid.dtype == bool
    np.testing.assert_array_equal(np.flatnonzero(valid), [0, 5, 10, 15])
    assert np.isnan(pts[~valid]).all()
    np.testing.assert_allclose(pts[0], [2.0, 0.0, 1.0])     # per-coordinate middle of three
    np.testing.assert_allclose(pts[5], [2.0, 3.0, 0.0])     # mean of the two
    np.testing.assert_allclose(pts[15], [7.0, 8.0, 9.0])
    np.testing.assert_allclose(pts[10], [2.0, 2.0, 3.0])    # the 100s outlier does not move it


def test_patch_points_sfm_no_observations():
    pts, valid = patch_points_sfm(CAM, np.zeros((0, 2)), np.zeros((0, 3)), G)
    assert pts.shape == (16, 3) and not valid.any() and np.isnan(pts).all()


def test_patch_rays_project_to_patch_centres():
    rays = patch_rays(CAM, POSE, G)
    np.testing.assert_allclose(np.linalg.norm(rays, axis=1), 1.0)
    uv, z = project(CAM.K, POSE, POSE.center + 3.0 * rays)
    np.testing.assert_allclose(uv, patch_centres(CAM, G), atol=1e-9)
    assert (z > 0).all()


def test_image_tokens_rays_mode():
    norm = Normaliser.from_centres(CENTRES)
    tokens, valid, pts = image_tokens(CAM, POSE, 3, norm, Encoding(192), "rays", ray_depth=7.5)
    assert tokens.shape == (1 + 9, 192) and valid.all() and pts.shape == (9, 3)
    C = POSE.center
    np.testing.assert_allclose(np.linalg.norm(pts - C, axis=1), 7.5, atol=1e-9)
    uv, z = project(CAM.K, POSE, pts)
    centres = [[(j + 0.5) * W / 3, (i + 0.5) * H / 3] for i in range(3) for j in range(3)]
    np.testing.assert_allclose(uv, centres, atol=1e-9)
    assert (z > 0).all()
    q = POSE.qvec
    assert q[0] >= 0
    np.testing.assert_allclose(tokens[0], token(normalise(C, list(CENTRES)), q), atol=1e-9)
    for k in range(9):
        np.testing.assert_allclose(tokens[1 + k], token(normalise(pts[k], list(CENTRES)), q), atol=1e-9)


def test_image_tokens_sfm_mode_known_point_and_fallback():
    """A patch whose true 3D point is known encodes exactly that point; empty patches fall back
    to their ray, at the image's median depth (distance along the unit ray)."""
    norm = Normaliser.from_centres(CENTRES)
    rng = np.random.default_rng(3)
    # true 3D points seen in patches 0 and 6 (grid 4): put them in front of the camera
    known = {0: np.array([0.4, 0.3, 0.9]), 6: np.array([1.0, 0.2, 1.3])}
    kp, X = [], []
    for cell, Xw in known.items():
        Xw = POSE.center + 5.0 * (Xw - POSE.center) / np.linalg.norm(Xw - POSE.center)
        known[cell] = Xw
        kp.append([(cell % G) * 16 + rng.uniform(1, 15), (cell // G) * 12 + rng.uniform(1, 11)])
        X.append(Xw)
    kp, X = np.array(kp), np.array(X)
    tokens, valid, pts = image_tokens(CAM, POSE, G, norm, Encoding(192), "sfm", ray_depth=99.0,
                                      observations=(kp, X))
    np.testing.assert_array_equal(np.flatnonzero(valid), [0, 6])
    q = POSE.qvec
    for cell, Xw in known.items():
        np.testing.assert_allclose(pts[cell], Xw)
        np.testing.assert_allclose(tokens[1 + cell], token(normalise(Xw, list(CENTRES)), q), atol=1e-9)
    depth = np.median(POSE.transform(X)[:, 2])
    empty = np.flatnonzero(~valid)
    uv, z = project(CAM.K, POSE, pts[empty])
    np.testing.assert_allclose(uv, patch_centres(CAM, G)[empty], atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(pts[empty] - POSE.center, axis=1), depth, atol=1e-9)
    for cell in empty:
        np.testing.assert_allclose(tokens[1 + cell], token(normalise(pts[cell], list(CENTRES)), q), atol=1e-9)


def test_image_tokens_sfm_without_observations_uses_ray_depth():
    norm = Normaliser.from_centres(CENTRES)
    _, valid, pts = image_tokens(CAM, POSE, 2, norm, Encoding(64), "sfm", ray_depth=4.0)
    assert not valid.any()
    np.testing.assert_allclose(np.linalg.norm(pts - POSE.center, axis=1), 4.0)


def test_image_tokens_unknown_mode():
    with pytest.raises(ValueError, match="unknown token mode"):
        image_tokens(CAM, POSE, 2, Normaliser.from_centres(CENTRES), Encoding(64), "depth", 1.0)
