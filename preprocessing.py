"""Step 1: reference SfM and the spatial-contrastive database.

    python preprocessing.py --dataset datasets/demo

1. SIFT features (COLMAP's, through pycolmap) for database and query images ->
   outputs/<name>/features.h5 (queries' features are reused by localization).
2. Database pairs from the reference poses (or exhaustive) -> outputs/<name>/pairs-db.txt.
3. Matching, verification against the known poses, and triangulation with the known database
   poses (hloc's triangulation) -> outputs/<name>/sfm/ (COLMAP text model) and database.db.
   `--mapper incremental` reconstructs poses too, for datasets without them.
4. The spatial-contrastive database -> DataBase/<name>/: positives (images sharing >= N points)
   with their 3D-box IoU, negatives implicitly (images sharing none), k-fold split, CSV lists.

Every step skips when its outputs are complete (atomic writes), unless --overwrite.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mmcrossvit import sfm, spatial_db
from mmcrossvit.colmap_io import read_colmap_cameras_poses, read_model_observations, write_pairs
from mmcrossvit.errors import DataError, run_cli
from mmcrossvit.features import SiftConfig, extract_features
from mmcrossvit.layout import Dataset
from mmcrossvit.paths import run_paths
from mmcrossvit.storage import is_complete, read_json, write_json, write_text

log = logging.getLogger("preprocessing")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True, help="dataset folder in the documented layout")
    p.add_argument("--name", help="run name for outputs/<name> and DataBase/<name> (default: dataset folder name)")
    p.add_argument("--outputs", type=Path, default=Path("outputs"), help="root of per-run outputs")
    p.add_argument("--database-root", type=Path, default=Path("DataBase"), help="root of the spatial databases")
    g = p.add_argument_group("SIFT")
    g.add_argument("--max-image-size", type=int, default=1600, help="downscale images whose longer side exceeds this")
    g.add_argument("--max-num-features", type=int, default=8192, help="keypoints kept per image")
    g.add_argument("--first-octave", type=int, default=-1,
                   help="COLMAP's first octave: -1 upsamples (more features), 0 is ~10x faster")
    g.add_argument("--peak-threshold", type=float, default=0.02 / 3, help="SIFT peak threshold (COLMAP's default)")
    g = p.add_argument_group("matching and SfM")
    g.add_argument("--pairs", choices=["poses", "exhaustive"], default="poses",
                   help="database pairs: nearest cameras by position and direction, or all pairs")
    g.add_argument("--num-pairs", type=int, default=20, help="neighbours per image with --pairs poses")
    g.add_argument("--max-pair-angle", type=float, default=60.0, help="max angle between viewing directions of a pair (deg)")
    g.add_argument("--ratio", type=float, default=0.8, help="Lowe's ratio test threshold")
    g.add_argument("--max-epipolar-error", type=float, default=4.0, help="pixels; matches farther from the epipolar line are dropped")
    g.add_argument("--mapper", choices=["triangulation", "incremental"], default="triangulation",
                   help="triangulate with the known poses, or reconstruct poses too (no poses needed)")
    g = p.add_argument_group("spatial database")
    g.add_argument("--min-shared", type=int, default=8, help="3D points an image must share with the anchor to be a positive")
    g.add_argument("--z-thresh", type=float, default=3.0, help="z-score outlier threshold for the 3D boxes")
    g.add_argument("--folds", type=int, default=5, help="k-fold split of anchors for validation")
    g.add_argument("--seed", type=int, default=0, help="seed of the fold split and of COLMAP's RANSAC")
    p.add_argument("--overwrite", action="store_true", help="recompute every step even if its outputs exist")
    p.add_argument("--verbose", action="store_true", help="show COLMAP's own log")
    p.add_argument("--skip-validation", action="store_true", help="do not check that every listed image exists")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    t0 = time.time()
    import pycolmap
    pycolmap.set_random_seed(args.seed)  # COLMAP's RANSAC in triangulation and verification
    sfm.colmap_logging(args.verbose)
    ds = Dataset(args.dataset)
    paths = run_paths(args.name or ds.name, args.outputs, args.database_root)
    paths.out.mkdir(parents=True, exist_ok=True)
    incremental = args.mapper == "incremental"
    if incremental:
        db_names = sorted(str(p.relative_to(ds.images_dir)) for p in (ds.images_dir / "db").rglob("*")
                          if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        summary = {"database_images": len(db_names), "queries": len(ds.queries)}
    else:
        summary = ds.validate(check_images=not args.skip_validation)
        db_names = ds.db_names
    log.info("dataset %s: %s", ds.root, summary)

    # 1. features
    conf = SiftConfig(args.max_image_size, args.max_num_features, args.first_octave, args.peak_threshold)
    names = db_names + sorted(ds.queries)
    feat_summary = extract_features(ds.images_dir, names, paths.features, conf, overwrite=args.overwrite)
    log.info("features: %d extracted, %d already done, %d skipped",
             feat_summary["extracted"], feat_summary["already_done"], len(feat_summary["skipped"]))
    skipped_db = {s["image"] for s in feat_summary["skipped"]} & set(db_names)

    # 2-3. pairs, matching, triangulation
    if args.overwrite or not is_complete(paths.sfm / "points3D.txt", paths.sfm_summary):
        if incremental:
            import pycolmap
            pairs = sfm.pairs_exhaustive(db_names)
            shutil.rmtree(paths.sfm_work, ignore_errors=True)
            paths.sfm_work.mkdir(parents=True)
            db_path = paths.sfm_work / "database.db"
            intr = ds.root / "3D-models/database_intrinsics.txt"
            pycolmap.import_images(db_path, ds.images_dir, pycolmap.CameraMode.PER_IMAGE, image_names=db_names)
            with pycolmap.Database.open(db_path) as db:
                image_ids = {im.name: im.image_id for im in db.read_all_images()}
            if intr.exists():
                log.info("intrinsics from %s are used only as initial guesses by incremental mapping", intr)
            sfm.import_features(db_path, image_ids, paths.features)
            write_pairs(paths.pairs_db, pairs)
            sfm.match_and_verify(db_path, None, image_ids, pairs, paths.features, ratio=args.ratio, use_poses=False)
            pycolmap.verify_matches(db_path, paths.pairs_db)
            rec = sfm.incremental(db_path, ds.images_dir, paths.sfm)
            match_stats = {"pairs": len(pairs)}
        else:
            cams, poses = ds.reference
            poses = {n: p for n, p in poses.items() if n not in skipped_db}
            if len(poses) < 2:
                raise DataError(ds.root, f"{len(poses)} usable database image(s): triangulation needs at "
                                         "least two, so the SfM model would have no 3D points")
            pairs = (sfm.pairs_from_poses(poses, args.num_pairs, args.max_pair_angle) if args.pairs == "poses"
                     else sfm.pairs_exhaustive(list(poses)))
            write_pairs(paths.pairs_db, pairs)
            log.info("%d database pairs -> %s", len(pairs), paths.pairs_db)
            ref = sfm.reference_reconstruction(cams, poses)
            shutil.rmtree(paths.sfm_work, ignore_errors=True)
            paths.sfm_work.mkdir(parents=True)
            db_path = paths.sfm_work / "database.db"
            image_ids = sfm.create_database(ref, db_path)
            sfm.import_features(db_path, image_ids, paths.features)
            match_stats = sfm.match_and_verify(db_path, ref, image_ids, pairs, paths.features, ratio=args.ratio,
                                               max_error=args.max_epipolar_error)
            rec = sfm.triangulate(ref, db_path, ds.images_dir, paths.sfm)
        shutil.copy2(db_path, paths.sfm / "database.db")
        shutil.rmtree(paths.sfm_work, ignore_errors=True)
        sfm_summary = {**sfm.model_summary(rec), "matching": match_stats}
        write_json(paths.sfm_summary, sfm_summary)
    else:
        log.info("SfM model %s is complete; skipping (use --overwrite to redo)", paths.sfm)
    sfm_summary = read_json(paths.sfm_summary)
    log.info("SfM: %s", sfm_summary)

    # 4. spatial-contrastive database
    if args.overwrite or not is_complete(paths.spatial_db, paths.db_stats):
        image_points, pids, xyz = read_model_observations(paths.sfm)
        _, model_poses = read_colmap_cameras_poses(paths.sfm)
        names_db = sorted(n for n in model_poses if n in set(db_names))
        missing = sorted(set(db_names) - set(names_db))
        if missing:
            log.warning("%d database images are not in the SfM model (e.g. %s); they are left out",
                        len(missing), missing[0])
        if not len(xyz):
            raise DataError(paths.sfm, "the SfM model has no 3D points: matching failed for every pair "
                                       "(check the images, or --max-epipolar-error / --ratio)")
        ii, pp = spatial_db.observations(names_db, image_points, pids)
        db = spatial_db.build(names_db, ii, pp, xyz, min_shared=args.min_shared, folds=args.folds,
                              seed=args.seed, z_thresh=args.z_thresh)
        db.save(paths.spatial_db)
        rows = np.repeat(np.arange(len(db.names)), np.diff(db.pos_indptr))
        shared = np.asarray(db.shared[rows, db.pos_indices]).ravel() if len(rows) else np.zeros(0)
        pd.DataFrame({"anchor": db.names[rows], "positive": db.names[db.pos_indices],
                      "shared_points": shared.astype(int), "iou": db.pos_iou}).to_csv(
            paths.database / "positives.csv.tmp", index=False)
        (paths.database / "positives.csv.tmp").replace(paths.database / "positives.csv")
        write_text(paths.database / "db_images.csv",
                   "name,fold,num_points\n" + "".join(f"{n},{f},{k}\n" for n, f, k in zip(db.names, db.fold, db.num_points)))
        write_text(paths.database / "query_images.csv",
                   "name,condition\n" + "".join(f"{q.name},{q.condition}\n" for q in ds.queries.values()))
        st = {**spatial_db.stats(db), "not_in_model": missing}
        write_json(paths.db_stats, st)
    else:
        log.info("spatial database %s is complete; skipping", paths.spatial_db)
    st = read_json(paths.db_stats)
    log.info("spatial database: %s", {k: v for k, v in st.items() if k != "not_in_model"})
    result = {"dataset_root": str(ds.root.resolve()), "dataset": summary, "features": {k: v for k, v in feat_summary.items()}, "sfm": sfm_summary,
              "database": st, "seconds": round(time.time() - t0, 1)}
    write_json(paths.out / "preprocessing_summary.json", result)
    print(f"preprocessing done in {result['seconds']} s: {sfm_summary['points']} points, "
          f"{sfm_summary['registered_images']} images, mean track {sfm_summary['mean_track_length']:.2f}, "
          f"reprojection error {sfm_summary['mean_reprojection_error']:.2f} px; "
          f"{st['positives_per_anchor']['mean']:.1f} positives per anchor")
    return result


if __name__ == "__main__":
    run_cli(main)
