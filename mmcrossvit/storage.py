"""Atomic writes and safe artifact formats (JSON, npz, safetensors; never pickle).

Every writer goes through `atomic_path`: data lands in a temporary file beside the target and
is renamed into place, so an interrupted step never leaves a half file that a later step trusts.
The file gets the mode a plain open() would give it (0666 minus the umask), not mkstemp's 0600.
JSON is strict: NaN and infinities are written as null, never as tokens other parsers reject.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read per call so that a umask set after import is honoured.

    Linux reports it in /proc/self/status, which reads it without changing it. Elsewhere the only
    way is os.umask's set-and-restore, which is process-wide: a lock keeps our own callers from
    interleaving (a thread creating files outside this module in that instant could still see it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=suffix if suffix is not None else path.suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp made it 0600; outputs are shared like any file the user's tools write
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    """Strict JSON (allow_nan=False): non-finite floats become null, numpy values plain ones."""
    text = json.dumps(to_json(obj), indent=2, sort_keys=False, allow_nan=False, default=_unknown)
    write_text(path, text + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines log (one object per line); a torn line (an interrupted write) ends it."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


def to_json(o):
    """`o` with numpy values, paths and tuples made plain, and NaN / +-inf made None."""
    if isinstance(o, dict):
        return {(k.item() if isinstance(k, np.generic) else k): to_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [to_json(v) for v in o]
    if isinstance(o, np.ndarray):
        return to_json(o.tolist())
    if isinstance(o, np.generic):
        return to_json(o.item())
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, Path):
        return str(o)
    return o


def _unknown(o):
    raise TypeError(f"cannot serialise {type(o).__name__}")


def write_npz(path: str | Path, **arrays) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def read_safetensors(path: str | Path, device: str = "cpu") -> dict:
    from safetensors.torch import load_file
    return load_file(str(path), device=device)


def is_complete(*paths: str | Path) -> bool:
    """True when every path exists (atomic writes make existence mean 'complete')."""
    return all(Path(p).exists() for p in paths)
