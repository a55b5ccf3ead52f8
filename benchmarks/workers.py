"""--workers on one run: the speed-up of SIFT extraction, database-pair matching and localization,
and a check that every worker count writes the same bytes.

    python benchmarks/workers.py --dataset datasets/demo --preset demo [--workers 1 2] [--images 120]

Each part runs once per worker count on the run's own data, into a scratch folder
(outputs/<name>/workers-bench/):

    extraction    SIFT of the first --images database images and queries (the preset's settings)
    matching      the first --pairs database pairs (outputs/<name>/pairs-db.txt), epipolar-verified
                  against the reference poses, into a fresh COLMAP database
    localization  every query, oracle retrieval and the preset's localize settings (localize.py
                  --retrieval oracle --tag workers<W>)

Identity is checked on the outputs themselves: the features' arrays, the database's match
tables, and the results file's bytes. Timings are wall seconds of each part, the start-up of its
worker processes included; what starting an empty pool costs is reported apart. Writes
<results>/workers.{md,json}.
"""
from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import h5py
import numpy as np
from report import finish, machine_info, markdown_table, run_parser  # noqa: E402  (puts the repository on sys.path)

from mmcrossvit import cli, sfm  # noqa: E402
from mmcrossvit.colmap_io import read_pairs  # noqa: E402
from mmcrossvit.features import SiftConfig, extract_features  # noqa: E402
from mmcrossvit.layout import Dataset  # noqa: E402
from mmcrossvit.parallel import startup_seconds  # noqa: E402
from mmcrossvit.paths import RunLayout  # noqa: E402
from mmcrossvit.steps import execute, localize, preprocess  # noqa: E402


def h5_arrays(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def db_rows(path: Path) -> dict:
    with sqlite3.connect(path) as c:
        return {t: c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("matches", "two_view_geometries")}


def main(argv=None):
    p = run_parser(__doc__)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare (the first is "
                   "the reference for identity)")
    p.add_argument("--images", type=int, default=120, help="images extracted per worker count")
    p.add_argument("--pairs", type=int, default=1500, help="database pairs matched per worker count")
    args = p.parse_args(argv)
    run = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    ds = Dataset(run.dataset)
    pre = cli.settings(preprocess, args.preset)
    loc = cli.settings(localize, args.preset)
    scratch = run.out / "workers-bench"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    names = (ds.db_names + sorted(ds.queries))[: args.images]
    conf = SiftConfig(pre.max_image_size, pre.max_num_features, pre.first_octave, pre.peak_threshold,
                      contrast=pre.contrast)
    pairs = list(read_pairs(run.pairs_db))[: args.pairs]
    cams, poses = ds.reference
    rows, ref = [], {}
    for w in args.workers:
        row = {"workers": w, "startup_s": round(startup_seconds(w), 2) if w > 1 else 0.0}
        h5 = scratch / f"features-w{w}.h5"
        t = time.perf_counter()
        extract_features(ds.images_dir, names, h5, conf, workers=w, device="cpu")
        row["extraction_s"] = round(time.perf_counter() - t, 2)

        ref_rec = sfm.reference_reconstruction(cams, poses)
        db = scratch / f"database-w{w}.db"
        ids = sfm.create_database(ref_rec, db)
        t = time.perf_counter()
        stats = sfm.match_and_verify(db, ids, pairs, run.features, cams, poses, pre.ratio, pre.max_epipolar_error,
                                     workers=w, device="cpu")
        row["matching_s"] = round(time.perf_counter() - t, 2)

        tag = f"workers-bench-w{w}"
        t = time.perf_counter()
        execute(localize, run, cli.settings(localize, args.preset, retrieval="oracle", tag=tag, workers=w,
                                            device="cpu", overwrite=True))
        row["localization_s"] = round(time.perf_counter() - t, 2)
        results = run.results_file(tag).read_bytes()
        out = {"features": h5_arrays(h5), "matches": db_rows(db), "results": results}
        if not ref:
            ref = out
            row["identical"] = "reference"
        else:
            same = (out["features"].keys() == ref["features"].keys()
                    and all(np.array_equal(out["features"][k], ref["features"][k]) for k in ref["features"])
                    and out["matches"] == ref["matches"] and out["results"] == ref["results"])
            row["identical"] = "yes" if same else "NO"
        row["mean_matches"] = stats["mean_matches"]
        rows.append(row)
        print(row)
    base = rows[0]
    md = [f"# --workers on `{run.name}` ({args.preset} preset)", "",
          f"`python benchmarks/workers.py --dataset {args.dataset} --preset {args.preset} --workers "
          f"{' '.join(map(str, args.workers))} --images {args.images} --pairs {args.pairs}`", "",
          f"Machine: {machine_info()['cpu']} ({machine_info()['cpu_count']} logical CPUs). Extraction: "
          f"{len(names)} images; matching: {len(pairs)} database pairs with epipolar verification; "
          f"localization: {len(ds.queries)} queries, oracle retrieval (top {loc.oracle_num_retrieved}). "
          "Seconds of each part, its processes' start-up included; speed-up against the first row; "
          "identical: features, matches and results file equal to the first row's, byte for byte.", "",
          markdown_table(["workers", "extraction s", "x", "matching s", "x", "localization s", "x",
                          "process start-up s", "identical"],
                         [[r["workers"], r["extraction_s"], f"{base['extraction_s'] / r['extraction_s']:.2f}",
                           r["matching_s"], f"{base['matching_s'] / r['matching_s']:.2f}", r["localization_s"],
                           f"{base['localization_s'] / r['localization_s']:.2f}", r["startup_s"], r["identical"]]
                          for r in rows])]
    finish(str(Path(args.results) / "workers"), md, {"machine": machine_info(), "rows": rows,
                                                      "images": len(names), "pairs": len(pairs),
                                                      "queries": len(ds.queries)})
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
