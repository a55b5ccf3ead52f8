"""What a step's outputs were computed from, so that nothing stale is ever reused.

A record (outputs/<name>/records/<part>.json) holds the key of a finished part of a step: a
hash of the code's artifact version, the settings that change results, and fingerprints of the
input files. A part whose record key matches is skipped; any change recomputes it (and says why).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .storage import read_json, write_json

# Bump when an artifact's content changes meaning, so that older outputs are recomputed.
ARTIFACT_VERSION = 2
HASH_LIMIT = 256 << 20  # files larger than this are fingerprinted by size and mtime, not content


def stamp(path: str | Path) -> str:
    """Size and modification time: cheap, for images and very large files."""
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def content_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint(path: str | Path) -> str | None:
    """Content hash of a file (size and mtime above HASH_LIMIT), of every file in a folder, or
    None when it does not exist."""
    p = Path(path)
    if p.is_dir():
        return digest({str(f.relative_to(p)): fingerprint(f) for f in sorted(p.rglob("*")) if f.is_file()})
    if not p.exists():
        return None
    return content_hash(p) if p.stat().st_size <= HASH_LIMIT else "stamp:" + stamp(p)


def digest(obj) -> str:
    """A short hash of any JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_key(settings: dict, inputs: dict) -> str:
    return digest({"version": ARTIFACT_VERSION, "settings": settings, "inputs": inputs})


def read(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def matches(path: Path, key: str) -> bool:
    rec = read(path)
    return rec is not None and rec.get("key") == key


def write(path: Path, key: str, settings: dict, inputs: dict, **extra) -> None:
    write_json(path, {"key": key, "version": ARTIFACT_VERSION, "settings": settings, "inputs": inputs, **extra})


def changed(path: Path, settings: dict, inputs: dict) -> str:
    """A short phrase saying what differs from the record at `path` (for the log line)."""
    rec = read(path)
    if rec is None:
        return "no record of an earlier run"
    if rec.get("version") != ARTIFACT_VERSION:
        return f"artifact version {rec.get('version')} -> {ARTIFACT_VERSION}"
    diff = [k for k in sorted(set(settings) | set(rec.get("settings", {})))
            if settings.get(k) != rec.get("settings", {}).get(k)]
    diff += [k for k in sorted(set(inputs) | set(rec.get("inputs", {})))
             if inputs.get(k) != rec.get("inputs", {}).get(k)]
    return ("changed: " + ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")) if diff else "changed"


def upstream(record_path: Path, artifact: Path) -> str | None:
    """The key of an upstream artifact: its record's key when the pipeline wrote it (stable when
    a recomputation gives the same result), else a fingerprint of the file itself."""
    rec = read(record_path)
    if rec is not None and Path(artifact).exists():
        return rec.get("key")
    return fingerprint(artifact)


def up_to_date(path: Path, key: str, complete: bool, overwrite: bool, what: str, settings: dict, inputs: dict,
               say=print) -> bool:
    """True when `what` is complete and was computed from `key` (and says it is skipped); else
    says why it is redone."""
    if overwrite:
        return False
    if complete and matches(path, key):
        say(f"{what} is up to date; skipping (use --overwrite to redo)")
        return True
    if complete:
        say(f"{what} is stale ({changed(path, settings, inputs)}): recomputing it")
    return False
