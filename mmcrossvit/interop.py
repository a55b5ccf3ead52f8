"""The project's features as hloc reads them: one call converts outputs/<name>/features.h5.

    python -m mmcrossvit.interop outputs/<name>/features.h5 outputs/<name>/features-hloc.h5 \
        --images datasets/<name>/images_upright

hloc's feature files differ from ours in three ways, all converted here:
  keypoints    hloc puts the top-left pixel's centre at (0, 0), COLMAP (ours) at (0.5, 0.5)
  descriptors  hloc stores them (D, N), float32, L2-normalised (its NN matcher takes dot products);
               ours are COLMAP's (N, 128) uint8
  image_size   hloc records each image's (width, height)
plus `scores` (ones: SIFT has no detection score hloc would use) and `scales`. The other files
need no conversion: pairs files are hloc's "name0 name1" lines, the SfM model is a COLMAP text
model (pycolmap.Reconstruction reads it), and the results file is the benchmark's format.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .features import failed_images, feature_names, read_features
from .storage import atomic_path, h5_file


def hloc_features(feats: dict, width: int, height: int) -> dict[str, np.ndarray]:
    """One image's features in hloc's convention (see the module docstring)."""
    d = feats["descriptors"].astype(np.float32)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    n = len(feats["keypoints"])
    return {"keypoints": (feats["keypoints"] - 0.5).astype(np.float32), "descriptors": np.ascontiguousarray(d.T),
            "scores": np.ones(n, np.float32), "scales": feats["scales"].astype(np.float32),
            "image_size": np.array([width, height], np.int64)}


def export_hloc(features: Path, out: Path, image_dir: Path, names: list[str] | None = None) -> int:
    """Write `features` (ours) as an hloc features file `out`; returns the number of images."""
    if names is None:  # every image with features, less those recorded as unreadable
        names = sorted(feature_names(features) - set(failed_images(features)))
    with atomic_path(Path(out)) as tmp, h5_file(tmp, "w") as f:
        for name in tqdm(names, desc="hloc features", unit="img"):
            with Image.open(Path(image_dir) / name) as im:  # reads the header only
                w, h = im.size
            g = f.create_group(name)
            for k, v in hloc_features(read_features(features, name), w, h).items():
                g.create_dataset(k, data=v)
    return len(names)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features", type=Path, help="the project's features file (outputs/<name>/features.h5)")
    p.add_argument("out", type=Path, help="the hloc features file to write")
    p.add_argument("--images", type=Path, required=True, help="the dataset's images folder (for image sizes)")
    a = p.parse_args()
    print(f"{export_hloc(a.features, a.out, a.images)} images -> {a.out}")
