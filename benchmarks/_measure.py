"""Measurement helpers the benchmark scripts share: peak memory from /proc and device sync."""

from __future__ import annotations

import torch


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) so the next phase measures its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def status_kb(pid: int | str, field: str = "VmHWM") -> int | None:
    """A kB field of /proc/<pid>/status (None where /proc is not available)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
