"""Descriptor matching against a plain float64 reference (with either CPU product kernel), the
kernel `auto` picks, and the bounded feature cache."""
import h5py
import numpy as np
import pytest

import torch

from mmcrossvit.features import FeatureStore, int8_products_fast, match_descriptors


def _reference(d0: np.ndarray, d1: np.ndarray, ratio: float) -> np.ndarray:
    """Mutual nearest neighbours with Lowe's ratio test, in float64 with numpy's argmax (first
    maximum on ties), computed the obvious way."""
    a, b = d0.astype(np.float64), d1.astype(np.float64)
    dots = a @ b.T
    sim = (dots.astype(np.float32) / (np.sqrt((a * a).sum(1)).astype(np.float32)[:, None]
                                      * np.sqrt((b * b).sum(1)).astype(np.float32)[None, :]))
    order = np.argsort(-sim, axis=1, kind="stable")
    best, second = sim[np.arange(len(a)), order[:, 0]], sim[np.arange(len(a)), order[:, 1]]
    dist = np.sqrt(np.clip(2 - 2 * np.stack([best, second], 1), 0, None)).astype(np.float32)
    ok = dist[:, 0] < np.float32(ratio) * dist[:, 1]
    ok &= sim.argmax(0)[order[:, 0]] == np.arange(len(a))
    i0 = np.nonzero(ok)[0]
    return np.stack([i0, order[i0, 0]], 1)


@pytest.mark.parametrize("kernel", ["int8", "float32", "auto"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_equal_a_float64_reference_including_ties(seed, kernel):
    rng = np.random.default_rng(seed)
    # SIFT-like: correlated pairs with noise, plus exact duplicates so that ties occur
    d1 = rng.integers(0, 256, (300, 128)).astype(np.uint8)
    d0 = np.clip(d1[rng.permutation(300)[:200]].astype(int) + rng.integers(-20, 21, (200, 128)), 0, 255).astype(np.uint8)
    d0 = np.concatenate([d0, d1[:5], d1[:5]])           # two query rows tie on one database column
    d1 = np.concatenate([d1, d1[10:13]])                 # database columns tie for one query row
    got = match_descriptors(d0, d1, ratio=0.9, kernel=kernel)
    want = _reference(d0, d1, 0.9)
    assert len(want) > 100
    # a row whose best two columns tie fails the ratio test in both; first-index rules otherwise
    assert np.array_equal(got, want)


@pytest.mark.parametrize("kernel", ["int8", "float32"])
def test_extreme_descriptor_values_stay_exact(kernel):
    d = np.array([[255] * 128, [0] * 127 + [255], [128] * 128, [127] * 128], np.uint8)
    got = match_descriptors(d, d.copy(), ratio=0.99, kernel=kernel)
    assert np.array_equal(got, _reference(d, d.copy(), 0.99))


def test_auto_multiplies_in_int8_only_with_vnni_or_amx():
    has = hasattr(torch, "_int_mm")
    assert not int8_products_fast(frozenset({"sse4_2", "avx", "avx2", "avx512f", "avx512bw"}))
    assert not int8_products_fast(frozenset())
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert int8_products_fast(frozenset({"avx2", flag})) == has
    with pytest.raises(ValueError, match="kernel"):
        match_descriptors(np.zeros((3, 128), np.uint8), np.zeros((3, 128), np.uint8), kernel="int4")


def test_feature_store_is_bounded_in_bytes(tmp_path):
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as f:
        for i in range(6):
            g = f.create_group(f"im{i}.jpg")
            g["keypoints"] = np.full((100, 2), i, np.float32)
            g["scales"] = np.ones(100, np.float32)
            g["descriptors"] = np.full((100, 128), i, np.uint8)
            g.attrs["done"] = True
    one = 100 * (8 + 4 + 128)
    store = FeatureStore(path, max_bytes=3 * one)
    for i in range(6):
        assert store[f"im{i}.jpg"]["descriptors"][0, 0] == i
    assert store.bytes == 3 * one and list(store._cache) == ["im3.jpg", "im4.jpg", "im5.jpg"]
    store["im3.jpg"]                                     # used again: the least recent is now im4
    store["im0.jpg"]
    assert list(store._cache) == ["im5.jpg", "im3.jpg", "im0.jpg"]
    assert FeatureStore.of(store) is store and FeatureStore.of(path).path == path
