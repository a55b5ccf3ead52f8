"""One run at a time per run name: a lock file in the run's output folder (outputs/<name>/.lock).

The lock itself is `fcntl.flock` on that file, which the kernel drops when its holder exits in
any way (a crash or kill -9 included), so a dead run never blocks the next one. The file's
contents (pid, host, command) only serve the messages: a second run stops at once with one line
naming the file and the owner; a run that finds the contents of a dead owner takes over, warning.

`hold(path)` is re-entrant within a process (run_pipeline.py and the benchmarks execute several
steps, one step may execute another), and `run_lock(run)` takes it on rank 0 only under
torchrun, so that the ranks of one training run do not lock each other out.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from .errors import DataError

_HELD: dict[str, list] = {}  # real path -> [fd, depth] of the locks this process holds
_GUARD = threading.Lock()


class RunLockedError(DataError):
    """Another process holds the run's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _owner(fd: int) -> dict:
    """The recorded owner, {} if none (a clean release empties the file) or unreadable."""
    try:
        data = os.pread(fd, 1 << 16, 0)
        owner = json.loads(data) if data.strip() else {}
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    cmd = str(owner.get("command", "?"))
    cmd = cmd if len(cmd) <= 160 else cmd[:157] + "..."
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} ({cmd})"


def _flock(fd: int) -> bool | None:
    """True: acquired; False: another process holds it; None: this filesystem has no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return None
        raise


def _open_readonly(path: Path) -> int | None:
    """The lock file of a run folder this process cannot write (read-only mount, permissions):
    opened for reading, to take the lock (flock needs no write access) without recording an
    owner; None when there is no lock file to open. Such a run can only read, so no step that
    must write will get far."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


def _acquire(path: Path) -> int | None:
    host = socket.gethostname()
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            fd = _open_readonly(path)
            if fd is None:
                return None
            if _flock(fd) is False:
                owner = _owner(fd)
                os.close(fd)
                raise RunLockedError(path, f"this run is in use by {_describe(owner)}")
            return fd
        try:
            got = _flock(fd)
            owner = _owner(fd)
            mine = owner.get("pid") == os.getpid() and owner.get("host") == host
            same_host = owner.get("host") == host
            dead = same_host and isinstance(owner.get("pid"), int) and not _alive(owner["pid"])
            how = "wait for it to finish, or delete the file if that process is gone"
            if got is False:
                # a dead owner with the lock still held: a child it forked (a data loader worker) lives on
                orphan = " (exited, but a process it started still holds the lock)" if dead else ""
                raise RunLockedError(path, f"this run is in use by {_describe(owner)}{orphan}; {how}")
            if owner and not mine and not dead and (got is None or not same_host):
                # no flock to trust here (no locks, or the owner ran on another machine): trust the file
                raise RunLockedError(path, f"this run may be in use by {_describe(owner)} (cannot check from "
                                           f"{host}); {how}")
            # the file may have been deleted (as the message above suggests) between open and flock:
            # then a newer file is the lock, and we must lock that one
            try:
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    os.close(fd)
                    continue
            except FileNotFoundError:
                os.close(fd)
                continue
            if owner and not mine:
                why = "not running" if dead else "it no longer holds the lock"
                print(f"warning: {path}: taking over the stale lock of {_describe(owner)} ({why})",
                      file=sys.stderr, flush=True)
            record = {"pid": os.getpid(), "host": host, "command": " ".join(sys.argv) or sys.executable,
                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


def _release(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)  # kept, emptied: deleting it would race with a process opening it
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold(path: str | Path):
    """Hold the lock file `path` for the block; re-entrant within this process.

    Raises RunLockedError (a DataError: the command line prints it as one line) when another
    live process holds it."""
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True)
    key = os.path.realpath(path)
    with _GUARD:
        entry = _HELD.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            _HELD[key] = [_acquire(path), 1]
    try:
        yield path
    finally:
        with _GUARD:
            entry = _HELD[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[key]
                _release(entry[0])


def run_lock(run):
    """The lock of a run (a RunLayout), taken by rank 0 alone under torchrun (RANK > 0: no-op)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        rank = 0
    return hold(run.lock) if rank == 0 else contextlib.nullcontext(run.lock)
