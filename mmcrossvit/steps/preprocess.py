"""Step 1: reference SfM and the spatial-contrastive database.

1. SIFT features (COLMAP's, through pycolmap) for database and query images ->
   outputs/<name>/features.h5 (queries' features are reused by localization).
2. Database pairs from the reference poses (or exhaustive) -> outputs/<name>/pairs-db.txt.
3. Matching, verification against the known poses, and triangulation with the known database
   poses (hloc's triangulation) -> outputs/<name>/sfm/ (COLMAP text model) and database.db.
   `--mapper incremental` reconstructs poses too, for datasets without them.
4. The spatial-contrastive database -> DataBase/<name>/: positives (images sharing >= N points)
   with their 3D-box IoU, negatives implicitly (images sharing none), k-fold split, CSV lists.

Every part skips when its outputs are complete (atomic writes), unless --overwrite.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time

import numpy as np
import pandas as pd

from .. import sfm, spatial_db
from ..colmap_io import write_pairs
from ..device import CHOICES, HELP
from ..colmap_model import read_colmap_cameras_poses, read_model_observations
from ..errors import DataError
from .. import records
from ..features import SiftConfig, extract_features, failed_images, features_digest
from ..colmap_io import read_intrinsics
from ..layout import DB_INTRINSICS, IMAGE_EXTS, REFERENCE_FILES, Dataset
from ..paths import RunLayout
from ..storage import atomic_path, is_complete, read_json, write_json, write_text

log = logging.getLogger("preprocessing")
STEP = "preprocess"
S = argparse.SUPPRESS


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SIFT")
    g.add_argument("--max-image-size", type=int, default=S, help="downscale images whose longer side exceeds this")
    g.add_argument("--max-num-features", type=int, default=S, help="keypoints kept per image")
    g.add_argument("--first-octave", type=int, default=S,
                   help="COLMAP's first octave: -1 upsamples (more features), 0 is ~10x faster")
    g.add_argument("--peak-threshold", type=float, default=S, help="SIFT peak threshold (COLMAP's default: 0.00667)")
    g.add_argument("--contrast", choices=["none", "clahe"], default=S,
                   help="contrast normalisation of every image before SIFT (clahe: local histogram "
                        "equalisation, for day-night robustness)")
    g.add_argument("--affine-shape", action=argparse.BooleanOptionalAction, default=S,
                   help="affine-adapted SIFT regions, for oblique views (COLMAP's estimate_affine_shape; "
                        "runs on the CPU)")
    g.add_argument("--domain-size-pooling", action=argparse.BooleanOptionalAction, default=S,
                   help="DSP-SIFT descriptors pooled over several region sizes (runs on the CPU)")
    g = p.add_argument_group("matching and SfM")
    g.add_argument("--pairs", choices=["poses", "exhaustive"], default=S,
                   help="database pairs: nearest cameras by position and direction, or all pairs")
    g.add_argument("--num-pairs", type=int, default=S, help="neighbours per image with --pairs poses")
    g.add_argument("--max-pair-angle", type=float, default=S, help="max angle between viewing directions of a pair (deg)")
    g.add_argument("--ratio", type=float, default=S, help="Lowe's ratio test threshold")
    g.add_argument("--max-epipolar-error", type=float, default=S,
                   help="pixels; matches farther from the epipolar line are dropped")
    g.add_argument("--min-pair-matches", type=int, default=S,
                   help="verified matches a database pair needs to be used in triangulation (COLMAP: 15)")
    g.add_argument("--two-view-tracks", action=argparse.BooleanOptionalAction, default=S,
                   help="keep points seen by two images only (COLMAP drops them)")
    g.add_argument("--min-tri-angle", type=float, default=S, help="smallest triangulation angle in degrees")
    g.add_argument("--mapper", choices=["triangulation", "incremental"], default=S,
                   help="triangulate with the known poses, or reconstruct poses too (no poses needed)")
    g = p.add_argument_group("spatial database")
    g.add_argument("--min-shared", type=int, default=S, help="3D points an image must share with the anchor to be a positive")
    g.add_argument("--z-thresh", type=float, default=S, help="z-score outlier threshold for the 3D boxes")
    g.add_argument("--folds", type=int, default=S, help="k-fold split of anchors for validation")
    g = p.add_argument_group("resources (the outputs do not depend on them)")
    g.add_argument("--workers", type=int, default=S, help="processes for SIFT extraction (0: one per CPU core)")
    g.add_argument("--match-workers", type=int, default=S,
                   help="processes for database-pair matching (0: one per CPU core; 1: this process alone, whose "
                        "torch threads already use every core: extra processes measured no faster on 2 cores "
                        "and slower on 16, benchmarks/results/workers.md)")
    g.add_argument("--device", choices=CHOICES, default=S, help=HELP)
    p.add_argument("--overwrite", action="store_true", help="recompute every part even if its outputs exist")
    p.add_argument("--verbose", action="store_true", help="show COLMAP's own log")
    p.add_argument("--skip-validation", action="store_true", help="do not check that every listed image exists")


def check(run: RunLayout, cfg: argparse.Namespace) -> dict:
    """The dataset's layout, cameras and poses, checked before anything is written (a bad input
    file is one error naming it and its line, and leaves no outputs/<name>/ behind)."""
    ds = Dataset(run.dataset)
    if cfg.mapper == "incremental":  # no reference poses: the images and query lists only
        ds.images_dir
        return {"database_images": None, "queries": len(ds.queries)}
    return ds.validate(check_images=not cfg.skip_validation)


def incremental_names(ds: Dataset) -> list[str]:
    """The database of a dataset without poses: the images its intrinsics list names (a converter's
    list, e.g. datasets/photos.py's), else every image under db/ but the night renderings."""
    intr = ds.root / DB_INTRINSICS
    if intr.exists():
        return sorted(read_intrinsics(intr))
    return sorted(p.relative_to(ds.images_dir).as_posix() for p in (ds.images_dir / "db").rglob("*")
                  if p.suffix.lower() in IMAGE_EXTS and not p.stem.endswith("_cyclegan"))


def main(run: RunLayout, cfg: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run.out.mkdir(parents=True, exist_ok=True)
    with sfm.storage_errors(run.out):  # COLMAP's database on a full disk
        return _preprocess(run, cfg)


def _preprocess(run: RunLayout, cfg: argparse.Namespace) -> dict:
    t0 = time.time()
    import pycolmap
    pycolmap.set_random_seed(cfg.seed)  # COLMAP's RANSAC in triangulation and verification
    sfm.colmap_logging(cfg.verbose)
    ds = Dataset(run.dataset)
    run.out.mkdir(parents=True, exist_ok=True)
    incremental = cfg.mapper == "incremental"
    if incremental:
        db_names = incremental_names(ds)
        summary = {"database_images": len(db_names), "queries": len(ds.queries)}
    else:
        summary = ds.validate(check_images=False)  # the images were checked by check()
        db_names = ds.db_names
    log.info("dataset %s: %s", ds.root, summary)

    # 1. features
    conf = SiftConfig.of(vars(cfg))
    names = db_names + sorted(ds.queries)
    feat_summary = extract_features(ds.images_dir, names, run.features, conf, overwrite=cfg.overwrite,
                                    workers=cfg.workers, device=cfg.device)
    log.info("features: %d extracted, %d already done, %d skipped",
             feat_summary["extracted"], feat_summary["already_done"], len(feat_summary["skipped"]))
    skipped_db = set(failed_images(run.features)) & set(db_names)  # excluded by every later step

    # 2-3. pairs, matching, triangulation: keyed by the database features and reference poses
    sfm_settings = {k: getattr(cfg, k) for k in ("pairs", "num_pairs", "max_pair_angle", "ratio",
                                                 "max_epipolar_error", "mapper", "seed", "min_pair_matches",
                                                 "two_view_tracks", "min_tri_angle")}
    sfm_inputs = {"features": features_digest(run.features, db_names),
                  **{str(p): records.fingerprint(ds.root / p) for p in REFERENCE_FILES}}
    sfm_key = records.make_key(sfm_settings, sfm_inputs)
    worked = feat_summary["extracted"] > 0
    if not records.up_to_date(run.record("sfm"), sfm_key, is_complete(run.sfm_points, run.sfm_summary),
                              cfg.overwrite, f"SfM model {run.sfm}", sfm_settings, sfm_inputs, log.info):
        worked = True
        if incremental:
            rec, db_path = sfm.reconstruct(ds.images_dir, [n for n in db_names if n not in skipped_db], run.features,
                                           run.sfm_work, run.sfm, run.pairs_db, cfg.ratio, cfg.match_workers,
                                           cfg.device, seed=cfg.seed)
            match_stats = {"pairs": len(db_names) * (len(db_names) - 1) // 2}
        else:
            cams, poses = ds.reference
            poses = {n: p for n, p in poses.items() if n not in skipped_db}
            if len(poses) < 2:
                raise DataError(ds.root, f"{len(poses)} usable database image(s): triangulation needs at "
                                         "least two, so the SfM model would have no 3D points")
            pairs = (sfm.pairs_from_poses(poses, cfg.num_pairs, cfg.max_pair_angle) if cfg.pairs == "poses"
                     else sfm.pairs_exhaustive(list(poses)))
            write_pairs(run.pairs_db, pairs)
            log.info("%d database pairs -> %s", len(pairs), run.pairs_db)
            ref = sfm.reference_reconstruction(cams, poses)
            shutil.rmtree(run.sfm_work, ignore_errors=True)
            run.sfm_work.mkdir(parents=True)
            db_path = run.sfm_work / "database.db"
            image_ids = sfm.create_database(ref, db_path)
            sfm.import_features(db_path, image_ids, run.features)
            match_stats = sfm.match_and_verify(db_path, image_ids, pairs, run.features, cams, poses, cfg.ratio,
                                               cfg.max_epipolar_error, workers=cfg.match_workers, device=cfg.device)
            rec = sfm.triangulate(ref, db_path, ds.images_dir, run.sfm, cfg.min_pair_matches, cfg.two_view_tracks,
                                  cfg.min_tri_angle)
        shutil.copy2(db_path, run.sfm_database)
        shutil.rmtree(run.sfm_work, ignore_errors=True)
        sfm_summary = {**sfm.model_summary(rec), "matching": match_stats}
        write_json(run.sfm_summary, sfm_summary)
        records.write(run.record("sfm"), sfm_key, sfm_settings, sfm_inputs)
    sfm_summary = read_json(run.sfm_summary)
    log.info("SfM: %s", sfm_summary)

    # 4. spatial-contrastive database: keyed by the SfM model and its own settings
    db_settings = {k: getattr(cfg, k) for k in ("min_shared", "z_thresh", "folds", "seed")}
    # the queries are no input: photos added as queries later (run_pipeline.py --queries) retrain nothing
    db_inputs = {"sfm": sfm_key, "db_names": records.digest(db_names)}
    db_key = records.make_key(db_settings, db_inputs)
    if not records.up_to_date(run.record("spatial_db"), db_key, is_complete(run.spatial_db, run.db_stats),
                              cfg.overwrite, f"spatial database {run.spatial_db}", db_settings, db_inputs, log.info):
        worked = True
        image_points, pids, xyz = read_model_observations(run.sfm)
        _, model_poses = read_colmap_cameras_poses(run.sfm)
        names_db = sorted(n for n in model_poses if n in set(db_names))
        missing = sorted(set(db_names) - set(names_db) - skipped_db)  # unreadable ones were reported
        if missing:
            log.warning("%d database images are not in the SfM model (e.g. %s); they are left out",
                        len(missing), missing[0])
        if not len(xyz):
            raise DataError(run.sfm, "the SfM model has no 3D points: matching failed for every pair "
                                       "(check the images, or --max-epipolar-error / --ratio)")
        ii, pp = spatial_db.observations(names_db, image_points, pids)
        db = spatial_db.build(names_db, ii, pp, xyz, min_shared=cfg.min_shared, folds=cfg.folds,
                              seed=cfg.seed, z_thresh=cfg.z_thresh)
        db.save(run.spatial_db)
        rows = np.repeat(np.arange(len(db.names)), np.diff(db.pos_indptr))
        shared = np.asarray(db.shared[rows, db.pos_indices]).ravel() if len(rows) else np.zeros(0)
        with atomic_path(run.positives_csv) as tmp:
            pd.DataFrame({"anchor": db.names[rows], "positive": db.names[db.pos_indices],
                          "shared_points": shared.astype(int), "iou": db.pos_iou}).to_csv(tmp, index=False)
        write_text(run.db_images_csv,
                   "name,fold,num_points\n" + "".join(f"{n},{f},{k}\n" for n, f, k in zip(db.names, db.fold, db.num_points)))
        st = {**spatial_db.stats(db), "not_in_model": missing}
        write_json(run.db_stats, st)
        records.write(run.record("spatial_db"), db_key, db_settings, db_inputs)
    write_text(run.query_images_csv,  # left as it is when the queries are the same
               "name,condition\n" + "".join(f"{q.name},{q.condition}\n" for q in ds.queries.values()))
    st = read_json(run.db_stats)
    log.info("spatial database: %s", {k: v for k, v in st.items() if k != "not_in_model"})
    result = {"dataset_root": str(ds.root.resolve()), "dataset": summary, "features": dict(feat_summary),
              "unreadable_images": failed_images(run.features), "sfm": sfm_summary,
              "database": st, "seconds": round(time.time() - t0, 1)}
    if worked or not run.preprocessing_summary.exists():
        write_json(run.preprocessing_summary, result)
    else:  # all up to date: the summary stays the one of the run that did the work
        result = read_json(run.preprocessing_summary)
    print(f"preprocessing done in {round(time.time() - t0, 1)} s: {sfm_summary['points']} points, "
          f"{sfm_summary['registered_images']} images, mean track {sfm_summary['mean_track_length']:.2f}, "
          f"reprojection error {sfm_summary['mean_reprojection_error']:.2f} px; "
          f"{st['positives_per_anchor']['mean']:.1f} positives per anchor")
    return result

