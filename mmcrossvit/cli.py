"""The command line every step shares: the run arguments, --preset, flag overrides, clean exits.

A step module has `STEP` (its key in the preset table), `add_args(parser)` (its own flags; a
flag whose value comes from the preset defaults to argparse.SUPPRESS, so that only an explicit
flag overrides the preset) and `main(run, cfg)`. A top-level script is then just

    def main(argv=None):
        return cli.main(step_module, argv, __doc__)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import presets
from .errors import DataError
from .paths import DATABASE_ROOT, OUTPUTS, RunLayout

RUN_KEYS = ("dataset", "name", "outputs", "database_root", "preset")


def add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--dataset", type=Path, required=True, help="dataset folder in the documented layout")
    g.add_argument("--name", help="run name: outputs/<name>, DataBase/<name> (default: dataset folder name)")
    g.add_argument("--outputs", type=Path, default=OUTPUTS, help=f"root of per-run outputs (default: {OUTPUTS})")
    g.add_argument("--database-root", type=Path, default=DATABASE_ROOT,
                   help=f"root of the spatial databases (default: {DATABASE_ROOT})")
    g.add_argument("--preset", choices=list(presets.PRESETS), default=presets.DEFAULT_PRESET,
                   help=f"settings of every step (default: {presets.DEFAULT_PRESET}); explicit flags override them")
    g.add_argument("--seed", type=int, default=argparse.SUPPRESS, help="seed of every random choice (default: 0)")


def parser(module, doc: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, epilog=presets.epilog(module.STEP),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p)
    module.add_args(p)
    return p


def step_defaults(module) -> dict:
    """The step's own flags that the preset does not set, at their defaults."""
    p = argparse.ArgumentParser(add_help=False)
    module.add_args(p)
    return vars(p.parse_args([]))


def settings(module, preset: str, **overrides) -> argparse.Namespace:
    """What a step runs with when called in-process: flag defaults, preset values, then overrides."""
    return presets.resolve(preset, module.STEP, {**step_defaults(module), **overrides})


def parse(module, argv=None, doc: str | None = None) -> tuple[RunLayout, argparse.Namespace]:
    args = parser(module, doc).parse_args(argv)
    run = RunLayout.create(args.dataset, args.name, args.outputs, args.database_root)
    overrides = {k: v for k, v in vars(args).items() if k not in RUN_KEYS}
    return run, presets.resolve(args.preset, module.STEP, overrides)


def main(module, argv=None, doc: str | None = None):
    """Parse a step's command line and run it (see steps.execute)."""
    from .steps import execute
    run, cfg = parse(module, argv, doc)
    return execute(module, run, cfg)


def os_error_line(e: OSError) -> str:
    """'<path>: <what the OS said> (<ERRNO>)', one line."""
    import errno
    name = errno.errorcode.get(e.errno or 0, "")
    what = e.strerror or str(e)
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{what}" + (f" ({name})" if name else "")


def run_cli(main_fn) -> None:
    """Run a script's main(): bad input ends in one line naming the file, Ctrl-C in one line."""
    try:
        main_fn()
    except DataError as e:
        raise SystemExit(f"error: {e}")
    except OSError as e:  # disk full, file-size limit, permission denied, read-only folder
        raise SystemExit(f"error: {os_error_line(e)}")
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to resume ({' '.join(sys.argv)})", file=sys.stderr)
        raise SystemExit(130)
