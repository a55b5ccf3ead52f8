"""Atomic writes and safe artifact formats (JSON, npz, safetensors; never pickle).

Every writer goes through `atomic_path`: data lands in a temporary file beside the target and
is renamed into place, so an interrupted step never leaves a half file that a later step trusts.
The file gets the mode a plain open() would give it (0666 minus the umask), not mkstemp's 0600.
JSON is strict: NaN and infinities are written as null, never as tokens other parsers reject.
HDF5 files are written through a Python file object (`h5_file`): a failed write is then an
OSError naming the file, where HDF5's own driver crashes the process (a segfault on a full disk).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
import zipfile
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
        try:
            yield tmp
        except OSError as e:  # a write through a file object names no file: name the target
            raise os_error(e, path) from None
        # mkstemp made it 0600; outputs are shared like any file the user's tools write
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def os_error(e: OSError, path: str | Path) -> OSError:
    """`e` naming `path` (a write through a file object raises it without the file's name)."""
    return e if e.filename else type(e)(e.errno, e.strerror or str(e), str(path))


@contextlib.contextmanager
def h5_file(path: str | Path, mode: str = "a"):
    """An h5py.File ('a': read, write, create; 'w': truncate) written through a Python file object.

    HDF5's own file driver segfaults when a write fails (ENOSPC, EFBIG) and it later flushes; with
    a file object the failure comes back from Python as an OSError, naming the file, and nothing
    crashes. Reading goes through h5py as usual."""
    import h5py
    path = Path(path)
    try:
        with open(path, "r+b" if mode == "a" and path.exists() else "w+b") as raw, \
                h5py.File(raw, "a" if mode == "a" else "w") as f:
            yield f
    except OSError as e:
        raise os_error(e, path) from None


def write_text(path: str | Path, text: str) -> None:
    """Atomic; a file that already holds exactly `text` is left alone, so that a run whose steps
    are all up to date writes nothing (and works on a read-only copy)."""
    if _holds(path, text.encode()):
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _holds(path: str | Path, data: bytes) -> bool:
    try:
        p = Path(path)
        return p.stat().st_size == len(data) and p.read_bytes() == data
    except OSError:
        return False


def changed_since(t: float, *roots: str | Path, ignore: set[str] = frozenset()) -> bool:
    """True when a file under `roots` was written at or after time `t` (a run's own outputs: a
    few hundred files). Hidden files (the run's lock) and names in `ignore` do not count."""
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                if f.startswith(".") or f in ignore:
                    continue
                try:
                    if os.stat(os.path.join(dirpath, f)).st_mtime >= t:
                        return True
                except FileNotFoundError:
                    pass
    return False


def write_json(path: str | Path, obj) -> None:
    """Strict JSON (allow_nan=False): non-finite floats become null, numpy values plain ones."""
    write_text(path, _json_text(obj))


def _json_text(obj) -> str:
    return json.dumps(to_json(obj), indent=2, sort_keys=False, allow_nan=False, default=_unknown) + "\n"


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
    """Atomic; left alone when it already holds exactly these arrays (a zip stamps its time, so
    the bytes would differ)."""
    try:
        old = read_npz(path)
        if old.keys() == arrays.keys() and all(
                old[k].dtype == np.asarray(v).dtype and np.array_equal(old[k], v) for k, v in arrays.items()):
            return
    except (OSError, ValueError, zipfile.BadZipFile):
        pass
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    with atomic_path(path) as tmp:  # written by Python: a full disk is an OSError naming the file
        tmp.write_bytes(data)


def read_safetensors(path: str | Path, device: str = "cpu") -> dict:
    from safetensors.torch import load_file
    return load_file(str(path), device=device)


def is_complete(*paths: str | Path) -> bool:
    """True when every path exists (atomic writes make existence mean 'complete')."""
    return all(Path(p).exists() for p in paths)
