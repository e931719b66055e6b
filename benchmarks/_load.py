"""How busy the machine was while a benchmark ran: a ratio measured beside other people's work says
little, so every result file says whether the machine was idle.

The 1-minute load average before the run says whether the machine was idle when it started. During the
run the load average mostly counts the benchmark itself (its training process and loader workers), so it
cannot tell whether somebody else was using the cores: :class:`LoadMonitor` samples ``/proc/stat`` (all
CPU time on the machine) and subtracts this process tree's own CPU time (``psutil``: this process, its
live children and the children it has reaped), which leaves the cores that OTHER processes kept busy.

Verdict: ``idle`` when the load average at the start and the mean foreign load during the run are both at
most ``0.5`` per core; otherwise ``busy: not for the README``. Linux only (elsewhere: ``unknown``).
"""

from __future__ import annotations

import os
import threading
import time

BUSY_PER_CORE = 0.5


def _machine_busy_seconds() -> float | None:
    """CPU seconds spent not idle on the whole machine, all cores (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / hz  # user..steal; guest time is already inside user


def _own_seconds(proc) -> float:
    """CPU seconds of this process, its reaped children and its live children (loader workers, pools)."""
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except Exception:  # noqa: BLE001 - a worker that exited between the listing and the read
            pass
    return total


class LoadMonitor:
    """Samples foreign CPU load (in cores) every ``interval`` seconds in a daemon thread."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.samples: list[float] = []
        self.cores = os.cpu_count() or 1
        self.loadavg_start = self.loadavg_end = None
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.loadavg_start = _loadavg()
        try:
            import psutil

            self._proc = psutil.Process()
        except ImportError:
            self._proc = None
        if self._proc is not None and _machine_busy_seconds() is not None:
            self._thread = threading.Thread(target=self._run, name="load-monitor", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        last = (time.monotonic(), _machine_busy_seconds(), _own_seconds(self._proc))
        while not self._stop.wait(self.interval):
            now = (time.monotonic(), _machine_busy_seconds(), _own_seconds(self._proc))
            wall = now[0] - last[0]
            if wall > 0:
                foreign = (now[1] - last[1]) - (now[2] - last[2])
                self.samples.append(max(0.0, foreign / wall))
            last = now

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.loadavg_end = _loadavg()
        return False

    def report(self) -> dict:
        mean = sum(self.samples) / len(self.samples) if self.samples else None
        limit = BUSY_PER_CORE * self.cores
        start = self.loadavg_start[0] if self.loadavg_start else None
        if start is None or mean is None:
            verdict = "unknown"
        elif start <= limit and mean <= limit:
            verdict = "idle"
        else:
            verdict = "busy: not for the README"
        return {
            "cores": self.cores,
            "loadavg_start": self.loadavg_start,
            "loadavg_end": self.loadavg_end,
            "foreign_cores_mean": None if mean is None else round(mean, 2),
            "foreign_cores_max": round(max(self.samples), 2) if self.samples else None,
            "samples": len(self.samples),
            "busy_limit_cores": limit,
            "verdict": verdict,
        }


def wait_until_idle(timeout_s: float, cores: int | None = None) -> float:
    """Wait (at most ``timeout_s``) for the 1-minute load average to fall to 0.5 per core; returns the wait."""
    cores = cores or os.cpu_count() or 1
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        load = _loadavg()
        if load is None or load[0] <= BUSY_PER_CORE * cores:
            break
        time.sleep(5)
    return round(time.monotonic() - t0, 1)


def _loadavg():
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return None
