"""What else the machine is doing: how busy other processes keep its CPUs (for timings to be trusted).

Two ``cpu_times`` readings tell how many CPUs processes other than this one kept busy between them
(``others_busy``); the benchmark reports it, and a cost curve measured while the machine was busy is
not cached.
"""

from __future__ import annotations

import os
import time


def cpu_times() -> tuple[float, float, float] | None:
    """(wall seconds, CPU-seconds the whole machine has been busy, CPU-seconds of this process), now; None
    where /proc/stat is not there. Two readings tell how busy *other* processes kept the CPUs between them."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    own = os.times()
    return time.monotonic(), (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def others_busy(start, end) -> float | None:
    """CPUs other processes kept busy on average between two ``cpu_times`` readings (0.0 = none), or None."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    return round(max(0.0, (end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]), 2)
