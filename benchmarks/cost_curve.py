r"""The cost curve of the whole pipeline: time, peak memory and disk of every step against the database size.

    # the measured run -> benchmarks/results/cost_curve.{md,json,png}
    python benchmarks/cost_curve.py --sizes 100 300 1000
    # a smoke run (minutes), marked SMOKE RUN
    python benchmarks/cost_curve.py --sizes 24 48 72 --width 320 --height 240 --supersample 1 \
        --work /tmp/cc --out /tmp/cc/report

For each size n (database images) it generates a synthetic town (datasets/synthetic_town) with n
database images and day / night queries in Aachen Day-Night's proportion (922 queries for 4,328
database images, 98 of them at night), then runs the chain a user runs, each step as its own
subprocess with the user's command line (`--preset demo`, nothing else except where said):

    generate    python -m datasets.synthetic_town  --night-db false (no night renderings of the database)
    preprocess  preprocessing.py                   SIFT, pairs from poses, matching, triangulation, spatial DB
    tokens      generate_RoPE_embeddings.py
    teacher     train_multimodal_crossvit_teacher.py     --stop-after 1 --val-every 1 (one epoch, one validation)
    student     train_knowledge_distillation_student.py  --stop-after 1 --val-every 1
    pairs       generate_localization_pairs.py
    localize    localize.py
    evaluate    evaluate.py

The trainers have no step limit, only --stop-after N epochs (one epoch is about 0.8 n / 16 steps),
so each runs --train-epochs epochs (default 1) and one validation, and its summary.json splits its
time into set-up (process start to the first step: spatial DB, image cache and, for the student, the
teacher's embeddings of the database), training (seconds per optimisation step = training seconds /
steps) and validation + checkpoint; the preset's whole training budget is extrapolated from them.

The town grows with n (--town scaled, the default): blocks are added so that the database images
stay as dense along the streets as in the demo (300 images in 4 x 4 blocks), as in a city; --town
fixed keeps the demo's blocks and packs the images closer.

Per step: wall time; peak memory, the larger of os.wait4's ru_maxrss (the step's largest single
process, its reaped worker processes included) and the peak of the summed PSS of its whole process
tree sampled every 0.2 s; disk added under the size's dataset, outputs and DataBase folders. The
start-up of each script (`<script> --help`: interpreter and imports) is measured once and is the
base of the fits value = base + a n^b (log-log least squares). Extrapolation to Aachen (4,328
database images, 922 queries; the SIFT part scaled by the pixel ratio of Aachen's images) and to a
100,000-image city: time from the largest size with the larger of the fitted exponent and the one
between the two largest sizes; memory from the largest size with the MB per image fitted over all
sizes; plus the memory of the quadratic terms found in the code (SUPERLINEAR).

Resumable: each finished step is recorded in <work>/state.json (with a manifest of the files it left)
and is not run again; an interrupted step is cleaned up (files not in the previous step's manifest are
removed) and run again, with the steps after it. --overwrite re-runs the given sizes from scratch,
--report-only rewrites the report from state.json. A run whose largest size is below 1,000 images or
whose images are smaller than 640 x 480 is marked SMOKE RUN in every output.

Duration, from the demo's step times (README) and the smoke run: about 40 minutes for 100 300 1000 on
an idle 2-core machine (generation about half of it), about 45 minutes more for 2000.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from report import ROOT, finish, machine_info, markdown_table, parser, write_report

STEPS = ("generate", "preprocess", "tokens", "teacher", "student", "pairs", "localize", "evaluate")
SCRIPTS = {"preprocess": "preprocessing.py", "tokens": "generate_RoPE_embeddings.py",
           "teacher": "train_multimodal_crossvit_teacher.py", "student": "train_knowledge_distillation_student.py",
           "pairs": "generate_localization_pairs.py", "localize": "localize.py", "evaluate": "evaluate.py"}
TRAINERS = ("teacher", "student")
AACHEN = {"name": "Aachen Day-Night", "db": 4328, "queries": 922, "night": 98, "width": 1600, "height": 1200}
CITY = {"name": "100k-image city", "db": 100_000}
MEMORY_LIMIT_MB = 8192
WORSE_THAN_LINEAR = 1.3
SAMPLE_S = 0.2
MB = 2 ** 20

# Where a step's time or memory grows faster than the number of images, from reading the code
# (not measured here unless the exponent shows it): what, where, and its bytes / operations per n.
SUPERLINEAR = [
    ("preprocess", "mmcrossvit/sfm.py pairs_from_poses",
     "dense n x n camera-distance matrix (C[:, None] - C[None] is n x n x 3 float64, squared, the norm, "
     "the n x n cosines, clip, argsort int64): O(n^2) memory and O(n^2 log n) time (on synthetic poses at "
     "n = 4,328: 1.15 GB above the process, 8 s on a busy 2-core machine, i.e. 61 n^2 bytes); a k-d tree "
     "or a chunked top-k would be O(n k)",
     lambda n: 61.0 * n * n),
    ("teacher", "mmcrossvit/train/validation.py retrieval",
     "torch.cdist of the held-out fold (n/5) against all n images, clean and night: O(n^2) time, "
     "0.2 n^2 float32 per call (not chunked); train/negatives.py sample_negatives also makes a dense "
     "1024 x n mask / weights per chunk of anchors every epoch (O(n^2) time, O(n) memory)",
     lambda n: 0.2 * n * n * 4.0),
    ("student", "mmcrossvit/train/validation.py retrieval; steps/student.py distance_samples",
     "the same validation cdist (0.2 n^2 float32), plus a dense length-n negative mask per training "
     "anchor in distance_samples (O(n^2) time, O(n) memory)",
     lambda n: 0.2 * n * n * 4.0),
    ("pairs", "mmcrossvit/steps/pairs.py main (retrieval.topk of the database against itself)",
     "database-to-database ranking for the retrieval tables: n x n inner products of 1000-D descriptors "
     "(O(n^2 d) time; the pairs the pipeline uses need only the queries' ranking), memory one chunk of "
     "rows against all n at a time (4096 x n float32)",
     lambda n: 4096.0 * n * 4.0),
    ("evaluate", "mmcrossvit/evaluation.py gt_covisibility",
     "for every query, np.isin of every database image's 3D points against the points visible from the "
     "true pose, and a projection of all 3D points: O(queries x observations) = O(n^2) time with "
     "queries in proportion to n",
     lambda n: 0.0),
]


# ---------------------------------------------------------------------------------------------
# command line

def parse_args(argv=None):
    p = parser(__doc__, "cost_curve", threads=False)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000], help="database sizes (images)")
    p.add_argument("--queries-per-db", type=float, default=AACHEN["queries"] / AACHEN["db"],
                   help="queries per database image (default: Aachen's 922 / 4,328 = 0.213)")
    p.add_argument("--night-fraction", type=float, default=AACHEN["night"] / AACHEN["queries"],
                   help="fraction of the queries at night (default: Aachen's 98 / 922 = 0.106)")
    from mmcrossvit.presets import PRESETS
    p.add_argument("--preset", choices=list(PRESETS), default="demo", help="preset of every step (default: demo)")
    p.add_argument("--scene-preset", default=None,
                   help="scene preset of the generator (default: --preset if it has a scene, else demo)")
    p.add_argument("--width", type=int, default=None, help="image width (default: the scene preset's, 640)")
    p.add_argument("--height", type=int, default=None, help="image height (default: the scene preset's, 480)")
    p.add_argument("--supersample", type=int, default=None,
                   help="generator anti-aliasing factor (default: the scene preset's, 2; 1 traces a quarter "
                        "of the rays)")
    p.add_argument("--gen-workers", type=int, default=None,
                   help="rendering threads of the generator (default: the scene preset's)")
    p.add_argument("--town", choices=["scaled", "fixed"], default="scaled",
                   help="scaled: the town grows with n at the demo's image density; fixed: the demo's blocks")
    p.add_argument("--train-epochs", type=int, default=1, help="epochs each trainer runs (--stop-after)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes and of every step")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "cost_curve",
                   help="work folder (git-ignored): datasets, outputs, DataBase, logs, state.json")
    p.add_argument("--overwrite", action="store_true", help="re-run the given sizes from scratch")
    p.add_argument("--report-only", action="store_true", help="only write the report from what state.json holds")
    p.add_argument("--clean", action="store_true",
                   help="delete a size's dataset and outputs once all its steps are recorded (saves disk)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# scene sizes

def scene_config(args) -> dict:
    from mmcrossvit.presets import PRESETS
    name = args.scene_preset or (args.preset if PRESETS[args.preset]["generate"] is not None else "demo")
    base = dict(PRESETS[name]["generate"])
    return {"preset": name, "base": base,
            "width": args.width or base["width"], "height": args.height or base["height"],
            "supersample": args.supersample or base["supersample"],
            "workers": args.gen_workers or base["workers"]}


def street_length(bx: int, by: int, block: float, street: float) -> float:
    """Length of the inner streets the database cameras walk (datasets/synthetic_town/cameras.py)."""
    ex, ey = bx * block + (bx + 1) * street, by * block + (by + 1) * street
    if bx < 2 and by < 2:
        return 2 * (ex + ey)
    return (bx - 1) * (ey - 2 * street) + (by - 1) * (ex - 2 * street)


def town_blocks(n: int, base: dict, mode: str) -> tuple[int, int]:
    """Blocks (x, y) that keep the scene preset's database images per metre of street."""
    if mode == "fixed":
        return base["blocks_x"], base["blocks_y"]
    B, W = base["block_size"], base["street_width"]
    density = base["num_db"] / street_length(base["blocks_x"], base["blocks_y"], B, W)
    best = None
    for bx in range(2, 200):
        for by in (bx, bx + 1):
            err = abs(math.log(n / (density * street_length(bx, by, B, W))))
            if best is None or err < best[0]:
                best = (err, bx, by)
        if density * street_length(bx, bx, B, W) > 2 * n:
            break
    return best[1], best[2]


def size_config(n: int, args, scene: dict) -> dict:
    queries = max(2, round(n * args.queries_per_db))
    night = max(1, round(queries * args.night_fraction))
    bx, by = town_blocks(n, scene["base"], args.town)
    return {"db": n, "day": queries - night, "night": night, "blocks_x": bx, "blocks_y": by,
            "width": scene["width"], "height": scene["height"], "supersample": scene["supersample"],
            "scene_preset": scene["preset"], "preset": args.preset, "seed": args.seed,
            "train_epochs": args.train_epochs, "town": args.town}


# ---------------------------------------------------------------------------------------------
# measuring one subprocess

def _tree_memory(pid: int) -> tuple[float, float, int]:
    """(summed RSS, summed PSS, processes) of a process and its descendants, in bytes."""
    import psutil
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0.0, 0.0, 0
    rss = pss = 0.0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            try:
                r = p.memory_info().rss
                rss, pss = rss + r, pss + r
            except psutil.Error:
                pass
    return rss, pss, len(procs)


def _end_group(proc: subprocess.Popen) -> None:
    """Stop a step started by run_measured and every process of its group (its workers)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run `cmd` (stdout + stderr to `log`): wall time, ru_maxrss of the process (os.wait4: its own
    and its reaped descendants' largest), and the sampled peak of the whole tree's RSS and PSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    peak = {"rss": 0.0, "pss": 0.0, "procs": 0}
    stop = threading.Event()
    with open(log, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        t0 = time.perf_counter()
        # its own process group: an interrupted benchmark ends the step and its worker processes
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

        def sample():
            while not stop.is_set():
                rss, pss, k = _tree_memory(proc.pid)
                peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
                peak["procs"] = max(peak["procs"], k)
                stop.wait(SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _end_group(proc)
            raise
        finally:
            stop.set()
        wall = time.perf_counter() - t0
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss = usage.ru_maxrss / 1024  # KiB on Linux
    return {"seconds": round(wall, 3), "rc": proc.returncode, "maxrss_mb": round(maxrss, 1),
            "tree_rss_peak_mb": round(peak["rss"] / MB, 1), "tree_pss_peak_mb": round(peak["pss"] / MB, 1),
            "peak_mb": round(max(maxrss, peak["pss"] / MB), 1), "processes": peak["procs"],
            "user_cpu_s": round(usage.ru_utime, 2), "system_cpu_s": round(usage.ru_stime, 2)}


# ---------------------------------------------------------------------------------------------
# the folders of one size

class SizeRun:
    def __init__(self, work: Path, n: int):
        self.work, self.n = work, n
        self.name = f"n{n}"
        self.dataset = work / "datasets" / self.name
        self.outputs, self.database_root = work / "outputs", work / "DataBase"
        self.out, self.database = self.outputs / self.name, self.database_root / self.name

    @property
    def roots(self) -> list[Path]:
        return [self.dataset, self.out, self.database]

    def run_args(self, preset: str) -> list[str]:
        return ["--dataset", str(self.dataset), "--preset", preset, "--outputs", str(self.outputs),
                "--database-root", str(self.database_root)]

    def files(self) -> dict[str, int]:
        """{path relative to the work folder: bytes on disk} of every file of this size."""
        out, seen = {}, set()
        for root in self.roots:
            for dirpath, _, names in os.walk(root):
                for name in names:
                    p = Path(dirpath) / name
                    try:
                        st = p.lstat()
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    out[str(p.relative_to(self.work))] = st.st_blocks * 512
        return out

    def manifest_path(self, step: str) -> Path:
        return self.work / "manifests" / f"{self.name}_{step}.json"

    def restore(self, previous: str | None) -> None:
        """Remove whatever a step after `previous` left (an interrupted or re-run step): every file
        not in `previous`'s manifest. No previous step: remove the size's folders."""
        if previous is None:
            for root in self.roots:
                shutil.rmtree(root, ignore_errors=True)
            return
        keep = set(json.loads(self.manifest_path(previous).read_text()))
        for rel in self.files():
            if rel not in keep:
                (self.work / rel).unlink(missing_ok=True)
        for root in self.roots:  # empty folders left behind
            for dirpath, dirs, files in sorted(os.walk(root), key=lambda x: -len(x[0])):
                if not dirs and not files and Path(dirpath) != root:
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        pass


def step_command(step: str, sr: SizeRun, cfg: dict) -> list[str]:
    py = sys.executable
    if step == "generate":
        return [py, "-m", "datasets.synthetic_town", "--preset", cfg["scene_preset"], "--out", str(sr.dataset),
                "--seed", str(cfg["seed"]), "--quiet", "--num-db", str(cfg["db"]), "--num-day", str(cfg["day"]),
                "--num-night", str(cfg["night"]), "--night-db", "false", "--width", str(cfg["width"]),
                "--height", str(cfg["height"]), "--supersample", str(cfg["supersample"]),
                "--blocks-x", str(cfg["blocks_x"]), "--blocks-y", str(cfg["blocks_y"]),
                "--workers", str(cfg["gen_workers"])]
    cmd = [py, SCRIPTS[step], *sr.run_args(cfg["preset"]), "--seed", str(cfg["seed"])]
    if step in TRAINERS:
        cmd += ["--stop-after", str(cfg["train_epochs"]), "--val-every", str(cfg["train_epochs"])]
    return cmd


def startup_command(step: str) -> list[str]:
    if step == "generate":
        return [sys.executable, "-m", "datasets.synthetic_town", "--help"]
    return [sys.executable, SCRIPTS[step], "--help"]


# ---------------------------------------------------------------------------------------------
# details read back from a finished step

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _log_times(log: Path, marks: dict[str, str]) -> dict[str, float]:
    """Seconds since the epoch of the first logging line (asctime) containing each mark."""
    from datetime import datetime
    found = {}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        if len(line) < 23 or line[4] != "-" or line[19] != ",":
            continue
        try:
            t = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        for key, mark in marks.items():
            if key not in found and mark in line:
                found[key] = t
    return found


def step_details(step: str, sr: SizeRun, row: dict, log: Path) -> dict:
    """Parts of a step's time (from its logs and summaries) and what it produced."""
    d: dict = {}
    if step == "preprocess":
        t = _log_times(log, {"start": "preprocessing INFO dataset ", "features": "preprocessing INFO features: ",
                             "pairs": " database pairs -> ", "sfm": "preprocessing INFO SfM: ",
                             "spatial_db": "preprocessing INFO spatial database: "})
        order = ["start", "features", "pairs", "sfm", "spatial_db"]
        if all(k in t for k in order):
            d["parts"] = {"SIFT features": t["features"] - t["start"], "pairs from poses": t["pairs"] - t["features"],
                          "matching + triangulation": t["sfm"] - t["pairs"],
                          "spatial database": t["spatial_db"] - t["sfm"]}
        s = _read_json(sr.out / "sfm_summary.json") or {}
        st = _read_json(sr.database / "stats.json") or {}
        d["sfm"] = {k: s.get(k) for k in ("registered_images", "points", "observations", "mean_track_length")}
        d["sfm"]["pairs"] = (s.get("matching") or {}).get("pairs") if isinstance(s.get("matching"), dict) else None
        ppa = st.get("positives_per_anchor")
        d["positives_per_anchor"] = ppa.get("mean") if isinstance(ppa, dict) else None
        d["features_per_image"] = _features_per_image(sr.out / "features.h5")
    elif step in TRAINERS:
        s = _read_json(sr.out / step / "summary.json")
        if s:
            fit_wall, train, steps = s.get("wall_seconds"), s.get("train_seconds"), s.get("steps")
            d["steps"], d["epochs_done"], d["epochs"] = steps, s.get("epochs_done"), s.get("epochs")
            if fit_wall is not None and train is not None:
                d["parts"] = {"set-up": row["seconds"] - fit_wall, "training": train,
                              "validation + checkpoint": fit_wall - train}
                if steps:
                    d["seconds_per_step"] = train / steps
        if step == "student":
            import re
            m = re.search(r"embeddings in ([0-9.]+) s", log.read_text(errors="replace")) if log.exists() else None
            if m:
                d["teacher_embeddings_s"] = float(m.group(1))
    elif step == "localize":
        s = _read_json(sr.out / "localization_summary.json") or {}
        d["queries"], d["localized"] = s.get("queries"), s.get("localized")
        per = []
        try:
            for line in (sr.out / "localization_log.jsonl").read_text().splitlines():
                r = json.loads(line)
                tt = r.get("time") or r.get("times") or {}
                if isinstance(tt, dict) and "total" in tt:
                    per.append(float(tt["total"]))
                elif isinstance(tt, (int, float)):
                    per.append(float(tt))
        except (OSError, ValueError):
            pass
        if per:
            d["seconds_per_query_median"] = float(np.median(per))
    return d


def _features_per_image(path: Path):
    try:
        import h5py
        counts = []
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and name.endswith("keypoints"):
                    counts.append(obj.shape[0])
            f.visititems(visit)
        return round(float(np.mean(counts)), 1) if counts else None
    except Exception:  # noqa: BLE001 (an optional detail; the format belongs to mmcrossvit.features)
        return None


# ---------------------------------------------------------------------------------------------
# running

def load_state(work: Path) -> dict:
    s = _read_json(work / "state.json")
    return s if isinstance(s, dict) else {"sizes": {}, "startup": {}}


def save_state(work: Path, state: dict) -> None:
    from mmcrossvit.storage import write_json
    write_json(work / "state.json", state)


def measure_startup(state: dict, work: Path) -> None:
    for step in STEPS:
        if step in state["startup"]:
            continue
        runs = [run_measured(startup_command(step), work / "logs" / f"startup_{step}.log") for _ in range(2)]
        best = min(runs, key=lambda r: r["seconds"])
        state["startup"][step] = {"seconds": best["seconds"], "peak_mb": min(r["peak_mb"] for r in runs)}
        print(f"start-up of {step}: {best['seconds']:.2f} s, {state['startup'][step]['peak_mb']:.0f} MB", flush=True)
        save_state(work, state)


def run_size(n: int, args, scene: dict, state: dict) -> bool:
    """Measure the steps of size n that are not recorded yet; whether any was."""
    work = args.work
    sr = SizeRun(work, n)
    cfg = {**size_config(n, args, scene), "gen_workers": scene["workers"]}
    key = str(n)
    entry = state["sizes"].get(key)
    same = entry is not None and {k: v for k, v in entry["config"].items() if k != "gen_workers"} == \
        {k: v for k, v in cfg.items() if k != "gen_workers"}
    if args.overwrite or (entry is not None and not same):
        if entry is not None and not same and not args.overwrite:
            raise SystemExit(f"size {n} in {work}/state.json was measured with other settings "
                             f"({entry['config']}); pass --overwrite or use another --work")
        entry = None
    if entry is None:
        entry = state["sizes"][key] = {"config": cfg, "steps": {}}
        sr.restore(None)
        save_state(work, state)
    print(f"== n = {n}: {cfg['db']} database images, {cfg['day']} day + {cfg['night']} night queries, "
          f"{cfg['blocks_x']} x {cfg['blocks_y']} blocks, {cfg['width']}x{cfg['height']}", flush=True)
    ran = False
    for i, step in enumerate(STEPS):
        if step in entry["steps"]:
            continue
        ran = True
        # a step is measured from a clean start: remove what an interrupted attempt left, and
        # forget the later steps (they run on this step's new outputs)
        for later in STEPS[i:]:
            entry["steps"].pop(later, None)
        sr.restore(STEPS[i - 1] if i else None)
        before = sr.files()
        log = work / "logs" / f"{sr.name}_{step}.log"
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        print(f"   {step} ...", end="", flush=True)
        row = run_measured(step_command(step, sr, cfg), log)
        if row["rc"] != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise SystemExit(f"\n{step} failed for n = {n} (exit {row['rc']}); log {log}:\n{tail}")
        after = sr.files()
        row.update(disk_added_mb=round((sum(after.values()) - sum(before.values())) / MB, 2),
                   disk_total_mb=round(sum(after.values()) / MB, 2), load_1m_at_start=load,
                   **step_details(step, sr, row, log))
        sr.manifest_path(step).parent.mkdir(parents=True, exist_ok=True)
        sr.manifest_path(step).write_text(json.dumps(sorted(after)))
        entry["steps"][step] = row
        save_state(work, state)
        print(f" {row['seconds']:.1f} s, peak {row['peak_mb']:.0f} MB, +{row['disk_added_mb']:.1f} MB", flush=True)
    if args.clean:
        for root in sr.roots:
            shutil.rmtree(root, ignore_errors=True)
    return ran


# ---------------------------------------------------------------------------------------------
# fits and extrapolation

def fit_power(ns, ys) -> dict | None:
    """Least squares of log y = log a + b log n over the points with y > 0."""
    pts = [(float(n), float(y)) for n, y in zip(ns, ys) if y is not None and y > 0]
    if len({n for n, _ in pts}) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    b, loga = np.polyfit(x, y, 1)
    pred = loga + b * x
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else 1.0
    return {"a": float(math.exp(loga)), "b": float(b), "r2": r2, "points": [[n, y] for n, y in pts]}


def growth(b: float | None) -> str:
    if b is None:
        return "-"
    if b <= 1.15:
        return "linear or better"
    if b <= WORSE_THAN_LINEAR:
        return "~ n log n"
    if b < 1.75:
        return "worse than linear"
    return "~ quadratic or worse"


def curve(ns: list[int], values: list[float], base: float, small_limit: float) -> dict:
    """A measured series against n: the power fit of (value - base), the exponent between the two
    largest sizes, and whether the largest size is too little above `base` to tell any growth."""
    y = [v - base for v in values]
    c = {"values": {str(n): v for n, v in zip(ns, values)}, "base": base, "fit": fit_power(ns, y),
         "b_last": None, "small": y[-1] < small_limit}
    if len(ns) >= 2 and y[-1] > 0 and y[-2] > 0:
        c["b_last"] = math.log(y[-1] / y[-2]) / math.log(ns[-1] / ns[-2])
    bs = [b for b in ((c["fit"] or {}).get("b"), c["b_last"]) if b is not None]
    c["b_ext"] = max(0.0, *bs) if bs else None  # a cost does not shrink as n grows: below 0 is noise
    return c


def grows_worse(c: dict | None) -> bool:
    return bool(c) and not c["small"] and c["fit"] is not None and c["b_ext"] is not None \
        and min(c["fit"]["b"], c["b_last"] if c["b_last"] is not None else c["fit"]["b"]) > WORSE_THAN_LINEAR


def extend_time(c: dict | None, N: float) -> float | None:
    """Time at N: base + (value - base at the largest size) x (N / n)^b, with b the larger of the
    fitted exponent and the one between the two largest sizes (a constant hidden in small sizes
    makes the fit too flat); linear where the largest size is too little above base to tell."""
    if not c:
        return None
    n_l = max(int(k) for k in c["values"])
    y = c["values"][str(n_l)] - c["base"]
    if y <= 0:
        return c["values"][str(n_l)]
    b = 1.0 if c["small"] or c["b_ext"] is None else c["b_ext"]
    return c["base"] + y * (N / n_l) ** b


def memory_slope(c: dict) -> float | None:
    """MB per database image: least squares of memory = m + slope n over every size (not below 0)."""
    ns = sorted(int(k) for k in c["values"])
    if len(ns) < 2:
        return None
    return max(0.0, float(np.polyfit(ns, [c["values"][str(n)] for n in ns], 1)[0]))


def extend_memory(c: dict | None, N: float) -> float | None:
    """Memory at N: the largest size's, plus the fitted MB per image times the images added; the
    power law as for time where memory itself grows faster than linearly, whichever is larger."""
    if not c:
        return None
    ns = sorted(int(k) for k in c["values"])
    v = [c["values"][str(n)] for n in ns]
    if len(ns) < 2:
        return v[-1]
    out = v[-1] + memory_slope(c) * (N - ns[-1])
    if grows_worse(c):
        out = max(out, c["base"] + (v[-1] - c["base"]) * (N / ns[-1]) ** c["b_ext"])
    return out


def analyse(state: dict, args) -> dict:
    sizes = sorted(n for n in set(args.sizes) if state["sizes"].get(str(n), {}).get("steps"))
    rows = {n: state["sizes"][str(n)]["steps"] for n in sizes}
    start = state.get("startup", {})
    fits: dict = {}
    for step in STEPS:
        have = [n for n in sizes if step in rows[n]]
        if not have:
            continue
        t0, m0 = start.get(step, {}).get("seconds", 0.0), start.get(step, {}).get("peak_mb", 0.0)
        f = {"sizes": have, "t0": t0, "m0": m0,
             # too little above start-up to say anything about growth: under 1 s (or a quarter of
             # the start-up) / under 20 MB at the largest size
             "time": curve(have, [rows[n][step]["seconds"] for n in have], t0, max(1.0, 0.25 * t0)),
             "memory": curve(have, [rows[n][step]["peak_mb"] for n in have], m0, 20.0),
             "disk": curve(have, [rows[n][step]["disk_added_mb"] for n in have], 0.0, 1.0), "parts": {}}
        parts = {}
        for n in have:
            for k, v in (rows[n][step].get("parts") or {}).items():
                parts.setdefault(k, {})[n] = v
        for k, v in parts.items():
            ns = sorted(v)
            f["parts"][k] = curve(ns, [v[n] for n in ns], 0.0, 1.0)
        fits[step] = f
    return {"sizes": sizes, "fits": fits}


def pixel_ratio(cfg: dict, preset: str) -> dict:
    """Pixels SIFT sees per Aachen image over ours, under the preset's max_image_size."""
    from mmcrossvit.presets import step_settings
    cap = step_settings(preset, "preprocess")["max_image_size"]

    def eff(w, h):
        s = min(1.0, cap / max(w, h))
        return w * s * h * s
    return {"cap": cap, "ours": eff(cfg["width"], cfg["height"]), "aachen": eff(AACHEN["width"], AACHEN["height"]),
            "ratio": eff(AACHEN["width"], AACHEN["height"]) / eff(cfg["width"], cfg["height"])}


def training_budget(step: str, preset: str) -> dict:
    """The preset's full training: epochs, validations and (teacher) hard-negative refreshes."""
    from mmcrossvit.presets import step_settings
    s = step_settings(preset, step)
    E, ve = int(s["epochs"]), int(s.get("val_every") or 0)
    vals = {e for e in range(1, E + 1) if (ve and e % ve == 0) or e == E}
    refresh = 0
    if step == "teacher" and s.get("negatives") != "uniform" and s.get("refresh_every"):
        refresh = sum(1 for e in range(1, E) if e % int(s["refresh_every"]) == 0 and e not in vals)
    return {"epochs": E, "validations": len(vals), "refreshes": refresh}


def extrapolate(analysis: dict, state: dict, args) -> dict:
    fits, sizes = analysis["fits"], analysis["sizes"]
    largest = sizes[-1]
    cfg = state["sizes"][str(largest)]["config"]
    px = pixel_ratio(cfg, cfg["preset"])
    # localization is per query: at Aachen's ratio of queries to database images
    q_ratio = (AACHEN["queries"] / AACHEN["db"]) / args.queries_per_db
    targets = {"aachen": AACHEN["db"], "city": CITY["db"]}
    out = {"pixel_ratio": px, "query_ratio_scale": q_ratio, "steps": {}}
    for step, f in fits.items():
        e = {}
        for tname, N in targets.items():
            t = extend_time(f["time"], N)
            note = []
            if t is not None and step == "preprocess" and tname == "aachen" and "SIFT features" in f["parts"]:
                sift = extend_time(f["parts"]["SIFT features"], N)
                if sift is not None:
                    t += sift * (px["ratio"] - 1)
                    note.append(f"SIFT part x{px['ratio']:.2f} (pixels)")
            if t is not None and step == "localize" and abs(q_ratio - 1) > 1e-3:
                t = f["t0"] + (t - f["t0"]) * q_ratio
                note.append(f"x{q_ratio:.2f} for Aachen's queries per image")
            e[tname] = {"seconds": t, "peak_mb": extend_memory(f["memory"], N), "note": "; ".join(note)}
            if step in TRAINERS and "training" in f["parts"]:
                b = training_budget(step, cfg["preset"])
                setup = extend_time(f["parts"].get("set-up"), N)
                train = extend_time(f["parts"]["training"], N)
                val = extend_time(f["parts"].get("validation + checkpoint"), N)
                if None not in (setup, train, val):
                    per_epoch = train / cfg["train_epochs"]
                    e[tname]["budget_seconds"] = setup + b["epochs"] * per_epoch + \
                        (b["validations"] + b["refreshes"]) * val
                    e[tname]["budget"] = b
        out["steps"][step] = e
    return out


# ---------------------------------------------------------------------------------------------
# report

def fmt_s(v) -> str:
    if v is None:
        return "-"
    if v >= 3600 * 48:
        return f"{v / 86400:,.1f} d"
    if v >= 3600:
        return f"{v / 3600:,.1f} h"
    if v >= 120:
        return f"{v / 60:,.1f} min"
    return f"{v:,.1f} s"


def fmt_mb(v) -> str:
    if v is None:
        return "-"
    return f"{v / 1024:,.1f} GB" if v >= 10240 else f"{v:,.0f} MB"


def fmt_b(c: dict | None) -> str:
    """The fitted exponent, and the one between the two largest sizes in brackets."""
    if not c or c["fit"] is None:
        return "-"
    out = f"{c['fit']['b']:.2f}"
    if c["b_last"] is not None and len(c["values"]) > 2:
        out += f" ({c['b_last']:.2f})"
    return out


def growth_of(c: dict | None) -> str:
    if not c or c["fit"] is None:
        return "-"
    if c["small"]:
        return "too small to tell"
    return growth(c["b_ext"])


def command_line(args) -> str:
    parts = ["python benchmarks/cost_curve.py", "--sizes " + " ".join(map(str, args.sizes))]
    defaults = parse_args([])
    for flag in ("queries_per_db", "night_fraction", "preset", "scene_preset", "width", "height", "supersample",
                 "gen_workers", "town", "train_epochs", "seed"):
        v = getattr(args, flag)
        if v != getattr(defaults, flag):
            parts.append(f"--{flag.replace('_', '-')} {v}")
    if Path(args.work).resolve() != Path(defaults.work).resolve():
        parts.append(f"--work {args.work}")
    if Path(args.out).resolve() != Path(defaults.out).resolve():
        parts.append(f"--out {args.out}")
    return " ".join(parts)


def is_smoke(state: dict, sizes: list[int]) -> bool:
    if not sizes or max(sizes) < 1000:
        return True
    cfg = state["sizes"][str(max(sizes))]["config"]
    return cfg["width"] * cfg["height"] < 640 * 480


def plot(analysis: dict, state: dict, path: Path, smoke: bool) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mmcrossvit.storage import atomic_path
    fits = analysis["fits"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, step in enumerate(STEPS):
        if step not in fits:
            continue
        f, col = fits[step], colours[k % len(colours)]
        ns = f["sizes"]
        grid = np.logspace(math.log10(ns[-1]), math.log10(CITY["db"]), 40)
        for ax, c, extend in ((axes[0], f["time"], extend_time), (axes[1], f["memory"], extend_memory)):
            ys = [c["values"][str(n)] for n in ns]
            b = c["b_ext"]
            label = step + (f" (b={b:.2f})" if b is not None and not c["small"] else "")
            ax.plot(ns, ys, marker="o", color=col, label=label, lw=1.6, ls=":" if step == "generate" else "-")
            if len(ns) >= 2:
                ax.plot(grid, [extend(c, N) for N in grid], "--", color=col, lw=1, alpha=0.8)
    for ax, title, unit in ((axes[0], "wall time per step", "seconds"), (axes[1], "peak memory per step", "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("database images n (queries in proportion)")
        ax.set_ylabel(unit)
        ax.set_title(title + (" — SMOKE RUN" if smoke else ""))
        ax.grid(alpha=0.3, which="both")
    axes[1].axhline(MEMORY_LIMIT_MB, color="red", ls=":", lw=1)
    for ax in axes:
        top = ax.get_ylim()[1]
        for N, name in ((AACHEN["db"], "Aachen 4,328"), (CITY["db"], "100k")):
            ax.axvline(N, color="grey", ls="--", lw=0.8)
            ax.text(N, top, f"{name} ", va="top", ha="right", fontsize=8, color="grey", rotation=90)
    axes[1].text(axes[1].get_xlim()[0], MEMORY_LIMIT_MB, " 8 GB", color="red", fontsize=8, va="bottom")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Pipeline cost curve: measured (points, solid) and extrapolated (dashed; the generator's town is "
                 "synthetic data only)" + ("\nSMOKE RUN: not the measured curve" if smoke else ""), fontsize=10,
                 color="red" if smoke else "black")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def report(state: dict, args, quiet: bool = False) -> dict:
    analysis = analyse(state, args)
    sizes = analysis["sizes"]
    if not sizes:
        raise SystemExit(f"nothing measured yet in {args.work}/state.json for sizes {args.sizes}")
    extra = extrapolate(analysis, state, args)
    fits = analysis["fits"]
    smoke = is_smoke(state, sizes)
    largest = sizes[-1]
    lcfg = state["sizes"][str(largest)]["config"]
    px = extra["pixel_ratio"]
    stem = str(args.out)
    png = Path(stem + ".png")
    rows_of = lambda n: state["sizes"][str(n)]["steps"]  # noqa: E731
    cfg_of = lambda n: state["sizes"][str(n)]["config"]  # noqa: E731
    md = ["# Pipeline cost curve" + (" — SMOKE RUN" if smoke else ""), ""]
    if smoke:
        md += ["**SMOKE RUN** (largest size below 1,000 database images, or images below 640x480): these numbers "
               "only show that the script runs; they are not the cost curve. The measured run is "
               "`python benchmarks/cost_curve.py --sizes 100 300 1000`.", ""]
    info = machine_info()
    loads = [r["load_1m_at_start"] for n in sizes for r in rows_of(n).values()
             if r.get("load_1m_at_start") is not None]
    md += [f"`{command_line(args)}`", "",
           f"Machine: {info['cpu']} ({info['cpu_count']} logical CPUs), torch {info['torch']}; 1-minute load average "
           f"at the start of the steps {min(loads):.2f}-{max(loads):.2f} (each step's is in the JSON)." if loads else
           f"Machine: {info['cpu']} ({info['cpu_count']} logical CPUs).", "",
           f"Each size n is a synthetic town (scene preset `{lcfg['scene_preset']}`, {lcfg['width']}x{lcfg['height']} "
           f"images, supersample {lcfg['supersample']}, no night renderings of the database; "
           + ("the town grows with n at the demo's images per metre of street" if lcfg["town"] == "scaled"
              else "the demo's 4 x 4 blocks at every n") + ": "
           + ", ".join(f"n={n}: {cfg_of(n)['blocks_x']}x{cfg_of(n)['blocks_y']} blocks, "
                       f"{cfg_of(n)['day']}+{cfg_of(n)['night']} day+night queries" for n in sizes)
           + f"), then every step script with `--preset {lcfg['preset']}` in its own process; the trainers stop "
           f"after {lcfg['train_epochs']} epoch(s) and validate once (`--stop-after {lcfg['train_epochs']} "
           f"--val-every {lcfg['train_epochs']}`). Queries: {args.queries_per_db:.3f} per database image, "
           f"{100 * args.night_fraction:.1f}% at night (Aachen: 922 for 4,328, 98 at night).", "",
           "Peak memory is the larger of the step's ru_maxrss from os.wait4 (its largest single process, worker "
           "processes included) and the peak of the whole process tree's summed PSS sampled every 0.2 s (SIFT "
           "extraction, matching and localization run one worker process per core). Disk: bytes added under the "
           "size's dataset, outputs/ and DataBase/ folders. Start-up is `<script> --help` (interpreter and "
           "imports).", ""]

    # measured
    header = ["step", "start-up s / MB"] + [f"n={n}: s / peak MB / disk MB" for n in sizes]
    table = []
    for step in STEPS:
        if step not in fits:
            continue
        su = state["startup"].get(step, {})
        cells = [step, f"{su.get('seconds', 0):.1f} / {su.get('peak_mb', 0):.0f}"]
        for n in sizes:
            r = rows_of(n).get(step)
            cells.append("-" if r is None else f"{r['seconds']:.1f} / {r['peak_mb']:.0f} / {r['disk_added_mb']:.1f}")
        table.append(cells)
    tot = ["**all steps**", ""]
    for n in sizes:
        rs = rows_of(n)
        tot.append(f"{sum(r['seconds'] for r in rs.values()):.0f} / {max(r['peak_mb'] for r in rs.values()):.0f} / "
                   f"{sum(r['disk_added_mb'] for r in rs.values()):.0f}")
    table.append(tot)
    md += ["## Measured", "", markdown_table(header, table), ""]
    peaks = [f"{step} {fmt_mb(rows_of(largest)[step]['peak_mb'])}" for step in STEPS if step in rows_of(largest)]
    md += [f"Peak memory of each step at the largest size (n={largest:,}): " + ", ".join(peaks) + ".", ""]

    prow = []
    for step in ("preprocess", "teacher", "student"):
        if step not in fits:
            continue
        for part, pc in fits[step]["parts"].items():
            prow.append([f"{step}: {part}"] + [f"{pc['values'][str(n)]:.2f}" if str(n) in pc["values"] else "-"
                                                for n in sizes] + [fmt_b(pc), growth_of(pc)])
    if prow:
        md += ["Parts of the larger steps (seconds; preprocess from its log's timestamps, the trainers from their "
               "summary.json: set-up is process start to the first step, and the student's includes the teacher's "
               "embeddings of the database):", "",
               markdown_table(["part"] + [f"n={n}" for n in sizes] + ["exponent b (two largest)", "growth"], prow), ""]
    per_step = []
    for step in TRAINERS:
        cells = [f"n={n}: {rows_of(n)[step]['seconds_per_step']:.3f} s ({rows_of(n)[step]['steps']} steps)"
                 for n in sizes if rows_of(n).get(step, {}).get("seconds_per_step")]
        if cells:
            per_step.append(f"{step} " + ", ".join(cells))
    if per_step:
        md += ["Seconds per optimisation step (should not depend on n): " + "; ".join(per_step) + ".", ""]
    produced = []
    for n in sizes:
        r = rows_of(n)
        pre, loc = r.get("preprocess", {}), r.get("localize", {})
        sfm = pre.get("sfm") or {}
        produced.append([n, pre.get("features_per_image", "-"), sfm.get("pairs", "-"), sfm.get("points", "-"),
                         sfm.get("observations", "-"),
                         f"{pre['positives_per_anchor']:.1f}" if pre.get("positives_per_anchor") else "-",
                         f"{loc.get('localized', '-')}/{loc.get('queries', '-')}"])
    md += ["What each size produced:", "",
           markdown_table(["n", "SIFT features / image", "db pairs", "3D points", "observations",
                           "positives / anchor", "localized / queries"], produced), ""]

    # growth
    frow, flagged = [], []
    for step in STEPS:
        if step not in fits:
            continue
        f = fits[step]
        mem = f["memory"]
        ns = f["sizes"]
        slope = "-" if len(ns) < 2 else f"{1000 * memory_slope(mem):,.0f}"
        frow.append([step, fmt_b(f["time"]), f"{f['time']['fit']['r2']:.3f}" if f["time"]["fit"] else "-",
                     growth_of(f["time"]), fmt_b(mem), growth_of(mem), slope, fmt_b(f["disk"])])
        if grows_worse(f["time"]):
            flagged.append(step)
    md += ["## Growth", "",
           f"Exponent b of value = base + a·n^b, fitted in log-log space over n = {', '.join(map(str, sizes))} "
           "(base: the start-up's time or memory), and in brackets the exponent between the two largest sizes. "
           "Growth: b ≤ 1.15 linear, ≤ 1.3 about n log n, above that worse than linear, ≥ 1.75 about quadratic "
           "(the larger of the two exponents); 'too small to tell' when the largest size is under 1 s (or a quarter "
           "of the start-up) / 20 MB above start-up.", "",
           markdown_table(["step", "time b", "time R²", "time growth", "memory b", "memory growth",
                           "memory MB per 1,000 images", "disk b"], frow), ""]

    # extrapolation
    erow, over = [], []
    tot = {"aachen": [0.0, 0.0], "city": [0.0, 0.0]}
    for step in STEPS:
        e = extra["steps"].get(step)
        if not e:
            continue
        a, c = e["aachen"], e["city"]
        quad = [m for s, _, _, m in SUPERLINEAR if s == step]
        for v, N in ((a, AACHEN["db"]), (c, CITY["db"])):
            v["peak_with_quadratic_term_mb"] = max(v["peak_mb"] or 0.0,
                                                   fits[step]["m0"] + (quad[0](N) / MB if quad else 0.0))
        note = [a["note"]] if a["note"] else []
        if step == "generate":
            note.append("synthetic data only: Aachen needs none (not in the totals)")
        if step in TRAINERS and a.get("budget_seconds") is not None:
            b = a["budget"]
            note.append(f"as measured ({lcfg['train_epochs']} epoch, 1 validation); the preset's whole budget "
                        f"({b['epochs']} epochs, {b['validations']} validations"
                        + (f", {b['refreshes']} hard-negative refreshes counted as validations"
                           if b["refreshes"] else "")
                        + f"): **{fmt_s(a['budget_seconds'])}** at Aachen, {fmt_s(c['budget_seconds'])} at 100k")
        if quad and a["peak_with_quadratic_term_mb"] > (a["peak_mb"] or 0) + 1:
            note.append(f"with its quadratic term (below): {fmt_mb(a['peak_with_quadratic_term_mb'])} at Aachen, "
                        f"{fmt_mb(c['peak_with_quadratic_term_mb'])} at 100k")
        erow.append([step, fmt_s(a["seconds"]), fmt_mb(a["peak_mb"]), fmt_s(c["seconds"]), fmt_mb(c["peak_mb"]),
                     "; ".join(note)])
        if step != "generate":
            for k, v in (("aachen", a), ("city", c)):
                tot[k][0] += v["budget_seconds"] if v.get("budget_seconds") is not None else (v["seconds"] or 0.0)
                tot[k][1] = max(tot[k][1], v["peak_with_quadratic_term_mb"])
            if a["peak_with_quadratic_term_mb"] > MEMORY_LIMIT_MB:
                over.append(step)
    erow.append(["**pipeline** (preprocess → evaluate; trainers at the preset's whole budget; largest peak)",
                 fmt_s(tot["aachen"][0]), fmt_mb(tot["aachen"][1]), fmt_s(tot["city"][0]), fmt_mb(tot["city"][1]), ""])
    md += ["## Extrapolation", "",
           f"Each step at Aachen Day-Night's size ({AACHEN['db']:,} database images, {AACHEN['queries']} queries) "
           f"and at a {CITY['db']:,}-image city (queries in the same proportion), on this machine: time from the "
           "largest size with the larger of the two exponents above (linear where too small to tell), memory from "
           "the largest size with the MB per image fitted over all sizes (the power law where memory grows worse "
           "than linearly). "
           f"Aachen's images are 1600x1200 where these are {lcfg['width']}x{lcfg['height']}; with "
           f"`--preset {lcfg['preset']}` SIFT sees at most {px['cap']} px a side, so the SIFT part of preprocess is "
           f"scaled by the pixel ratio {px['ratio']:.2f} ({px['aachen']:,.0f} / {px['ours']:,.0f} px), and nothing "
           "else is: matching and localization grow with the features per image (more at Aachen's resolution, "
           "capped by max_num_features), and the trainers and the pairs step decode each full-size JPEG before "
           "resizing it to 120 px, so those would cost more than this table says. The 100k column reaches "
           f"{CITY['db'] / largest:.0f}x beyond the largest measured size: an order of magnitude, not a figure.", "",
           markdown_table(["step", "Aachen time", "Aachen peak memory", "100k time", "100k peak memory", "note"],
                          erow), ""]
    if over:
        md += [f"**Above {MEMORY_LIMIT_MB // 1024} GB at Aachen's size by extrapolation: {', '.join(over)}.**", ""]
    else:
        md += [f"No step is above {MEMORY_LIMIT_MB // 1024} GB at Aachen's size by extrapolation (the quadratic "
               "terms below included).", ""]

    # worse than it needs to be
    qrow = [[step, f"`{where}`", what, fmt_mb(mem(AACHEN["db"]) / MB) if mem(AACHEN["db"]) else "-",
             fmt_mb(mem(CITY["db"]) / MB) if mem(CITY["db"]) else "-"] for step, where, what, mem in SUPERLINEAR]
    md += ["## Steps that grow worse than they need to", "",
           (f"Measured time growth worse than linear (both exponents above {WORSE_THAN_LINEAR}): "
            f"**{', '.join(flagged)}**." if flagged else
            f"No step's measured time grows worse than linear (both exponents above {WORSE_THAN_LINEAR}) over "
            "these sizes."), "",
           "Quadratic terms in the code, from reading it (at these sizes most hide under the per-image costs; "
           "they take over at larger n). Memory is that of the term alone, added to the step's start-up memory "
           "in the 8 GB check:", "",
           markdown_table(["step", "where", "what", "memory at Aachen", "memory at 100k"], qrow), "",
           f"![cost curve]({png.name})", ""]

    result = {"benchmark": "cost_curve", "smoke": smoke, "command": command_line(args), "machine": info,
              "settings": {"queries_per_db": args.queries_per_db, "night_fraction": args.night_fraction,
                           "sample_interval_s": SAMPLE_S, "worse_than_linear_above": WORSE_THAN_LINEAR,
                           "memory_limit_mb": MEMORY_LIMIT_MB},
              "startup": state["startup"], "sizes": {str(n): state["sizes"][str(n)] for n in sizes},
              "fits": fits, "extrapolation": extra, "flagged_time": flagged, "over_memory_limit_at_aachen": over,
              "superlinear_terms": [{"step": st, "where": w, "what": t, "memory_mb_aachen": m(AACHEN["db"]) / MB,
                                     "memory_mb_100k": m(CITY["db"]) / MB} for st, w, t, m in SUPERLINEAR],
              "targets": {"aachen": AACHEN, "city": CITY}}
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    plot(analysis, state, png, smoke)
    if quiet:
        write_report(stem, "\n".join(md + [""]), result)
        return result
    return finish(stem, md, result)


def main(argv=None) -> dict:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # kill <pid> ends the running step too
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, _terminate)
    args.work = Path(args.work).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    state = load_state(args.work)
    if not args.report_only:
        if shutil.disk_usage(args.work).free < 2 * 2 ** 30:
            print(f"warning: less than 2 GB free under {args.work}", flush=True)
        scene = scene_config(args)
        measure_startup(state, args.work)
        for n in sorted(set(args.sizes)):
            if run_size(n, args, scene, state):
                report(state, args, quiet=True)  # what is measured so far, readable while the next size runs
    return report(state, args)


if __name__ == "__main__":
    main()
