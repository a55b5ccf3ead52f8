"""Cambridge Landmarks (PoseNet; Kendall et al., ICCV 2015) -> this project's dataset layout,
with the public ground truth of its test images, for local evaluation.

    python -m datasets.cambridge path/to/KingsCollege --out datasets/cambridge_KingsCollege

Input: one scene folder of the download (KingsCollege, OldHospital, ShopFacade, StMarysChurch,
GreatCourt), as unzipped:

    <scene>/dataset_train.txt     3 header lines, then "seqN/frameXXXXX.png X Y Z W P Q R"
    <scene>/dataset_test.txt      the same for the test images
    <scene>/reconstruction.nvm    VisualSFM model of the scene (focal lengths, radial distortion)
    <scene>/seqN/frameXXXXX.png   the images (1920x1080)

Pose convention of the lists (checked, see the README's Cambridge section): X Y Z is the camera
centre in world coordinates and W P Q R = (qw, qx, qy, qz) is the rotation *world-to-camera*,
exactly as in an NVM camera line. So the COLMAP pose (x_cam = R x_world + t) is R = R(q),
t = -R c. (DSAC*'s and ACE's setup_cambridge.py read the lists this way; with it, published list
lines put the camera ~1.8 m above the ground with its image y axis pointing down the world z
axis, see tests/test_cambridge.py. `convert` also measures how far each list pose is from the
NVM's pose of the same image, read with the NVM convention, and reports it as
`nvm_pose_agreement` in cambridge.json; the command line warns when the median is not ~0.)

Output (the layout of mmcrossvit/layout.py, written by its `write_metadata`):

    images/images_upright/db/seq1_frame00001.png                   training images = database
    images/images_upright/query/day/<scene>/seq2_frame00001.png    test images = day queries
    3D-models/aachen_cvpr2018_db.nvm + database_intrinsics.txt     database poses + intrinsics
    reference/                                                     the same as a COLMAP text model
    queries/day_time_queries_with_intrinsics.txt                   query intrinsics
    ground_truth/query_poses.txt                                   world-to-camera query poses
    names.csv                                                      dataset name -> original path
    cambridge.json                                                 what was converted ("complete" last)

Images are symbolic links to the originals (absolute paths), or copies with `link=False`
(`--copy`). Cambridge names repeat across sequences (seq1/frame00001.png, seq2/frame00001.png),
and the layout requires unique query basenames (results files are keyed by basename), so each
image is renamed by joining its path's parts with '_'.

Intrinsics: SIMPLE_RADIAL (f, w/2, h/2, k) per image, from the NVM camera of the same image (the
NVM names the images .jpg where the lists say .png: names are compared without the extension).
f is the NVM focal length, given at the NVM's image resolution (`nvm_size`, 1920x1080 for
Cambridge) and scaled to each image's actual size (read from the file); k = -r for the NVM's radial
distortion r (VisualSFM distorts the measured point, COLMAP the ideal one: -r is the first-order
inverse, as COLMAP's own NVM export writes it). An image without an NVM camera gets the median
focal length and distortion of the training images' NVM cameras; names.csv says which
("nvm" or "median") for every image.

Outliers: database images whose camera translation has a component beyond `max_translation`
(GreatCourt's dataset_train.txt has a camera at 3e9 m) are left out of the database, as DSAC*'s
set-up does; queries are all kept (a bad ground truth then counts as a failure, never silently).
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from datasets.converted import add_scene_args, image_size, prepare_out, scene_and_out
from mmcrossvit.colmap_io import CameraSpec, check_name, read_nvm, read_text
from mmcrossvit.errors import DataError
from mmcrossvit.geometry import Pose, pose_error, qvec_to_rotmat
from mmcrossvit.layout import GT_POSES, IMAGES, NVM, REFERENCE, Dataset, write_metadata
from mmcrossvit.storage import atomic_path, write_json

SCENES = ("KingsCollege", "OldHospital", "ShopFacade", "StMarysChurch", "GreatCourt")
TRAIN_LIST, TEST_LIST, SCENE_NVM = "dataset_train.txt", "dataset_test.txt", "reconstruction.nvm"
HEADER_LINES = 3
NVM_SIZE = (1920, 1080)  # the resolution Cambridge's NVM focal lengths refer to
MAX_TRANSLATION = 1e4  # DSAC*'s outlier test on |t| (metres)
NAMES_CSV = "names.csv"
SUMMARY = "cambridge.json"
# what the converter writes into the output folder (removed first with overwrite)
OWNED = (IMAGES, Path("queries"), NVM.parent, REFERENCE, GT_POSES.parent, Path(NAMES_CSV), Path(SUMMARY))
CONVERTER_VERSION = 1


@dataclass(frozen=True)
class Entry:
    """One image of a Cambridge list file."""
    original: str  # path relative to the scene folder, as listed
    pose: Pose  # world-to-camera (COLMAP convention)
    line: int  # 1-based line of the list file


def pose_from_cambridge(xyz, wpqr) -> Pose:
    """COLMAP world-to-camera pose of a Cambridge list line's camera centre X Y Z and
    world-to-camera quaternion W P Q R (normalised here)."""
    q = np.asarray(wpqr, dtype=np.float64)
    return Pose.from_center(qvec_to_rotmat(q / np.linalg.norm(q)), np.asarray(xyz, dtype=np.float64))


def _parse_line(path: Path, lineno: int, tokens: list[str]) -> Entry:
    if len(tokens) != 8:
        raise DataError(path, f"expected '<image> X Y Z W P Q R' (8 fields), got {len(tokens)} fields", lineno)
    name = check_name(path, lineno, tokens[0].replace("\\", "/"))
    try:
        v = [float(t) for t in tokens[1:]]
    except ValueError:
        raise DataError(path, f"expected 7 numbers after the image name, got {' '.join(tokens[1:])!r}",
                        lineno) from None
    if not all(math.isfinite(x) for x in v):
        raise DataError(path, f"non-finite value in {' '.join(tokens[1:])!r}", lineno)
    if np.linalg.norm(v[3:]) < 1e-8:
        raise DataError(path, "zero quaternion", lineno)
    return Entry(str(PurePosixPath(name)), pose_from_cambridge(v[:3], v[3:]), lineno)


def read_list(path: str | Path) -> list[Entry]:
    """The images of a dataset_train.txt / dataset_test.txt: 3 header lines, then one image per
    line. Raises DataError naming the file and line of a malformed line, of a data line where
    the header should be, and of a name listed twice."""
    path = Path(path)
    lines = read_text(path).splitlines()
    for i, raw in enumerate(lines[:HEADER_LINES], start=1):
        try:
            _parse_line(path, i, raw.split())
        except DataError:
            continue
        raise DataError(path, f"expected {HEADER_LINES} header lines before the images, but line {i} is an "
                              f"image line (a list without its header?)", i)
    out, seen = [], {}
    for i, raw in enumerate(lines[HEADER_LINES:], start=HEADER_LINES + 1):
        tok = raw.split()
        if not tok:
            continue
        e = _parse_line(path, i, tok)
        if e.original in seen:
            raise DataError(path, f"image {e.original!r} is listed twice (first on line {seen[e.original]})", i)
        seen[e.original] = i
        out.append(e)
    if not out:
        raise DataError(path, "no images listed")
    return out


def flat_name(original: str) -> str:
    """seq1/frame00001.png -> seq1_frame00001.png (unique across sequences)."""
    return "_".join(PurePosixPath(original).parts)


def dataset_names(entries: list[Entry], split: str, scene: str) -> list[str]:
    prefix = "db" if split == "train" else f"query/day/{scene}"
    return [f"{prefix}/{flat_name(e.original)}" for e in entries]


def _key(name: str) -> str:
    """Image identity across the lists and the NVM: the path without extension."""
    return str(PurePosixPath(name.replace("\\", "/")).with_suffix(""))  # PurePosixPath drops "./"


def nvm_camera(focal: float, radial: float, size: tuple[int, int], nvm_size: tuple[int, int]) -> CameraSpec:
    """SIMPLE_RADIAL camera of an image of `size` from an NVM focal length (at `nvm_size`) and
    radial distortion; principal point at the image centre."""
    w, h = size
    s = w / nvm_size[0]
    return CameraSpec("SIMPLE_RADIAL", w, h, (float(focal) * s, w / 2.0, h / 2.0, 0.0 - float(radial)))


def convert(scene_dir: str | Path, out_dir: str | Path, link: bool = True, scene: str | None = None,
            nvm_size: tuple[int, int] = NVM_SIZE, max_translation: float = MAX_TRANSLATION,
            overwrite: bool = False, progress: bool = True) -> dict:
    """Convert one Cambridge Landmarks scene folder into `out_dir` (see the module docstring);
    returns the summary also written to <out_dir>/cambridge.json. Bad input raises DataError
    naming the file and line; an existing output folder FileExistsError unless `overwrite`."""
    t0 = time.perf_counter()
    src, out = Path(scene_dir), Path(out_dir)
    if not src.is_dir():
        raise DataError(src, "scene folder not found")
    scene = scene or src.resolve().name
    if not scene or "/" in scene or scene in (".", ".."):
        raise ValueError(f"invalid scene name {scene!r}")
    train = read_list(src / TRAIN_LIST)
    test = read_list(src / TEST_LIST)
    train_keys = {_key(e.original): e for e in train}
    for e in test:
        if _key(e.original) in train_keys:
            raise DataError(src / TEST_LIST, f"image {e.original!r} is also a training image "
                                             f"({TRAIN_LIST} line {train_keys[_key(e.original)].line})", e.line)

    # NVM cameras, by image identity; the NVM's poses are compared with the lists' below
    nvm_path = src / SCENE_NVM
    if progress:
        print(f"reading {nvm_path} ...", flush=True)
    model = read_nvm(nvm_path, skip_points=True)
    nvm: dict[str, tuple[float, float, Pose]] = {}
    for c in model.cameras:
        k = _key(c.name)
        if k in nvm:
            raise DataError(nvm_path, f"two cameras for the image {k!r} (names are compared without extension)")
        if not (math.isfinite(c.focal) and c.focal > 0):
            raise DataError(nvm_path, f"camera {c.name!r} has focal length {c.focal}; expected a positive number")
        nvm[k] = (c.focal, c.radial, c.pose)
    train_cams = [nvm[_key(e.original)] for e in train if _key(e.original) in nvm]
    if not train_cams:
        raise DataError(nvm_path, f"none of the {len(train)} images of {TRAIN_LIST} has a camera here "
                                  f"(names compared without extension, e.g. {train[0].original!r})")
    median_focal = float(np.median([c[0] for c in train_cams]))
    median_radial = float(np.median([c[1] for c in train_cams]))

    prepare_out(out, src, overwrite, SUMMARY, OWNED, "Cambridge scene")
    # marks the folder as this converter's before anything else is written there
    write_json(out / SUMMARY, {"converter": "datasets.cambridge", "scene": scene, "complete": False})
    db, queries, rows = {}, {}, []
    skipped, agree = [], []
    jobs = [("train", e, n) for e, n in zip(train, dataset_names(train, "train", scene))]
    jobs += [("test", e, n) for e, n in zip(test, dataset_names(test, "test", scene))]
    seen: dict[str, tuple[str, Entry]] = {}
    for split, e, name in tqdm(jobs, desc=f"{scene}: {'linking' if link else 'copying'} images",
                               disable=not progress, unit="img"):
        list_file = src / (TRAIN_LIST if split == "train" else TEST_LIST)
        if name in seen:  # e.g. a_b/c.png and a/b_c.png
            s0, e0 = seen[name]
            raise DataError(list_file, f"{e.original!r} and {e0.original!r} ({s0} list line {e0.line}) "
                                       f"would both become {name!r}", e.line)
        seen[name] = (split, e)
        if split == "train" and np.abs(e.pose.t).max() > max_translation:
            skipped.append({"image": e.original, "line": e.line, "t": e.pose.t.tolist()})
            continue
        img = src / e.original
        if not img.is_file():
            raise DataError(list_file, f"image {e.original!r} not found at {img}", e.line)
        try:
            size = image_size(img)
        except OSError as err:
            raise DataError(list_file, f"cannot read image {e.original!r}: {err}", e.line) from None
        sx, sy = size[0] / nvm_size[0], size[1] / nvm_size[1]
        if abs(sx - sy) > 0.01 * max(sx, sy):
            raise DataError(list_file, f"image {e.original!r} is {size[0]}x{size[1]}, not a scaled "
                                       f"{nvm_size[0]}x{nvm_size[1]} (the NVM's resolution; see --nvm-size)", e.line)
        k = _key(e.original)
        if k in nvm:
            focal, radial, nvm_pose = nvm[k]
            agree.append(pose_error(nvm_pose, e.pose))
            source = "nvm"
        else:
            focal, radial, source = median_focal, median_radial, "median"
        cam = nvm_camera(focal, radial, size, nvm_size)
        dst = out / IMAGES / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if link:
            os.symlink(img.resolve(), dst)
        else:
            shutil.copy2(img, dst)
        (db if split == "train" else queries)[name] = (cam, e.pose)
        rows.append((name, e.original, split, source))
    if not db:
        raise DataError(src / TRAIN_LIST, "no database image left (all beyond --max-translation?)")

    write_metadata(out, db, queries)
    with atomic_path(out / NAMES_CSV) as tmp:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["name", "original", "split", "intrinsics"])
        w.writerows(rows)
        tmp.write_text(buf.getvalue())
    a = np.array(agree, dtype=np.float64).reshape(-1, 2)
    summary = {
        "converter": "datasets.cambridge", "version": CONVERTER_VERSION, "complete": True, "scene": scene,
        "source": str(src.resolve()), "images": "symlinks" if link else "copies",
        "nvm_size": list(nvm_size), "database_images": len(db), "queries": len(queries),
        "intrinsics_from_nvm": {"database": sum(r[3] == "nvm" for r in rows if r[2] == "train"),
                                "queries": sum(r[3] == "nvm" for r in rows if r[2] == "test")},
        "intrinsics_median": {"focal_at_nvm_size": median_focal, "nvm_radial": median_radial},
        "skipped_database_outliers": skipped,
        # list pose vs the NVM's pose of the same image: ~0 when the convention is right
        "nvm_pose_agreement": {"images": len(a),
                               "median_m": float(np.median(a[:, 0])) if len(a) else None,
                               "max_m": float(a[:, 0].max()) if len(a) else None,
                               "median_deg": float(np.median(a[:, 1])) if len(a) else None,
                               "max_deg": float(a[:, 1].max()) if len(a) else None},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / SUMMARY, summary)  # last: "complete": true
    return summary


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1920x1080, not {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size, not {text!r}")
    return w, h


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m datasets.cambridge",
        description="Convert one Cambridge Landmarks scene (dataset_train.txt, dataset_test.txt, "
                    "reconstruction.nvm, seq*/ images) into this project's dataset layout: training images "
                    "= database (poses + NVM intrinsics), test images = day queries with ground-truth poses "
                    "(world-to-camera), images as symlinks named <seq>_<frame>.png, names.csv mapping them "
                    "back. Then: make pipeline DATASET=<out> PRESET=paper; evaluate.py prints the recall "
                    "and median errors.")
    add_scene_args(ap, "cambridge", "KingsCollege", SCENES)
    ap.add_argument("--nvm-size", type=_size, default=NVM_SIZE, metavar="WxH",
                    help="image resolution the NVM's focal lengths refer to (default: 1920x1080, Cambridge's)")
    ap.add_argument("--max-translation", type=float, default=MAX_TRANSLATION, metavar="M",
                    help="leave out database images whose camera translation has a component beyond M "
                         f"(outlier poses; default: {MAX_TRANSLATION:g}, DSAC*'s)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    scene, out = scene_and_out(args, "cambridge")
    try:
        s = convert(args.scene_dir, out, link=not args.copy, scene=scene, nvm_size=args.nvm_size,
                    max_translation=args.max_translation, overwrite=args.overwrite, progress=not args.quiet)
        check = Dataset(out).validate()
    except (DataError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    agree = s["nvm_pose_agreement"]
    for sk in s["skipped_database_outliers"]:
        print(f"warning: left out database image {sk['image']} ({TRAIN_LIST} line {sk['line']}): "
              f"translation {np.round(sk['t'], 1).tolist()}", file=sys.stderr)
    if agree["images"] and (agree["median_m"] > 0.01 or agree["median_deg"] > 0.1):
        print(f"warning: the lists' poses differ from the NVM's (median {agree['median_m']:.3g} m, "
              f"{agree['median_deg']:.3g} deg over {agree['images']} images): check the pose convention",
              file=sys.stderr)
    print(f"{out}: {check['database_images']} database images, {check['queries']} queries "
          f"({s['intrinsics_from_nvm']['queries']} with NVM intrinsics, the rest the training median), "
          f"ground truth for {check['ground_truth']}; list vs NVM poses: median "
          f"{agree['median_m']} m, {agree['median_deg']} deg ({s['seconds']} s)")
    print(f"next: make pipeline DATASET={out} NAME={scene} PRESET=paper")
    return 0


if __name__ == "__main__":
    sys.exit(main())
