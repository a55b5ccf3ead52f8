"""Strecha et al.'s multi-view benchmark scenes (CVPR 2008: fountain-P11, Herz-Jesu-P8/P25,
castle-P19/P30, entry-P10) -> this project's dataset layout: real photographs whose camera poses
come from a laser-scanned reference, so the local-feature layer can be measured on real images.

    python -m datasets.strecha path/to/fountain-P11 --out datasets/strecha_fountain-P11

Input: one scene folder, as openMVG's SfM_quality_evaluation repository holds them:

    <scene>/images/0000.jpg                        the photographs (3072x2048, undistorted)
    <scene>/gt_dense_cameras/0000.jpg.camera       one camera file per image

(`.camera` files next to the images are found too.) A camera file has 9 lines:

    fx s cx / 0 fy cy / 0 0 1      K
    k1 k2 k3                        radial distortion (0 0 0: the images are undistorted)
    3 lines                         R, camera-to-world (its columns are the camera axes in the world)
    cx cy cz                        the camera centre in the world (metres)
    width height

So the COLMAP pose (x_cam = R x_world + t) is R = R_fileᵀ, t = -R c. Checked on the real files:
matches between neighbouring photographs lie within 1 px of the epipolar lines under this
reading, and hundreds of pixels off under the transposed one (tests/test_strecha.py checks the
projection on a fixture).

Split: every `query_every`-th image (starting at `query_every // 2`, so queries have database
neighbours on both sides) is a day query with ground truth; the others are the database.

Output (mmcrossvit/layout.py's layout, by its `write_metadata`):

    images/images_upright/db/0000.jpg                   database images (symlinks or copies)
    images/images_upright/query/day/<scene>/0002.jpg    queries
    3D-models/, reference/, queries/, ground_truth/     poses and PINHOLE intrinsics
    strecha.json                                        what was converted ("complete" last)
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from datasets.converted import add_scene_args, image_size, prepare_out, scene_and_out
from mmcrossvit.colmap_io import CameraSpec, read_text
from mmcrossvit.errors import DataError
from mmcrossvit.geometry import Pose
from mmcrossvit.layout import GT_POSES, IMAGES, NVM, REFERENCE, Dataset, write_metadata
from mmcrossvit.storage import write_json

SCENES = ("fountain-P11", "Herz-Jesus-P8", "Herz-Jesus-P25", "castle-P19", "castle-P30", "entry-P10")
IMAGE_EXT = (".jpg", ".jpeg", ".png")
SUMMARY = "strecha.json"
OWNED = (IMAGES, Path("queries"), NVM.parent, REFERENCE, GT_POSES.parent, Path(SUMMARY))
QUERY_EVERY = 4
CONVERTER_VERSION = 1


def read_camera(path: str | Path) -> tuple[CameraSpec, Pose]:
    """A Strecha `.camera` file -> (PINHOLE camera, COLMAP world-to-camera pose). Raises DataError
    naming the file and line of anything malformed."""
    path = Path(path)
    rows = []
    for i, raw in enumerate(read_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            v = [float(t) for t in raw.split()]
        except ValueError:
            raise DataError(path, f"expected numbers, got {raw.strip()!r}", i) from None
        if not all(math.isfinite(x) for x in v):
            raise DataError(path, f"non-finite value in {raw.strip()!r}", i)
        rows.append((i, v))
    want = [3, 3, 3, 3, 3, 3, 3, 3, 2]
    what = ["K row 1", "K row 2", "K row 3", "distortion k1 k2 k3", "R row 1", "R row 2", "R row 3",
            "camera centre", "width height"]
    if len(rows) != len(want):
        raise DataError(path, f"expected 9 lines (K, distortion, R, centre, size), got {len(rows)}")
    for (i, v), n, w in zip(rows, want, what):
        if len(v) != n:
            raise DataError(path, f"expected {n} numbers ({w}), got {len(v)}", i)
    K = np.array([v for _, v in rows[0:3]])
    if abs(K[0, 1]) > 1e-9 or np.abs(K[2] - [0, 0, 1]).max() > 1e-9 or abs(K[1, 0]) > 1e-9:
        raise DataError(path, f"expected K = [fx 0 cx; 0 fy cy; 0 0 1] (no skew), got {K.tolist()}", rows[0][0])
    if np.abs(rows[3][1]).max() > 0:
        raise DataError(path, f"non-zero distortion {rows[3][1]}: expected undistorted images (0 0 0)", rows[3][0])
    R_c2w = np.array([v for _, v in rows[4:7]])
    if np.abs(R_c2w @ R_c2w.T - np.eye(3)).max() > 1e-3 or np.linalg.det(R_c2w) < 0:
        raise DataError(path, "R is not a rotation matrix", rows[4][0])
    w, h = rows[8][1]
    if w <= 0 or h <= 0 or w != int(w) or h != int(h):
        raise DataError(path, f"expected a positive integer width and height, got {rows[8][1]}", rows[8][0])
    u, _, vt = np.linalg.svd(R_c2w)  # the files carry 6 digits: re-orthonormalise
    cam = CameraSpec("PINHOLE", int(w), int(h), (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    return cam, Pose.from_center((u @ vt).T, np.array(rows[7][1]))


def camera_file(scene: Path, image: str) -> Path:
    for d in (scene / "gt_dense_cameras", scene / "images", scene):
        if (d / f"{image}.camera").is_file():
            return d / f"{image}.camera"
    raise DataError(scene / "gt_dense_cameras" / f"{image}.camera", f"no camera file for image {image!r}")


def split(images: list[str], query_every: int) -> tuple[list[str], list[str]]:
    """(database, queries): every query_every-th image from query_every // 2 is a query."""
    if query_every < 2:
        raise ValueError(f"--query-every must be >= 2 (the database needs images), got {query_every}")
    q = [n for i, n in enumerate(images) if i % query_every == query_every // 2]
    return [n for n in images if n not in q], q


def convert(scene_dir: str | Path, out_dir: str | Path, link: bool = True, scene: str | None = None,
            query_every: int = QUERY_EVERY, overwrite: bool = False) -> dict:
    """Convert one scene folder into `out_dir` (see the module docstring); returns the summary also
    written to <out_dir>/strecha.json."""
    t0 = time.perf_counter()
    src, out = Path(scene_dir), Path(out_dir)
    img_dir = src / "images" if (src / "images").is_dir() else src
    if not src.is_dir():
        raise DataError(src, "scene folder not found")
    scene = scene or src.resolve().name
    if not scene or "/" in scene or scene in (".", ".."):
        raise ValueError(f"invalid scene name {scene!r}")
    images = sorted(p.name for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXT)
    if len(images) < 3:
        raise DataError(img_dir, f"expected at least 3 images ({', '.join(IMAGE_EXT)}), found {len(images)}")
    cams = {n: read_camera(camera_file(src, n)) for n in images}
    for n, (c, _) in cams.items():
        size = image_size(img_dir / n)
        if size != (c.width, c.height):
            raise DataError(camera_file(src, n), f"image {n} is {size[0]}x{size[1]}, the camera says "
                                                 f"{c.width}x{c.height}", 9)
    db_names, q_names = split(images, query_every)
    prepare_out(out, src, overwrite, SUMMARY, OWNED, "Strecha scene")
    write_json(out / SUMMARY, {"converter": "datasets.strecha", "scene": scene, "complete": False})
    db, queries = {}, {}
    for n in images:
        name = f"db/{n}" if n in db_names else f"query/day/{scene}/{n}"
        dst = out / IMAGES / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if link:
            os.symlink((img_dir / n).resolve(), dst)
        else:
            shutil.copy2(img_dir / n, dst)
        (db if n in db_names else queries)[name] = cams[n]
    write_metadata(out, db, queries)
    centres = np.array([p.center for _, p in cams.values()])
    summary = {"converter": "datasets.strecha", "version": CONVERTER_VERSION, "complete": True, "scene": scene,
               "source": str(src.resolve()), "images": "symlinks" if link else "copies",
               "query_every": query_every, "database_images": len(db), "queries": len(queries),
               "query_images": q_names,
               "extent_m": float(np.ptp(centres, axis=0).max()),
               "seconds": round(time.perf_counter() - t0, 1)}
    write_json(out / SUMMARY, summary)  # last: "complete": true
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m datasets.strecha",
        description="Convert one scene of Strecha et al.'s benchmark (images/ and gt_dense_cameras/*.camera, "
                    "as in openMVG's SfM_quality_evaluation) into this project's layout: every --query-every-th "
                    "photograph is a day query with its ground-truth pose, the others the database. Then: "
                    "python preprocessing.py --dataset <out> --preset paper and python localize.py --dataset "
                    "<out> --preset paper --retrieval oracle (benchmarks/real_scenes.py runs every scene).")
    add_scene_args(ap, "strecha", "castle-P30", SCENES)
    ap.add_argument("--query-every", type=int, default=QUERY_EVERY, metavar="K",
                    help=f"every K-th image is a query (default {QUERY_EVERY})")
    args = ap.parse_args(argv)
    scene, out = scene_and_out(args, "strecha")
    try:
        s = convert(args.scene_dir, out, link=not args.copy, scene=scene, query_every=args.query_every,
                    overwrite=args.overwrite)
        check = Dataset(out).validate()
    except (DataError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out}: {check['database_images']} database images, {check['queries']} queries with ground truth "
          f"(camera centres span {s['extent_m']:.1f} m; {s['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
