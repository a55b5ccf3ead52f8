"""Independent work items in worker processes, results in input order.

`ordered_map(fn, items, workers, init, initargs)` yields `fn(state, item)` for every item, in
the order given, where `state = init(*initargs)` is built once per process. With one worker it
all runs in this process; with more, in spawned processes (fork would copy torch's and COLMAP's
thread pools in an undefined state). The caller alone writes files, in input order, so the
outputs do not depend on the number of workers; every worker computes exactly what the single
process would (tests/test_workers.py checks it byte for byte).
"""
from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator

_STATE: Any = None
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int | None) -> int:
    """--workers: 0 (or None) is one per available core."""
    if workers is None or workers == 0:
        return cpu_count()
    if workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: one per core), got {workers}")
    return workers


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this worker when its parent dies (Linux): a parent killed, or
    crashed, must not leave workers behind holding the run's files and lock."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown has to do
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _start(threads: int, init: Callable, initargs: tuple, parent: int) -> None:
    global _STATE
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    import torch
    torch.set_num_threads(threads)
    _STATE = init(*initargs)


def _run(fn: Callable, item):
    return fn(_STATE, item)


@contextlib.contextmanager
def _without_main_import(*callables):
    """Spawned workers normally re-import the caller's script (__main__) before running anything:
    with a benchmark or run_pipeline.py that costs ~6 s per pool on 2 cores (measured), and the
    workers need only the mmcrossvit functions they are given. Pointing __main__'s spec at this
    small module while the pool starts its processes makes them import it instead (unless a
    callable lives in __main__ and so needs it)."""
    main = sys.modules["__main__"]
    if any(getattr(f, "__module__", None) == "__main__" for f in callables):
        yield
        return
    saved = getattr(main, "__spec__", None)
    main.__spec__ = importlib.util.find_spec(__name__)
    try:
        yield
    finally:
        main.__spec__ = saved


def ordered_map(fn: Callable[[Any, Any], Any], items: Iterable, workers: int, init: Callable[..., Any],
                initargs: tuple = (), chunksize: int = 1) -> Iterator:
    """fn(state, item) for each item, in order. `fn` and `init` must be module-level functions
    (they are pickled by name) and `initargs` picklable."""
    items = list(items)
    workers = min(resolve_workers(workers), max(len(items), 1))
    if workers <= 1:
        state = init(*initargs)
        for it in items:
            yield fn(state, it)
        return
    threads = max(1, cpu_count() // workers)  # the processes share the cores
    # every thread pool of a worker (OpenMP, OpenBLAS, MKL) gets its share of the cores: W
    # processes each spinning up all cores' threads run slower than one process (measured)
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: str(threads) for k in _THREAD_VARS})
    try:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_start,
                                 initargs=(threads, init, initargs, os.getpid())) as pool:
            try:
                with _without_main_import(fn, init):  # map submits every chunk now, so every process starts here
                    results = pool.map(_run, [fn] * len(items), items, chunksize=chunksize)
                yield from results
            except BaseException:
                # wait for the items in progress (a queued one is cancelled): shutdown(wait=False) here
                # would drop the pool's handle on its processes, and they would outlive the error
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def mapped(fn: Callable[[Any, Any], Any], items: Iterable, workers: int, init: Callable[..., Any],
           initargs: tuple = (), chunksize: int = 1):
    """`ordered_map` for a with-block: leaving the block, by an error too, stops the workers there
    and then, so that the error is the last thing the command prints (a suspended generator would
    otherwise keep them running until the interpreter exits)."""
    gen = ordered_map(fn, items, workers, init, initargs, chunksize)
    try:
        yield gen
    finally:
        gen.close()


def _noop_init():
    return None


def _noop(state, item):
    return item


def startup_seconds(workers: int) -> float:
    """What starting `workers` processes costs (imports included), for benchmarks."""
    import time
    t = time.perf_counter()
    list(ordered_map(_noop, range(workers), workers, _noop_init))
    return time.perf_counter() - t
