"""The dataset: render every planned view into Aachen's layout, with metadata and a contact sheet."""
from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mmcrossvit.layout import IMAGES, write_metadata
from mmcrossvit.storage import atomic_path, read_json, write_json

from .cameras import plan_cameras
from .params import NON_CONTENT, scene_params
from .render import render
from .scene import build_scene

GENERATOR_VERSION = 1  # bump when the same parameters give other files: old datasets are then not reused


def contact_sheet(root: Path, plan, cell: int = 240) -> np.ndarray:
    """A labelled grid: a row each of database, day and night samples."""
    rows = []
    for title, sel in (("database", [x for x in plan if x[0].startswith("db/")]),
                       ("day queries", [x for x in plan if "/day/" in x[0]]),
                       ("night queries", [x for x in plan if "/night/" in x[0]])):
        picks = [sel[int(i)] for i in np.linspace(0, len(sel) - 1, min(4, len(sel))).round()] if sel else []
        tiles = []
        for name, *_ in picks:
            im = cv2.imread(str(root / IMAGES / name))
            s = min(cell * 4 / 3 / im.shape[1], cell / im.shape[0])
            im = cv2.resize(im, (int(im.shape[1] * s), int(im.shape[0] * s)), interpolation=cv2.INTER_AREA)
            tile = np.zeros((cell + 22, int(cell * 4 / 3), 3), np.uint8)
            tile[22:22 + im.shape[0], (tile.shape[1] - im.shape[1]) // 2:][:, :im.shape[1]] = im
            cv2.putText(tile, name, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
        while len(tiles) < 4:
            tiles.append(np.zeros((cell + 22, int(cell * 4 / 3), 3), np.uint8))
        band = np.zeros((28, 4 * int(cell * 4 / 3), 3), np.uint8)
        cv2.putText(band, title, (6, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (80, 220, 255), 2, cv2.LINE_AA)
        rows += [band, np.concatenate(tiles, 1)]
    return np.concatenate(rows, 0)



OWNED = ["images/images_upright/db", "images/images_upright/query/day/synth", "images/images_upright/query/night/synth",
         "queries", "3D-models", "reference", "ground_truth", "contact_sheet.png"]


def generate(out_dir: str | Path, preset: str = "tiny", seed: int = 0, overwrite: bool = False,
             progress: bool = True, **overrides) -> Path:
    """Render a synthetic town dataset into `out_dir` (Aachen's layout) and return the path.

    An existing dataset whose scene.json records the same preset, seed and parameters is kept
    (a message says so) unless `overwrite`; a different one is an error unless `overwrite`.
    """
    out = Path(out_dir)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    cfg = scene_params(preset, overrides)
    content = {k: v for k, v in cfg.items() if k not in NON_CONTENT}
    meta_path = out / "scene.json"
    if meta_path.exists() and not overwrite:
        old = read_json(meta_path)
        if (old.get("version") == GENERATOR_VERSION and old.get("seed") == seed and old.get("preset") == preset
                and old.get("params") == content):
            print(f"{out}: synthetic town (preset {preset}, seed {seed}) already generated; skipping "
                  f"(pass overwrite=True / --overwrite to render again)")
            return out
        raise FileExistsError(f"{out} holds a different synthetic dataset (see {meta_path}); "
                              f"pass overwrite=True / --overwrite or choose another folder")
    # stale or partial output of an earlier run must not mix with this one
    if meta_path.exists():
        meta_path.unlink()
    for rel in OWNED:
        path = out / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    t0 = time.perf_counter()
    scene = build_scene(seed, preset, progress=progress, **overrides)
    t_scene = time.perf_counter() - t0
    plan = plan_cameras(scene, seed)

    def work(k):
        name, cam, pose, night = plan[k]
        kind = 2 if night else (1 if "/day/" in name else 0)
        img, _ = render(scene, cam, pose, night=night, rng=np.random.default_rng([seed, 31, kind, k]))
        path = out / IMAGES / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            if not cv2.imwrite(str(tmp), img, [cv2.IMWRITE_JPEG_QUALITY, int(cfg["jpeg_quality"])]):
                raise OSError(f"could not write {path}")

    bar = tqdm(total=len(plan), desc=f"rendering {preset}", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(int(cfg["workers"]), 1)) as pool:
        for _ in pool.map(work, range(len(plan))):
            bar.update()
    bar.close()

    db = {n: (c, p) for n, c, p, _ in plan if n.startswith("db/")}
    queries = {n: (c, p) for n, c, p, _ in plan if n.startswith("query/")}
    write_metadata(out, db, queries)
    with atomic_path(out / "contact_sheet.png") as tmp:
        cv2.imwrite(str(tmp), contact_sheet(out, plan))
    counts = {"db": len(db), "day": sum("/day/" in n for n in queries), "night": sum("/night/" in n for n in queries)}
    # written last: its presence marks a complete dataset
    write_json(meta_path, {"generator": "datasets.synthetic_town", "version": GENERATOR_VERSION,
                           "preset": preset, "seed": seed, "params": content, "counts": counts,
                           "scene": scene.stats(),
                           "sun_direction": scene.sun.tolist(),
                           "buildings_xyxyh": np.round(scene.layout.buildings, 4).tolist()})
    if progress:
        print(f"scene built in {t_scene:.1f} s; {len(plan)} images in {time.perf_counter() - t0:.1f} s total")
    return out

