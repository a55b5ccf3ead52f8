"""Your own photos, measured on real ones: Strecha et al.'s scenes mapped from their images alone.

    python benchmarks/own_photos.py --scenes path/to/Benchmarking_Camera_Calibration_2008/* --preset demo

Per scene, exactly what `make map` runs (run_pipeline.py --photos, as a subprocess): the photos
folder becomes a dataset with no poses and no intrinsics (the files carry no EXIF, so every focal
length starts as COLMAP's guess), structure from motion reconstructs it, every --holdout-every-th
registered photo is held out, the map is triangulated from the rest and the held-out photos are
localized with their guessed focal length (refined with the pose). Then the laser-scan ground truth
is used, for the first time: a similarity transform fitted to the database cameras' centres alone
(Umeyama) takes the map to the ground truth's frame in metres, and each held-out photo's pose is
compared with its true one. Also reported: the pipeline's own hold-out table against the SfM's
poses (what a user without ground truth sees), and the alignment's residual. Runs go to
<outputs>/photos_<scene>; writes benchmarks/results/own_photos.{md,json}.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from report import RESULTS, ROOT, finish, machine_info, markdown_table  # noqa: E402  (puts the repository on sys.path)

from datasets.strecha import camera_file, read_camera  # noqa: E402
from mmcrossvit.evaluation import THRESHOLDS, load_results, localization_table  # noqa: E402
from mmcrossvit.geometry import Pose  # noqa: E402
from mmcrossvit.layout import Dataset  # noqa: E402
from mmcrossvit.paths import DATABASE_ROOT, OUTPUTS, RunLayout  # noqa: E402
from mmcrossvit.presets import PRESETS  # noqa: E402
from mmcrossvit.storage import read_json, read_jsonl  # noqa: E402


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) minimising sum |dst - (s R src + t)|^2 (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    U, D, Vt = np.linalg.svd(b.T @ a / len(src))
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / a.var(0).sum())
    return s, R, mu_d - s * R @ mu_s


def to_frame(pose: Pose, s: float, R: np.ndarray, t: np.ndarray) -> Pose:
    """A world-to-camera pose of the map, in the frame X' = s R X + t (camera coordinates scaled by s)."""
    Rc = pose.R @ R.T
    return Pose(Rc, s * pose.t - Rc @ t)


def measure(scene: Path, preset: str, holdout_every: int, datasets: Path, outputs: Path, database_root: Path) -> dict:
    img_dir = scene / "images" if (scene / "images").is_dir() else scene
    name = f"photos_{scene.name}"
    dataset = datasets / name
    t0 = time.perf_counter()
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--photos", str(img_dir), "--dataset", str(dataset),
           "--holdout-every", str(holdout_every), "--preset", preset, "--outputs", str(outputs),
           "--database-root", str(database_root)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    ds = Dataset(dataset)
    run = RunLayout.create(dataset, None, outputs, database_root)
    photos = read_json(dataset / "photos.json")
    truth = {n: read_camera(camera_file(scene, Path(n).name))[1] for n in [*ds.db_names, *ds.queries]}
    _, db_poses = ds.reference
    src = np.array([db_poses[n].center for n in sorted(db_poses)])
    dst = np.array([truth[n].center for n in sorted(db_poses)])
    s, R, t = umeyama(src, dst)
    residual = np.linalg.norm((s * (R @ src.T)).T + t - dst, axis=1)
    est = load_results(run.results, ds)
    aligned = {q: to_frame(p, s, R, t) for q, p in est.items()}
    gt = {q: truth[q] for q in ds.queries}
    conds = {q: "all" for q in ds.queries}
    laser = localization_table(aligned, gt, conds)["all"]
    sfm_gt = {q: to_frame(p, s, R, t) for q, p in ds.gt_poses.items()}
    sfm_vs_laser = localization_table(sfm_gt, gt, conds)["all"]
    own = localization_table(est, ds.gt_poses, conds)["all"]
    rows = read_jsonl(run.localization_log())
    wrong = sum(r["success"] and not _within(aligned[r["query"]], gt[r["query"]]) for r in rows)
    return {"scene": scene.name, "photos": photos["photos"], "registered": photos["registered"],
            "not_registered": photos["not_registered"], "skipped": photos["skipped"],
            "database_images": len(db_poses), "held_out": len(ds.queries),
            "localized": sum(r["success"] for r in rows), "wrong_accepted": wrong,
            "laser": laser, "sfm_vs_laser": sfm_vs_laser, "own_table": own,
            "scale_m_per_unit": s, "alignment_rms_m": float(np.sqrt(np.mean(residual ** 2))),
            "focal_refined": [r.get("focal") for r in rows], "seconds": round(seconds, 1)}


def _within(a: Pose, b: Pose, m: float = 5.0, deg: float = 10.0) -> bool:
    from mmcrossvit.evaluation import pose_error
    e = pose_error(a, b)
    return e[0] <= m and e[1] <= deg


def _count(recall: list[float], n: int) -> str:
    return " / ".join(str(round(r * n / 100)) for r in recall) + f" of {n}"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=Path, nargs="+", required=True,
                   help="Strecha scene folders (images/ and gt_dense_cameras/, as openMVG's SfM_quality_evaluation)")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="the pipeline's preset")
    p.add_argument("--holdout-every", type=int, default=4, metavar="K",
                   help="every K-th registered photo is held out (4: the split of datasets/strecha.py)")
    p.add_argument("--datasets", type=Path, default=Path("datasets"), help="where the converted scenes go")
    p.add_argument("--outputs", type=Path, default=OUTPUTS, help="where the runs go")
    p.add_argument("--database-root", type=Path, default=DATABASE_ROOT, help="where the spatial databases go")
    p.add_argument("--out", default=str(RESULTS / "own_photos"), help="output path stem; .md and .json are written")
    args = p.parse_args(argv)
    res = [measure(sc, args.preset, args.holdout_every, args.datasets, args.outputs, args.database_root)
           for sc in sorted(args.scenes)]
    head = ["scene", "photos / registered", "db / held out", "localized (wrong)",
            "laser GT: within (0.25 m, 2°) / (0.5 m, 5°) / (5 m, 10°)", "laser GT: median cm / °",
            "SfM's hold-out poses vs laser: median cm / °", "alignment RMS cm", "s"]
    rows = [[r["scene"], f"{r['photos']} / {r['registered']}", f"{r['database_images']} / {r['held_out']}",
             f"{r['localized']} ({r['wrong_accepted']})", _count(r["laser"]["recall"], r["held_out"]),
             f"{100 * r['laser']['median_m']:.1f} / {r['laser']['median_deg']:.2f}",
             f"{100 * r['sfm_vs_laser']['median_m']:.1f} / {r['sfm_vs_laser']['median_deg']:.2f}",
             f"{100 * r['alignment_rms_m']:.1f}", f"{r['seconds']:.0f}"] for r in res]
    n = sum(r["held_out"] for r in res)
    tot = [sum(round(r["laser"]["recall"][i] * r["held_out"] / 100) for r in res) for i in range(len(THRESHOLDS))]
    totals = {"held_out": n, "within": tot, "percent": [round(100 * k / n, 1) for k in tot] if n else [],
              "wrong_accepted": sum(r["wrong_accepted"] for r in res)}
    rows.append(["**all scenes**", f"{sum(r['photos'] for r in res)} / {sum(r['registered'] for r in res)}",
                 f"{sum(r['database_images'] for r in res)} / {n}",
                 f"{sum(r['localized'] for r in res)} ({totals['wrong_accepted']})",
                 " / ".join(map(str, tot)) + f" of {n} ({' / '.join(f'{v:.0f}%' for v in totals['percent'])})",
                 "", "", "", f"{sum(r['seconds'] for r in res):.0f}"])
    md = ["# Your own photos: Strecha's scenes mapped from their images alone", "",
          f"`python benchmarks/own_photos.py --scenes {' '.join(str(s) for s in sorted(args.scenes))} "
          f"--preset {args.preset} --holdout-every {args.holdout_every}`", "",
          "Each scene's photos, as a folder with no poses and no EXIF, go through `run_pipeline.py --photos` "
          "(what `make map` runs). The laser-scan ground truth enters only afterwards: a similarity transform "
          "fitted to the database cameras' centres takes the map into metres, and each held-out photo's "
          "localized pose is compared with its true one. `wrong`: localized but beyond (5 m, 10°). "
          "`SfM's hold-out poses vs laser`: how far the pipeline's own check (the held-out photos' poses in "
          "the SfM of all photos) lies from the truth. `s`: the whole `run_pipeline.py --photos` run on this "
          "machine (its load when the run began: the .json's `machine`).", "", markdown_table(head, rows)]
    return finish(args.out, md, {"machine": machine_info(), "preset": args.preset,
                                 "holdout_every": args.holdout_every, "scenes": res, "totals": totals})


if __name__ == "__main__":
    main()
