"""The pipeline's steps, each a module with `STEP`, `add_args(parser)` and `main(run, cfg)`, and
optionally `check(run, cfg)`: checks of its inputs that must pass before anything is written.

The top-level scripts (preprocessing.py, ...) are their command lines; run_pipeline.py calls
them in-process through `execute`, which records the resolved settings of every run and holds
the run's lock (mmcrossvit/runlock.py) while the step runs.
"""
from __future__ import annotations

import argparse

from ..paths import RunLayout
from ..runlock import run_lock
from ..storage import write_json


def execute(module, run: RunLayout, cfg: argparse.Namespace):
    """Run one step with its resolved settings, recording them in outputs/<name>/settings/."""
    check = getattr(module, "check", None)
    if check is not None:
        check(run, cfg)  # before mkdir: a mistyped run name must not leave an outputs/<typo> behind
    if not run.out.is_dir():
        run.out.mkdir(parents=True)
    with run_lock(run):  # re-entrant: run_pipeline.py and benchmarks execute steps inside each other
        record = getattr(module, "record_name", lambda c: module.STEP)(cfg)  # e.g. localize vs its oracle run
        write_json(run.settings(record), {"step": module.STEP, "dataset": str(run.dataset), "name": run.name,
                                               "settings": {k: _plain(v) for k, v in sorted(vars(cfg).items())}})
        return module.main(run, cfg)


def _plain(v):
    from pathlib import Path
    return str(v) if isinstance(v, Path) else v
