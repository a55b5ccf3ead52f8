"""hloc interop: the exported features follow hloc's conventions and match as ours do."""
from __future__ import annotations

import h5py
import numpy as np

from mmcrossvit.colmap_io import read_pairs
from mmcrossvit.features import match_descriptors, read_features
from mmcrossvit.interop import export_hloc


def test_exported_features_follow_hloc_and_give_the_same_matches(tiny_run, tmp_path):
    ds, run = tiny_run
    out = tmp_path / "features-hloc.h5"
    n = export_hloc(run.features, out, ds / "images" / "images_upright")
    a, b = next(iter(read_pairs(run.pairs_db)))
    with h5py.File(out, "r") as f:
        assert len(f.keys()) > 0 and n >= 2
        ga, gb = f[a], f[b]
        ours = read_features(run.features, a)
        assert np.allclose(ga["keypoints"][()], ours["keypoints"] - 0.5)  # hloc: pixel centre at 0
        da, db = ga["descriptors"][()], gb["descriptors"][()]
        assert da.shape == (128, len(ours["keypoints"])) and da.dtype == np.float32
        assert np.allclose(np.linalg.norm(da, axis=0), 1, atol=1e-5)
        w, h = ga["image_size"][()]
        assert w > h > 0
    # hloc's nearest-neighbour matcher (mutual, ratio on L2 distances) on the exported descriptors
    sim = da.T @ db
    top2 = np.argsort(-sim, axis=1)[:, :2]
    d = np.sqrt(np.clip(2 - 2 * np.take_along_axis(sim, top2, 1), 0, None))
    ok = (d[:, 0] < 0.8 * d[:, 1]) & (sim.argmax(0)[top2[:, 0]] == np.arange(len(sim)))
    theirs = np.stack([np.nonzero(ok)[0], top2[ok, 0]], 1)
    mine = match_descriptors(read_features(run.features, a)["descriptors"], read_features(run.features, b)["descriptors"])
    assert len(mine) > 10
    assert {tuple(x) for x in mine} == {tuple(x) for x in theirs}
