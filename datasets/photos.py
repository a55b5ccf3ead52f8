"""A folder of one's own photographs -> this project's dataset layout, with no poses and no
intrinsics given: what `make map IMAGES=dir NAME=x` runs first (then the pipeline).

    python -m datasets.photos map path/to/photos --out datasets/mymap          # a map
    python -m datasets.photos queries path/to/new --dataset datasets/mymap     # new photos to localize

`map`:
1. Every file of the folder (recursively) is a photo, or is reported once with why it is not
   (not an image, empty, unreadable). Each photo's camera comes from its EXIF focal length where
   present, else from --default-focal-factor x its longer side (mmcrossvit/photos.py); the summary
   counts both.
2. Structure from motion without poses (mmcrossvit/sfm.py's `reconstruct`, the pipeline's
   `--mapper incremental`): the photos of that list and no others, SIFT with the preset's settings,
   every pair matched up to EXHAUSTIVE_MAX (50) photos, else each photo with its 20 nearest by the ImageNet
   encoder's descriptor, incremental mapping (seeded: the same photos give the same map). Photos it cannot register (another place, too little
   overlap) are listed and left out.
3. Hold-out: every --holdout-every-th registered photo (from the middle of the first K) becomes a
   query whose "ground truth" is its pose in that reconstruction; the rest are the database, whose
   poses and refined cameras go to reference/. The pipeline then triangulates its map from the
   database alone and localizes the held-out photos with the camera their file gives (EXIF or the
   guess), so its evaluation table shows at once whether the map and the retrieval work. These poses
   are the SfM's own, not an independent ground truth: they check consistency, in the SfM's units
   (metres only if the map is scaled; benchmarks' scenes align it first, studies/own_photos.py).

`queries`: the photos of a second folder become queries of a finished map (no poses needed, no
retraining): linked under query/<label>/, listed in queries/<label>_queries_with_intrinsics.txt.

Queries whose focal length is a guess are listed in queries/unknown_focal.txt; localization
refines their focal length with the pose (as hloc can). Every photo is linked (--copy: copied)
under a flat name (subfolders joined by '_', spaces as '_'), so that names stay unique basenames.
Writes photos.json (or queries/<label>.json): what was used, skipped and why.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from datasets.converted import prepare_out
from mmcrossvit import records
from mmcrossvit.colmap_io import CameraSpec, parse_camera, write_intrinsics
from mmcrossvit.errors import DataError
from mmcrossvit.layout import IMAGES, NVM, REFERENCE, GT_POSES, UNKNOWN_FOCAL, Dataset, write_metadata
from mmcrossvit.photos import DEFAULT_FOCAL_FACTOR, Photo, scan
from mmcrossvit.storage import read_json, write_json, write_text

SUMMARY = "photos.json"
SFM_DIR = Path("photos_sfm")  # the hold-out reconstruction: features.h5, database.db, model/ (a cache)
OWNED = (IMAGES, Path("queries"), NVM.parent, REFERENCE, GT_POSES.parent, Path(SUMMARY))
HOLDOUT_EVERY = 8
# Up to this many photos every pair is matched (1,225 pairs; ~0.7 s a pair at 1024 px on 2 cores, so
# ~15 min); above, each photo is matched with its RETRIEVAL_PAIRS nearest by the ImageNet encoder's
# descriptor (hloc's pairs from retrieval), which grows linearly.
EXHAUSTIVE_MAX = 50
RETRIEVAL_PAIRS = 20
HOLDOUT_LABEL = "holdout"
MIN_REGISTERED = 3  # a map needs two database photos and one held out


def flat_name(name: str) -> str:
    """A photo's name in the layout: its relative path as one file name (unique basenames)."""
    return re.sub(r"\s+", "_", name.replace("/", "_"))


def _place(photos: list[Photo], skipped: dict[str, str]) -> dict[str, Photo]:
    """Photos by flat name; a name two photos would share is reported for the second."""
    out: dict[str, Photo] = {}
    for p in photos:
        f = flat_name(p.name)
        if f in out:
            skipped[p.name] = f"its flat name {f!r} is taken by {out[f].name!r} (rename one of them)"
            continue
        out[f] = p
    return out


def _link(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(src.resolve(), dst)


def holdout(names: list[str], every: int) -> list[str]:
    """Every `every`-th name (sorted) from every // 2: held out as queries."""
    if every < 2:
        raise ValueError(f"--holdout-every must be >= 2 (the database needs photos), got {every}")
    return [n for i, n in enumerate(sorted(names)) if i % every == every // 2]


def _sfm(out: Path, placed: dict[str, Photo], preset: str, factor: float, seed: int):
    """Incremental SfM of every placed photo (reused while photos and settings are unchanged);
    the pycolmap model, with images named by their flat names."""
    import pycolmap

    from mmcrossvit import sfm
    from mmcrossvit.features import SiftConfig, extract_features
    from mmcrossvit.presets import step_settings
    work = out / SFM_DIR
    image_dir, model_dir = work / "images", work / "model"
    cfg = step_settings(preset, "preprocess")
    conf = SiftConfig.of(cfg)
    settings = {"sift": conf.to_json(), "ratio": cfg["ratio"], "default_focal_factor": factor, "seed": seed}
    inputs = {f: records.stamp(p.path) for f, p in sorted(placed.items())}
    key = records.make_key(settings, inputs)
    if records.matches(work / "record.json", key) and (model_dir / "images.txt").exists():
        print(f"SfM of {len(placed)} photos: up to date ({model_dir})")
        return pycolmap.Reconstruction(str(model_dir))
    for f, p in placed.items():
        _link(p.path, image_dir / f, copy=False)
    names = sorted(placed)
    pycolmap.set_random_seed(seed)
    sfm.colmap_logging(False)
    extract_features(image_dir, names, work / "features.h5", conf, workers=cfg["workers"], device=cfg["device"])
    pairs = retrieval_pairs(image_dir, names, work / "descriptors.h5", seed, cfg["device"]) \
        if len(names) > EXHAUSTIVE_MAX else None
    with sfm.storage_errors(work):
        rec, _ = sfm.reconstruct(image_dir, names, work / "features.h5", work / "work", model_dir,
                                 work / "pairs.txt", cfg["ratio"], cfg["match_workers"], cfg["device"], factor, seed,
                                 pairs)
    shutil.rmtree(work / "work", ignore_errors=True)
    records.write(work / "record.json", key, settings, inputs)
    return rec


def retrieval_pairs(image_dir: Path, names: list[str], cache: Path, seed: int, device: str,
                    k: int = RETRIEVAL_PAIRS) -> list[tuple[str, str]]:
    """Each photo with its k nearest by the ImageNet encoder's descriptor (untrained on the scene)."""
    from mmcrossvit.device import pick
    from mmcrossvit.retrieval import compute_descriptors, search, stack
    from mmcrossvit.train.weights import imagenet_student
    dev = pick(device)
    model, fingerprint = imagenet_student(seed)
    size = model.config["img_size"]
    desc = compute_descriptors(model.to(dev), {n: image_dir / n for n in names}, size, cache, fingerprint, 16, dev)
    D = stack(desc, names)
    idx, _ = search(D, D, min(k, len(names) - 1), index="exact", exclude_self=True)
    return sorted({tuple(sorted((names[i], names[j]))) for i, row in enumerate(idx) for j in row if j >= 0})


def convert(photos_dir: str | Path, out_dir: str | Path, preset: str = "demo", holdout_every: int = HOLDOUT_EVERY,
            default_focal_factor: float = DEFAULT_FOCAL_FACTOR, copy: bool = False, seed: int = 0,
            overwrite: bool = False, progress: bool = True) -> dict:
    """A map dataset from a folder of photos (see the module docstring); returns photos.json's summary."""
    from mmcrossvit.geometry import Pose
    t0 = time.perf_counter()
    src, out = Path(photos_dir), Path(out_dir)
    if not src.is_dir():
        raise DataError(src, "photo folder not found")
    holdout([], holdout_every)  # a bad --holdout-every fails before any work
    photos, skipped = scan(src, default_focal_factor, progress)
    placed = _place(photos, skipped)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if len(placed) < MIN_REGISTERED:
        raise DataError(src, f"{len(placed)} usable photo(s): a map needs at least {MIN_REGISTERED}")
    if out.exists() and (out / SUMMARY).is_file() and not overwrite:
        overwrite = True  # a map of photos is rebuilt in place: its SfM cache decides what is recomputed
    prepare_out(out, src, overwrite, SUMMARY, OWNED, "map of photos")
    write_json(out / SUMMARY, {"converter": "datasets.photos", "complete": False})
    rec = _sfm(out, placed, preset, default_focal_factor, seed)
    registered = {im.name: im for im in rec.images.values() if im.has_pose}
    unregistered = sorted(set(placed) - set(registered))
    for f in unregistered:
        print(f"not registered {placed[f].name}: structure from motion could not place it (another place, or "
              "too little overlap with the others); left out of the map")
    if len(registered) < MIN_REGISTERED:
        raise DataError(src, f"structure from motion registered {len(registered)} of {len(placed)} photos: a map "
                             f"needs at least {MIN_REGISTERED} (do the photos overlap?)")
    held = set(holdout(sorted(registered), holdout_every))
    devices = device_cameras([(placed[f], CameraSpec.from_pycolmap(rec.cameras[im.camera_id]))
                              for f, im in registered.items() if f not in held])
    db, queries, unknown = {}, {}, []
    for f, im in sorted(registered.items()):
        p = placed[f]
        T = im.cam_from_world()
        pose = Pose.from_rigid3d(T)
        if f in held:  # the camera a new photo would get (query_camera); the SfM pose to check against
            name = f"query/day/{HOLDOUT_LABEL}/{f}"
            cam, guessed = query_camera(p, devices)
            queries[name] = (cam, pose)
            if guessed:
                unknown.append(name)
        else:
            name = f"db/{f}"
            db[name] = (CameraSpec.from_pycolmap(rec.cameras[im.camera_id]), pose)
        _link(p.path, out / IMAGES / name, copy)
    write_metadata(out, db, queries)
    write_text(out / UNKNOWN_FOCAL, "".join(f"{n}\n" for n in sorted(unknown)))
    summary = {"converter": "datasets.photos", "complete": True, "source": str(src.resolve()), "preset": preset,
               "images": "copies" if copy else "symlinks", "photos": len(placed),
               "focal_from_exif": sum(p.focal_source == "exif" for p in placed.values()),
               "focal_guessed": sum(p.focal_source == "default" for p in placed.values()),
               "default_focal_factor": default_focal_factor,
               # the map's refined camera per EXIF device: queries taken with one of them get it
               "device_cameras": {k: c.line() for k, c in sorted(devices.items())},
               "registered": len(registered), "not_registered": [placed[f].name for f in unregistered],
               "skipped": skipped, "holdout_every": holdout_every, "database_images": len(db),
               "held_out": len(queries), "ground_truth": "the held-out photos' poses in the SfM of all photos",
               "sfm": {"points": rec.num_points3D(),
                       "mean_reprojection_error": float(rec.compute_mean_reprojection_error())},
               "seconds": round(time.perf_counter() - t0, 1)}
    write_json(out / SUMMARY, summary)  # last: "complete": true
    return summary


def device_cameras(cams: list[tuple[Photo, CameraSpec]]) -> dict[str, CameraSpec]:
    """Per EXIF device of the database photos, their refined cameras' median parameters."""
    by: dict[str, list] = {}
    for p, c in cams:
        if p.device:
            by.setdefault(p.device, []).append(c)
    return {d: CameraSpec(cs[0].model, cs[0].width, cs[0].height,
                          tuple(float(v) for v in np.median([c.params for c in cs], axis=0)))
            for d, cs in by.items() if len({(c.model, c.width, c.height) for c in cs}) == 1}


def query_camera(p: Photo, devices: dict) -> tuple[CameraSpec, bool]:
    """(camera, focal length guessed?): the map's refined camera of the photo's EXIF device when the
    map has one (its distortion included), else the camera its file gives (EXIF or the guess)."""
    if p.device and p.device in devices:
        return devices[p.device], False
    return p.camera, p.focal_source == "default"


def add_queries(photos_dir: str | Path, dataset: str | Path, label: str | None = None,
                default_focal_factor: float = DEFAULT_FOCAL_FACTOR, copy: bool = False,
                progress: bool = True) -> dict:
    """The photos of a folder as queries of an existing dataset (see the module docstring)."""
    src, root = Path(photos_dir), Path(dataset)
    if not src.is_dir():
        raise DataError(src, "photo folder not found")
    ds = Dataset(root)
    label = flat_name(label or src.resolve().name)
    if label in (HOLDOUT_LABEL, "day", "night") or not re.fullmatch(r"[\w.-]+", label):
        raise ValueError(f"query label {label!r}: choose another with --label (letters, digits, '_', '-', '.'; "
                         f"not {HOLDOUT_LABEL!r}, 'day' or 'night')")
    photos, skipped = scan(src, default_focal_factor, progress)
    placed = _place(photos, skipped)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    made = read_json(root / SUMMARY) if (root / SUMMARY).exists() else {}
    devices = {d: parse_camera(root / SUMMARY, None, line.split()) for d, line in made.get("device_cameras", {}).items()}
    taken = {Dataset.results_name(q) for q in ds.queries if not q.startswith(f"query/{label}/")}
    for f in [f for f in placed if f in taken]:  # the results file names queries by basename
        p = placed.pop(f)
        skipped[p.name] = f"another query of the map already has the name {f!r} (rename the photo)"
        print(f"skipped {p.name}: {skipped[p.name]}")
    folder = ds.images_dir / "query" / label
    shutil.rmtree(folder, ignore_errors=True)  # the same label again: this folder's photos replace its last ones
    names, cams = {}, {}
    for f, p in sorted(placed.items()):
        names[f"query/{label}/{f}"] = p
        cams[f"query/{label}/{f}"] = query_camera(p, devices)
        _link(p.path, ds.images_dir / "query" / label / f, copy)
    write_intrinsics(root / "queries" / f"{label}_queries_with_intrinsics.txt", {n: c for n, (c, _) in cams.items()})
    unknown = {n for n in ds.unknown_focal if not n.startswith(f"query/{label}/")}
    unknown |= {n for n, (_, guessed) in cams.items() if guessed}
    write_text(root / UNKNOWN_FOCAL, "".join(f"{n}\n" for n in sorted(unknown)))
    summary = {"converter": "datasets.photos queries", "source": str(src.resolve()), "label": label,
               "queries": len(names), "focal_from_exif": sum(p.focal_source == "exif" for p in names.values()),
               "focal_guessed": sum(guessed for _, guessed in cams.values()),
               "camera_of_the_map": sorted(n for n, p in names.items() if p.device and p.device in devices),
               "skipped": skipped}
    write_json(root / "queries" / f"{label}.json", summary)
    return summary


def main(argv=None) -> int:
    from mmcrossvit.presets import DEFAULT_PRESET, PRESETS
    ap = argparse.ArgumentParser(prog="python -m datasets.photos", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("map", help="a map dataset from a folder of photos (no poses, no intrinsics needed)")
    m.add_argument("photos", type=Path, help="the folder of photos (searched recursively)")
    m.add_argument("--out", type=Path, required=True, help="the dataset folder to write, e.g. datasets/mymap")
    m.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                   help="whose SIFT and matching settings the reconstruction uses (the pipeline's preset)")
    m.add_argument("--holdout-every", type=int, default=HOLDOUT_EVERY, metavar="K",
                   help=f"every K-th registered photo is held out as a query with its SfM pose (default "
                        f"{HOLDOUT_EVERY})")
    m.add_argument("--seed", type=int, default=0, help="COLMAP's random seed")
    q = sub.add_parser("queries", help="the photos of a folder as new queries of a map dataset")
    q.add_argument("photos", type=Path, help="the folder of new photos (searched recursively)")
    q.add_argument("--dataset", type=Path, required=True, help="the map's dataset folder, e.g. datasets/mymap")
    q.add_argument("--label", default=None, help="their folder and list name (default: the photo folder's name)")
    for s in (m, q):
        s.add_argument("--default-focal-factor", type=float, default=DEFAULT_FOCAL_FACTOR,
                       help="focal length of a photo without EXIF, times its longer side (COLMAP's default "
                            f"{DEFAULT_FOCAL_FACTOR}); refined by SfM and by the pose solver")
        s.add_argument("--copy", action="store_true", help="copy the photos instead of linking them")
    args = ap.parse_args(argv)
    try:
        if args.command == "map":
            s = convert(args.photos, args.out, args.preset, args.holdout_every, args.default_focal_factor,
                        args.copy, args.seed)
            print(f"{args.out}: {s['registered']} of {s['photos']} photos registered ({s['focal_from_exif']} with an "
                  f"EXIF focal length, {s['focal_guessed']} guessed), {s['database_images']} in the database, "
                  f"{s['held_out']} held out as queries; {len(s['skipped'])} files skipped, "
                  f"{len(s['not_registered'])} not registered (listed in {args.out / SUMMARY}); {s['seconds']} s")
        else:
            s = add_queries(args.photos, args.dataset, args.label, args.default_focal_factor, args.copy)
            print(f"{args.dataset}: {s['queries']} queries under query/{s['label']}/ ({s['focal_from_exif']} with an "
                  f"EXIF focal length, {s['focal_guessed']} guessed); {len(s['skipped'])} files skipped "
                  f"(listed in queries/{s['label']}.json)")
    except (DataError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
