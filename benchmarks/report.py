"""What every benchmark shares: where results go, the machine they ran on, and the report files.

Each benchmark writes benchmarks/results/<name>.md (the table people read) and <name>.json (every
number), atomically; `benchmarks/results_page.py` assembles them into RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
STUDY_RESULTS = ROOT / "studies" / "results"  # the one-off investigations' (studies/) records


def parser(doc: str | None, stem: str, threads: bool = True) -> argparse.ArgumentParser:
    """A benchmark's command line: --out (the report's path stem) and, if it times, --threads."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(RESULTS / stem), help="output path stem; .md and .json are written")
    if threads:
        p.add_argument("--threads", type=int, default=2, help="torch (and BLAS) CPU threads while timing")
    return p


def run_parser(doc: str | None, results: Path = RESULTS) -> argparse.ArgumentParser:
    """A benchmark (or study) on one pipeline run: the run arguments every step takes, plus --results."""
    from mmcrossvit import cli
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_run_args(p)
    p.add_argument("--results", type=Path, default=results, help=f"where the table goes (default: {results})")
    return p


def machine_info() -> dict:
    """What the timings were taken on, and how busy the machine was when the run started."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if hasattr(os, "getloadavg"):
        info["load_average_1m_5m_15m"] = [round(v, 2) for v in os.getloadavg()]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(stem: str, text: str, result: dict) -> None:
    """<stem>.md and <stem>.json, written atomically."""
    from mmcrossvit.storage import write_json, write_text
    write_text(stem + ".md", text)
    write_json(stem + ".json", result)
    print(f"wrote {stem}.md and {stem}.json")


def finish(stem: str, md: list[str], result: dict) -> dict:
    """Print the report and write it as <stem>.md / <stem>.json."""
    text = "\n".join(md + [""])
    print(text)
    write_report(stem, text, result)
    return result


def open_replay(args):
    """What the benchmarks replaying a run's localization logs open first: the run, its dataset,
    its SfM model, and --seed (used only where the run recorded no settings)."""
    from mmcrossvit.layout import Dataset
    from mmcrossvit.localization import SfMModel
    from mmcrossvit.paths import RunLayout
    run = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    return run, Dataset(run.dataset), SfMModel.load(run.sfm), getattr(args, "seed", None)


def replay_command(script: str, args, run, seed, extra: str = "") -> str:
    """The command line that reproduces such a benchmark's report."""
    return (f"`python benchmarks/{script} --dataset {args.dataset} --preset {args.preset}"
            f"{f' --name {run.name}' if args.name else ''}{f' --seed {seed}' if seed is not None else ''}{extra}`")
