"""The dataset: render every planned view into Aachen's layout, with metadata and a contact sheet;
optionally every database view at night too (`<stem>_cyclegan.jpg` beside it, see `night_db`)."""
from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from tqdm import tqdm

from mmcrossvit.data import cyclegan_path
from mmcrossvit.layout import IMAGES, write_metadata
from mmcrossvit.storage import atomic_path, read_json, write_json

from .cameras import plan_cameras
from .lens import scaled
from .params import NON_CONTENT, scene_params
from .render import render
from .scene import build_scene

GENERATOR_VERSION = 1  # bump when the same parameters give other files: old datasets are then not reused
NIGHT_PARAMS = ("night_db", "night_db_scale")


def night_db_name(name: str) -> str:
    """The night rendering of database image `name` (relative to images/images_upright):
    `db/0007.jpg` -> `db/0007_cyclegan.jpg`, the name the trainers look for (mmcrossvit.data.cyclegan_path)."""
    return str(cyclegan_path(PurePosixPath(name)))


def night_db_camera(camera, scale: float):
    """The database camera at `scale` times the resolution (focal length and principal point scaled)."""
    if not 0 < scale <= 1:
        raise ValueError(f"night_db_scale must be in (0, 1], not {scale}")
    if scale == 1:
        return camera
    return scaled(camera, scale, max(round(camera.width * scale), 8), max(round(camera.height * scale), 6))


def contact_sheet(root: Path, plan, cell: int = 240) -> np.ndarray:
    """A labelled grid: a row each of database, day and night samples, and, when the night
    renderings of the database exist, the same database views at night."""
    def sample(sel):
        return [sel[int(i)][0] for i in np.linspace(0, len(sel) - 1, min(4, len(sel))).round()] if sel else []

    db = sample([x for x in plan if x[0].startswith("db/")])
    rows_spec = [("database", db),
                 ("day queries", sample([x for x in plan if "/day/" in x[0]])),
                 ("night queries", sample([x for x in plan if "/night/" in x[0]]))]
    night = [night_db_name(n) for n in db if (root / IMAGES / night_db_name(n)).is_file()]
    if night:
        rows_spec.insert(1, ("database at night", night))
    rows = []
    for title, picks in rows_spec:
        tiles = []
        for name in picks:
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



# Removed before a dataset is generated anew (the night database renderings live in db/).
OWNED = ["images/images_upright/db", "images/images_upright/query/day/synth", "images/images_upright/query/night/synth",
         "queries", "3D-models", "reference", "ground_truth", "contact_sheet.png"]


def _comparable(params: dict) -> dict:
    """Scene parameters as compared with an existing dataset's: datasets from before the night
    database option have none, and the scale of renderings that were not made does not matter."""
    p = {"night_db": False, **params}
    if not p["night_db"]:
        p.pop("night_db_scale", None)
    return p


def _night_db_jobs(plan) -> list[int]:
    return [k for k, (name, *_) in enumerate(plan) if name.startswith("db/")]


def _render_views(out: Path, scene, plan, seed: int, cfg: dict, views: list[int], night_db: list[int],
                  desc: str, progress: bool) -> None:
    """Render plan entries `views` and the night versions of database entries `night_db` into
    `out`, in one thread pool and one progress bar. Each image draws from its own generator
    (seed, plan index and stream), so results do not depend on the order or the thread count."""
    def work(job):
        k, db_night = job
        name, cam, pose, night = plan[k]
        if db_night:
            # stream 3: neither the database (0), day (1) nor night (2) query streams
            img, _ = render(scene, night_db_camera(cam, float(cfg["night_db_scale"])), pose, night=True,
                            rng=np.random.default_rng([seed, 31, 3, k]))
            name = night_db_name(name)
        else:
            kind = 2 if night else (1 if "/day/" in name else 0)
            img, _ = render(scene, cam, pose, night=night, rng=np.random.default_rng([seed, 31, kind, k]))
        path = out / IMAGES / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            if not cv2.imwrite(str(tmp), img, [cv2.IMWRITE_JPEG_QUALITY, int(cfg["jpeg_quality"])]):
                raise OSError(f"could not write {path}")

    jobs = [(k, False) for k in views] + [(k, True) for k in night_db]
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(int(cfg["workers"]), 1)) as pool:
        for _ in pool.map(work, jobs):
            bar.update()
    bar.close()


def _night_db_count(out: Path, plan) -> int:
    return sum((out / IMAGES / night_db_name(plan[k][0])).is_file() for k in _night_db_jobs(plan))


def generate(out_dir: str | Path, preset: str = "tiny", seed: int = 0, overwrite: bool = False,
             progress: bool = True, **overrides) -> Path:
    """Render a synthetic town dataset into `out_dir` (Aachen's layout) and return the path.

    An existing dataset whose scene.json records the same preset, seed and parameters is kept
    (a message says so) unless `overwrite`; a different one is an error unless `overwrite`
    (a dataset without the night database renderings that differs only in that: see
    `render_night_database`, which adds them without touching the other images).
    """
    out = Path(out_dir)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    cfg = scene_params(preset, overrides)
    content = {k: v for k, v in cfg.items() if k not in NON_CONTENT}
    meta_path = out / "scene.json"
    if meta_path.exists() and not overwrite:
        old = read_json(meta_path)
        same_scene = (old.get("version") == GENERATOR_VERSION and old.get("seed") == seed
                      and old.get("preset") == preset)
        old_params = _comparable(old.get("params") or {})
        if same_scene and old_params == _comparable(content):
            print(f"{out}: synthetic town (preset {preset}, seed {seed}) already generated; skipping "
                  f"(pass overwrite=True / --overwrite to render again)")
            return out
        drop = set(NIGHT_PARAMS)
        if (same_scene and cfg["night_db"] and not old_params["night_db"]
                and {k: v for k, v in old_params.items() if k not in drop}
                == {k: v for k, v in content.items() if k not in drop}):
            raise FileExistsError(
                f"{out} holds this synthetic dataset without the night renderings of its database "
                f"(night_db); add them with datasets.synthetic_town.render_night_database({str(out)!r}, "
                f"{preset!r}, seed={seed}), which leaves the other images as they are, or pass "
                f"overwrite=True / --overwrite to render everything again")
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
    night_db = _night_db_jobs(plan) if cfg["night_db"] else []
    _render_views(out, scene, plan, seed, cfg, list(range(len(plan))), night_db, f"rendering {preset}", progress)

    db = {n: (c, p) for n, c, p, _ in plan if n.startswith("db/")}
    queries = {n: (c, p) for n, c, p, _ in plan if n.startswith("query/")}
    write_metadata(out, db, queries)
    with atomic_path(out / "contact_sheet.png") as tmp:
        cv2.imwrite(str(tmp), contact_sheet(out, plan))
    counts = {"db": len(db), "day": sum("/day/" in n for n in queries), "night": sum("/night/" in n for n in queries)}
    if night_db:
        counts["db_night"] = len(night_db)
    # written last: its presence marks a complete dataset
    write_json(meta_path, {"generator": "datasets.synthetic_town", "version": GENERATOR_VERSION,
                           "preset": preset, "seed": seed, "params": content, "counts": counts,
                           "scene": scene.stats(),
                           "sun_direction": scene.sun.tolist(),
                           "buildings_xyxyh": np.round(scene.layout.buildings, 4).tolist()})
    if progress:
        print(f"scene built in {t_scene:.1f} s; {len(plan) + len(night_db)} images in "
              f"{time.perf_counter() - t0:.1f} s total")
    return out


def render_night_database(out_dir: str | Path, preset: str, seed: int = 0, progress: bool = True,
                          **overrides) -> list[Path]:
    """Add the night renderings of the database (`db/<stem>_cyclegan.jpg`) to an already
    generated dataset in `out_dir`; return the paths written.

    The scene is rebuilt from the parameters its scene.json records (`overrides` may set
    night_db_scale and workers; any other parameter must match), and its database cameras are
    checked against the dataset's reference poses. Only renderings that are missing, or whose
    size is not the expected one, are rendered: the images, poses and lists of the dataset are
    left byte for byte as they are, so anything computed from them stays valid. scene.json (the
    night parameters and count) and contact_sheet.png (its "database at night" row) are updated.
    Re-running it when nothing is missing changes nothing.
    """
    from mmcrossvit.layout import Dataset
    out = Path(out_dir)
    meta_path = out / "scene.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} not found: {out} is not a complete synthetic dataset; "
                                f"generate it first (datasets.synthetic_town.generate)")
    old = read_json(meta_path)
    if (old.get("version"), old.get("preset"), old.get("seed")) != (GENERATOR_VERSION, preset, seed):
        raise ValueError(f"{meta_path} records generator version {old.get('version')}, preset {old.get('preset')!r} "
                         f"and seed {old.get('seed')}, not {GENERATOR_VERSION}, {preset!r} and {seed}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not overrides.get("night_db", True):
        raise ValueError("render_night_database renders the night database; night_db=False makes no sense here")
    cfg = scene_params(preset, {**(old.get("params") or {}), **overrides, "night_db": True})
    changed = sorted(k for k in cfg if k not in NON_CONTENT and k not in NIGHT_PARAMS
                     and (old.get("params") or {}).get(k) != cfg[k])
    if changed:
        raise ValueError(f"{', '.join(changed)} would change the scene recorded in {meta_path}; only "
                         f"{', '.join(NIGHT_PARAMS[1:] + tuple(NON_CONTENT))} may be overridden here")
    content = {k: v for k, v in cfg.items() if k not in NON_CONTENT}

    t0 = time.perf_counter()
    scene = build_scene(seed, preset, progress=progress, **content)
    plan = plan_cameras(scene, seed)
    _, poses = Dataset(out).reference
    for k in _night_db_jobs(plan):
        name, _, pose, _ = plan[k]
        if name not in poses or np.abs(poses[name].center - pose.center).max() > 1e-3 \
                or np.abs(poses[name].R - pose.R).max() > 1e-4:
            raise ValueError(f"the rebuilt scene's camera {name!r} is not the one in {out}'s reference "
                             f"poses: this generator no longer reproduces the dataset; regenerate it instead")
    scale = float(cfg["night_db_scale"])
    todo = []
    for k in _night_db_jobs(plan):
        name, cam, _, _ = plan[k]
        path = out / IMAGES / night_db_name(name)
        want = night_db_camera(cam, scale)
        if path.is_file():
            img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if img is not None and img.shape == (want.height, want.width):
                continue
        todo.append(k)
    written = [out / IMAGES / night_db_name(plan[k][0]) for k in todo]
    if todo:
        _render_views(out, scene, plan, seed, cfg, [], todo, f"rendering {preset} database at night", progress)
    meta = {**old, "params": content,
            "counts": {**(old.get("counts") or {}), "db_night": _night_db_count(out, plan)}}
    if meta != old:
        write_json(meta_path, meta)
    if todo or meta != old:
        with atomic_path(out / "contact_sheet.png") as tmp:
            cv2.imwrite(str(tmp), contact_sheet(out, plan))
    if progress:
        print(f"{out}: {len(todo)} night database renderings added, "
              f"{len(_night_db_jobs(plan)) - len(todo)} already there ({time.perf_counter() - t0:.1f} s)")
    return written
