"""Step 2: 3D spatial tokens ("RoPE embeddings") for every database image.

Reads the triangulated model outputs/<name>/sfm and writes DataBase/<name>/spatial_tokens.safetensors:
  tokens  (N, 1 + G*G, D) float16   camera token, then G x G patch tokens row-major
  valid   (N, G*G) uint8             1 where the patch has a real 3D point (always 1 for rays)
  points  (N, G*G, 3) float32        the world point behind each patch (before encoding)
and in its metadata the image names (JSON) and every encoding parameter. The formula is in
mmcrossvit/spatial_tokens.py. A PNG shows the patch grid of one image coloured by 3D position.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import records
from .. import spatial_tokens as st
from ..colmap_model import read_colmap_cameras_poses, read_model_observations
from ..errors import DataError
from ..paths import RunLayout
from ..storage import is_complete, write_safetensors

STEP = "tokens"
S = argparse.SUPPRESS


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("spatial tokens")
    g.add_argument("--mode", choices=["rays", "sfm"], default=S,
                   help="3D point per patch: fixed-depth ray (authors) or observed SfM points")
    g.add_argument("--grid", type=int, default=S, help="patch grid size G (teacher branch 1 is G x G)")
    g.add_argument("--dim", type=int, default=S, help="token dimension D (teacher branch-1 width)")
    g.add_argument("--ray-depth", type=float, default=S,
                   help="depth of the ray points in scene units (None: median depth of all SfM points)")
    g.add_argument("--pos-ratio", type=float, default=S, help="highest/lowest position frequency")
    g.add_argument("--rot-ratio", type=float, default=S, help="highest/lowest rotation frequency")
    p.add_argument("--output", type=Path, default=None,
                   help="output file (default DataBase/<name>/spatial_tokens.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="recompute even if the output exists")


def main(run: RunLayout, cfg: argparse.Namespace) -> Path:
    out = cfg.output or run.tokens
    if not is_complete(run.sfm_points):
        raise DataError(run.sfm, "no SfM model; run preprocessing.py first")
    settings = {k: getattr(cfg, k) for k in ("mode", "grid", "dim", "ray_depth", "pos_ratio", "rot_ratio")}
    inputs = {"sfm": records.upstream(run.record("sfm"), run.sfm_points),
              "spatial_db": records.upstream(run.record("spatial_db"), run.spatial_db)}
    key = records.make_key(settings, inputs)
    if records.up_to_date(run.record(STEP), key, is_complete(out), cfg.overwrite, str(out), settings, inputs):
        return out
    cams, poses = read_colmap_cameras_poses(run.sfm)
    obs, pids, xyz = read_model_observations(run.sfm)
    from ..spatial_db import SpatialDB
    names = [str(n) for n in SpatialDB.load(run.spatial_db).names] if is_complete(run.spatial_db) else sorted(poses)
    order = np.argsort(pids)
    point_index = lambda ids: order[np.searchsorted(pids, ids, sorter=order)]  # noqa: E731

    norm = st.Normaliser.from_centres(np.stack([poses[n].center for n in names]))
    depth = cfg.ray_depth
    if depth is None:  # a scene scale that works for any unit: the median depth of observed points
        depths = [np.median(poses[n].transform(xyz[point_index(obs[n][1])])[:, 2]) for n in names if len(obs.get(n, ((), ()))[1])]
        depth = float(np.median(depths)) if depths else 10.0
    enc = st.Encoding(cfg.dim, cfg.pos_ratio, cfg.rot_ratio)
    G = cfg.grid
    tokens = np.zeros((len(names), 1 + G * G, cfg.dim), dtype=np.float16)
    valid = np.zeros((len(names), G * G), dtype=np.uint8)
    points = np.zeros((len(names), G * G, 3), dtype=np.float32)
    for i, n in enumerate(tqdm(names, desc="spatial tokens", unit="img")):
        kp, ids = obs.get(n, (np.zeros((0, 2)), np.zeros(0, np.int64)))
        t, v, p = st.image_tokens(cams[n], poses[n], G, norm, enc, cfg.mode, depth,
                                  observations=(kp, xyz[point_index(ids)]) if len(ids) else None)
        tokens[i], valid[i], points[i] = t, v, p
    params = {"mode": cfg.mode, "grid": G, "dim": cfg.dim, "ray_depth": depth, "mu": norm.mu.tolist(),
              "s": norm.s, "pos_ratio": cfg.pos_ratio, "rot_ratio": cfg.rot_ratio,
              "n_pos": enc.n_pos, "n_rot": enc.n_rot}
    write_safetensors(out, {"tokens": torch.from_numpy(tokens), "valid": torch.from_numpy(valid),
                            "points": torch.from_numpy(points)},
                      metadata={"names": json.dumps(names), "params": json.dumps(params)})
    print(f"{len(names)} images, {G}x{G} patches, D={cfg.dim}, mode={cfg.mode}: "
          f"{valid.mean() * 100:.1f}% of patches have 3D points -> {out}")
    records.write(run.record(STEP), key, settings, inputs)
    k = int(np.argmax(valid.sum(1)))  # the sample with the most observed patches
    _plot_sample(run, names[k], points[k], valid[k], G, norm, out.with_name(out.stem + "_sample.png"))
    return out


def _plot_sample(run: RunLayout, name, pts, valid, G, norm, png: Path) -> None:
    """The sample image beside its patch grid coloured by normalised 3D position (grey: no 3D)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..layout import Dataset
    from ..storage import atomic_path
    p = norm(pts.astype(np.float64))
    rgb = (p - p.min(0)) / np.maximum(np.ptp(p, 0), 1e-9)
    rgb[valid == 0] = 0.5
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    img_path = Dataset(run.dataset).image_path(name)
    if img_path.exists():
        ax[0].imshow(plt.imread(img_path))
    ax[0].set_title(name, fontsize=8)
    ax[1].imshow(rgb.reshape(G, G, 3), interpolation="nearest")
    for (r, c) in zip(*np.nonzero(valid.reshape(G, G) == 0)):
        ax[1].text(c, r, "x", ha="center", va="center", fontsize=6, color="k")
    ax[1].set_title("patch 3D position as RGB (x: no SfM point)", fontsize=8)
    for a in ax:
        a.axis("off")
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
