"""Optional: the authors' local features (SuperPoint + SuperGlue) through hloc, on our retrieval.

    python localize_hloc.py --dataset datasets/aachen --preset paper

Needs `hloc` (not on the package index: `pip install git+https://github.com/cvg/Hierarchical-Localization`)
and its network weights (downloaded by hloc on first use). It reads the same files as localize.py:
the database poses of outputs/<name>/sfm, the database pairs outputs/<name>/pairs-db.txt and the
student's retrieval outputs/<name>/pairs-query.txt; it triangulates a SuperPoint model with those
poses and localizes every query with hloc's localize_sfm. Results, in the benchmark's format, go to
outputs/<name>/hloc/Pose_Estimation_Results.txt (queries hloc could not localize get the pose of
their top retrieved image, as localize.py does, so no query is missing).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mmcrossvit import cli
from mmcrossvit.colmap_io import read_pairs, read_poses, write_poses
from mmcrossvit.errors import DataError
from mmcrossvit.layout import Dataset
from mmcrossvit.paths import RunLayout

TAG = "hloc"


def hloc_available() -> bool:
    try:
        import hloc  # noqa: F401
        return True
    except ImportError:
        return False


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_run_args(p)
    p.add_argument("--features", default="superpoint_aachen", help="hloc extract_features config name")
    p.add_argument("--matcher", default="superglue", help="hloc match_features config name")
    p.add_argument("--ransac-max-error", type=float, default=12.0, help="RANSAC threshold in pixels")
    return p.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    if not hloc_available():
        raise SystemExit("error: hloc is not installed; see the module docstring (it is optional)")
    from hloc import extract_features, localize_sfm, match_features, triangulation
    ds = Dataset(args.dataset)
    paths = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    for f in (paths.sfm_points, paths.pairs_db, paths.pairs_query):
        if not f.exists():
            raise DataError(f, "missing; run preprocessing.py and generate_localization_pairs.py first")
    out = paths.localization_dir(TAG)
    out.mkdir(parents=True, exist_ok=True)
    fconf, mconf = extract_features.confs[args.features], match_features.confs[args.matcher]
    feats = extract_features.main(fconf, ds.images_dir, out)
    db_matches = match_features.main(mconf, paths.pairs_db, fconf["output"], out)
    model = triangulation.main(out / "sfm", paths.sfm, ds.images_dir, paths.pairs_db, feats, db_matches)
    del model
    loc_matches = match_features.main(mconf, paths.pairs_query, fconf["output"], out)
    queries_file = out / "queries_with_intrinsics.txt"
    queries_file.write_text("".join(f"{q.name} {q.camera.line()}\n" for q in ds.queries.values()))
    raw = out / "hloc_results.txt"
    localize_sfm.main(out / "sfm", queries_file, paths.pairs_query, feats, loc_matches, raw,
                      ransac_thresh=args.ransac_max_error)
    est = {Path(n).name: p for n, p in read_poses(raw).items()}
    _, db_poses = ds.reference
    top = {}
    for q, d in read_pairs(paths.pairs_query):
        top.setdefault(Path(q).name, d)
    for q in ds.queries:  # hloc skips queries it cannot localize; the benchmark needs every one
        b = Path(q).name
        if b not in est and top.get(b) in db_poses:
            est[b] = db_poses[top[b]]
    results = paths.results_file(TAG)
    write_poses(results, dict(sorted(est.items())))
    print(f"{len(est)} poses -> {results}")
    return results


if __name__ == "__main__":
    cli.run_cli(main)
