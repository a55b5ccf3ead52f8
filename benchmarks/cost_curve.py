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
import sys
from pathlib import Path

from report import ROOT, parser

from cost_curve_details import read_json, step_details
from cost_curve_fit import AACHEN, SCRIPTS, STEPS, TRAINERS
from cost_curve_report import report
from measure_process import MB, run_measured, terminate

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
def load_state(work: Path) -> dict:
    s = read_json(work / "state.json")
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


def main(argv=None) -> dict:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, terminate)  # kill <pid> ends the running step too
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, terminate)
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
                report(state, args, command_line(args), quiet=True)  # what is measured so far, readable while the next size runs
    return report(state, args, command_line(args))


if __name__ == "__main__":
    main()
