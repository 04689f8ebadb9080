"""Run a command as its own process and measure it: wall s, CPU s, peak RSS (MiB).

CPU is user + system time of the process and all its threads (``os.wait4``). Peak RSS is
the process's own high-water mark (``VmHWM`` in /proc, read while it runs): the
``ru_maxrss`` of a child also counts the parent's memory at fork, which inflates it when
the benchmark itself holds large arrays.
"""

from __future__ import annotations

import os
import subprocess
import time


def _high_water_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_measured(command: list[str], *, cwd=None, poll_s: float = 0.02) -> dict:
    """Run ``command``; returns ``{"wall", "cpu", "rss", "returncode"}``."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd)
    peak = 0.0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        mark = _high_water_mib(process.pid)
        if mark is not None:
            peak = max(peak, mark)
        time.sleep(poll_s)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss": peak if peak else usage.ru_maxrss / 1024,
        "returncode": process.returncode,
    }
