"""What the dataset converters (cambridge.py, strecha.py) share: the output folder's ownership
rule and reading an image's size without decoding it when possible."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

from mmcrossvit.storage import read_json


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image: from the PNG header when it is a PNG, else by decoding it."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"not a readable image: {path}")
    return int(img.shape[1]), int(img.shape[0])


def prepare_out(out: Path, src: Path, overwrite: bool, summary: str, owned: tuple[Path, ...], what: str) -> None:
    """Make `out` ready: new or empty, or an earlier conversion (its `summary` JSON): a complete one
    is replaced only with `overwrite`, an interrupted one ("complete": false) always, by removing
    the `owned` paths. Anything else is left alone: FileExistsError."""
    if out.resolve() == src.resolve():
        raise ValueError(f"the output folder must not be the scene folder {src}")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / summary).is_file():
        raise FileExistsError(f"{out} exists and is not a converted {what} (no {summary}); "
                              f"choose an empty or new folder")
    try:
        complete = bool(read_json(out / summary).get("complete"))
    except (ValueError, AttributeError):
        complete = False
    if complete and not overwrite:
        raise FileExistsError(f"{out} already holds a converted scene (see {out / summary}); "
                              f"pass overwrite=True / --overwrite to convert again")
    for rel in owned:
        p = out / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)  # removes the links, never what they point to
        elif p.exists() or p.is_symlink():
            p.unlink()


def add_scene_args(ap, prefix: str, example: str, scenes: tuple[str, ...]) -> None:
    """The arguments every converter's command line takes: the scene folder, --out, --scene,
    --copy and --overwrite."""
    ap.add_argument("scene_dir", type=Path, help=f"the scene folder, e.g. path/to/{example} ({', '.join(scenes)})")
    ap.add_argument("--out", type=Path, default=None, help=f"output dataset folder (default: datasets/{prefix}_<scene>)")
    ap.add_argument("--scene", default=None, help="scene name used in query paths (default: the scene folder's name)")
    ap.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in --out")


def scene_and_out(args, prefix: str) -> tuple[str, Path]:
    """The scene's name and the output folder of parsed add_scene_args arguments."""
    scene = args.scene or args.scene_dir.resolve().name
    return scene, args.out or Path("datasets") / f"{prefix}_{scene}"
