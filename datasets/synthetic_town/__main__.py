"""The command line: python -m datasets.synthetic_town --preset tiny --out datasets/tiny"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mmcrossvit.layout import Dataset

from .generate import generate
from .params import PARAM_HELP, scene_presets


def _flag(text: str) -> bool:
    """A boolean parameter's value: 1/0, true/false, yes/no, on/off."""
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m datasets.synthetic_town",
        description="Render a synthetic town (exact geometry; day and night) as a localization dataset in "
                    "Aachen Day-Night's layout: database images with poses (NVM + COLMAP model), day/night "
                    "queries with intrinsics and ground-truth poses, a contact sheet and scene.json. "
                    "Deterministic from --seed. Every preset parameter can be overridden by its flag.")
    presets = scene_presets()
    sizes = "; ".join(f"{name}: {v['num_db'] + v['num_day'] + v['num_night']} images of {v['width']}x{v['height']}"
                      + (" + the database at night" if v.get("night_db") else "") for name, v in presets.items())
    ap.add_argument("--preset", choices=sorted(presets), default="tiny",
                    help=f"size preset from mmcrossvit/presets.py ({sizes}; tiny is for tests) (default: tiny)")
    ap.add_argument("--out", type=Path, default=None, help="output dataset folder (default: datasets/<preset>)")
    ap.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files (default: 0)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    for key, text in PARAM_HELP.items():
        values = ", ".join(f"{name}: {v[key]}" for name, v in presets.items())
        kind = type(presets["tiny"][key])
        ap.add_argument("--" + key.replace("_", "-"), type=_flag if kind is bool else kind, default=None,
                        help=f"{text} ({values})")
    args = ap.parse_args(argv)
    overrides = {k: getattr(args, k) for k in PARAM_HELP if getattr(args, k) is not None}
    out = args.out or Path("datasets") / args.preset
    t0 = time.perf_counter()
    try:
        generate(out, args.preset, args.seed, overwrite=args.overwrite, progress=not args.quiet, **overrides)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = Dataset(out).validate()
    print(f"{out}: {summary} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
