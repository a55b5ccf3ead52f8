"""Measuring one subprocess: wall time, peak memory of its whole process tree, CPU time.

`run_measured(cmd, log)` runs a command in its own process group (so that an interrupted benchmark
also ends the command's worker processes) and samples the summed RSS / PSS of the tree every
SAMPLE_S seconds; os.wait4 adds the largest single process's ru_maxrss (reaped workers included).
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from report import ROOT

SAMPLE_S = 0.2
MB = 2 ** 20


def _tree_memory(pid: int) -> tuple[float, float, int]:
    """(summed RSS, summed PSS, processes) of a process and its descendants, in bytes."""
    import psutil
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0.0, 0.0, 0
    rss = pss = 0.0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            try:
                r = p.memory_info().rss
                rss, pss = rss + r, pss + r
            except psutil.Error:
                pass
    return rss, pss, len(procs)


def _end_group(proc: subprocess.Popen) -> None:
    """Stop a step started by run_measured and every process of its group (its workers)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def terminate(signum, frame):
    """A signal handler that exits, so that run_measured's clean-up (ending the step's group) runs."""
    raise SystemExit(128 + signum)


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run `cmd` (stdout + stderr to `log`): wall time, ru_maxrss of the process (os.wait4: its own
    and its reaped descendants' largest), and the sampled peak of the whole tree's RSS and PSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    peak = {"rss": 0.0, "pss": 0.0, "procs": 0}
    stop = threading.Event()
    with open(log, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        t0 = time.perf_counter()
        # its own process group: an interrupted benchmark ends the step and its worker processes
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

        def sample():
            while not stop.is_set():
                rss, pss, k = _tree_memory(proc.pid)
                peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
                peak["procs"] = max(peak["procs"], k)
                stop.wait(SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _end_group(proc)
            raise
        finally:
            stop.set()
        wall = time.perf_counter() - t0
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss = usage.ru_maxrss / 1024  # KiB on Linux
    return {"seconds": round(wall, 3), "rc": proc.returncode, "maxrss_mb": round(maxrss, 1),
            "tree_rss_peak_mb": round(peak["rss"] / MB, 1), "tree_pss_peak_mb": round(peak["pss"] / MB, 1),
            "peak_mb": round(max(maxrss, peak["pss"] / MB), 1), "processes": peak["procs"],
            "user_cpu_s": round(usage.ru_utime, 2), "system_cpu_s": round(usage.ru_stime, 2)}
