"""How many CPU threads luban uses when the config sets none (torch-free, so ONNX serving uses it too).

The cores this process may run on (its CPU affinity, bounded by a cgroup CPU quota in a container), less the cores
other work on the machine keeps busy — the whole part of the 1-minute load average, measured before luban's own
heavy work starts — and at least one. Why: PyTorch's OpenMP threads wait for each other at every operation, so a
2-thread training on a machine whose other core is taken runs at the pace of the slower thread, and far slower still
when several processes each ask for every core (measured: SST-2 MiniLM-L6 training at 94 samples/s idle fell to 21 at
load 5–7 with 2 threads). An explicit `trainer.num_threads` (or `luban serve --threads`) is always obeyed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


def available_cores() -> int:
    """Cores this process may use: its affinity mask, bounded by a cgroup v2/v1 CPU quota when one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota)) if quota else max(1, cores)


def _cgroup_quota() -> int | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cores: int
    load: float | None  # the 1-minute load average it was decided on (None: not available on this system)
    busy: int = 0  # cores that load kept busy

    def describe(self) -> str:
        """'2 threads' or, when it backed off, '1 thread (1 of 2 cores busy, load 1.6; trainer.num_threads to
        override)'."""
        text = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        if self.busy > 0:
            text += (f" ({self.busy} of {self.cores} cores busy, load {self.load:.1f}; "
                     f"trainer.num_threads to override)")
        return text


def auto_threads() -> ThreadChoice:
    """Threads for this process when none is configured: free cores now, at least 1 (see the module doc)."""
    cores = available_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return ThreadChoice(cores, cores, None)
    busy = min(cores, math.floor(load))
    return ThreadChoice(max(1, cores - busy), cores, round(load, 2), busy)
