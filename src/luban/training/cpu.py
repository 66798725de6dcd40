"""How many CPU threads luban uses when the config sets none (torch-free, so ONNX serving uses it too).

The cores this process may run on (its CPU affinity, bounded by a cgroup CPU quota in a container), less the cores
other work keeps busy, and at least one. Why: PyTorch's OpenMP threads wait for each other at every operation, so a
2-thread training on a machine whose other core is taken runs at the pace of the slower thread, and far slower still
when several processes each ask for every core (measured: SST-2 MiniLM-L6 training at 94 samples/s idle fell to 21 at
load 5–7 with 2 threads). An explicit `trainer.num_threads` (or `luban serve --threads`) is always obeyed.

"Busy" is the whole part of the 1-minute load average, capped by the cores other processes were seen using in a
short sample of /proc/stat (this process's own time taken out): the load average alone also counts tasks that wait
without computing (uninterruptible sleep) and this process's own work a moment ago — measured here, an idle machine
(0.5 % CPU in use) showing load 1.0 made a 2-core training take 1 thread.
"""

from __future__ import annotations

import math
import os
import time
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
    busy: int = 0  # cores other work kept busy
    in_use: float | None = None  # cores other processes used in the sample (None: no /proc/stat)

    def describe(self) -> str:
        """'2 threads' or, when it backed off, '1 thread (1 of 2 cores busy, load 1.6; trainer.num_threads to
        override)'."""
        text = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        if self.busy > 0:
            seen = f", {self.in_use:.1f} in use" if self.in_use is not None else ""
            text += (f" ({self.busy} of {self.cores} cores busy: load {self.load:.1f}{seen}; "
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
    in_use = cores_in_use_elsewhere() if busy else None
    if in_use is not None:
        busy = min(busy, round(in_use))
    return ThreadChoice(max(1, cores - busy), cores, round(load, 2), busy,
                        None if in_use is None else round(in_use, 2))


def cores_in_use_elsewhere(seconds: float = 0.3) -> float | None:
    """Cores (of this process's affinity set) that other processes kept busy over a short sample of /proc/stat;
    None where the system has no /proc/stat."""
    try:
        mine = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        mine = None
    try:
        before, own_before = _cpu_times(mine), _own_ticks()
        time.sleep(seconds)
        after, own_after = _cpu_times(mine), _own_ticks()
    except (OSError, ValueError, IndexError):
        return None
    total, idle = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return None
    cores = len(mine) if mine else max(1, os.cpu_count() or 1)
    busy_ticks = max(0, total - idle - (own_after - own_before))
    return cores * busy_ticks / total


def _cpu_times(cpus: list[int] | None) -> tuple[int, int]:
    """(all, idle + iowait) ticks summed over `cpus` (None: the machine's aggregate line)."""
    total = idle = 0
    names = None if cpus is None else {f"cpu{i}" for i in cpus}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *values = line.split()
            if (names is None and name == "cpu") or (names is not None and name in names):
                v = [int(x) for x in values[:8]]
                total, idle = total + sum(v), idle + v[3] + v[4]
    return total, idle


def _own_ticks() -> int:
    """This process's user + system CPU ticks, all threads (same unit as /proc/stat)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
