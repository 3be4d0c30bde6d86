"""Keeping a task's memory from costing the scheduler: OOM-killer preference, a per-task limit, and
telling an OOM kill from any other SIGKILL.

* **OOM preference.** Each task process raises its own ``/proc/self/oom_score_adj`` (raising needs no
  privilege). The kernel's OOM killer picks the process with the highest badness, roughly
  ``1000 × share of memory + oom_score_adj``: at +500 a task goes before a scheduler of up to half the
  machine's memory, while among tasks the bigger one still goes first. Workers and the scheduler keep
  their own value.
* **Memory limit.** :class:`MemorySampler` measures a task's whole process tree: every descendant of
  its worker (the worker runs one task; what the task detached is re-parented to it, a subreaper). It
  reads RSS from one pass over ``/proc/*/stat``; only when the RSS sum passes the limit does it read
  PSS (``smaps_rollup``, ~1 ms per process), which splits pages shared with the worker and other tasks
  fairly (a forked task starts with ~90 MiB RSS but ~45 MiB PSS). RSS is never below PSS, so nothing
  over the limit is missed; the limit applies to PSS. Samples come more often the nearer the limit.
* **OOM kills.** A task killed by SIGKILL was the OOM killer's choice if its memory cgroup's
  ``oom_kill`` counter rose while it ran (cgroup v2 ``memory.events``, v1 ``memory.oom_control``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from forklift.lifeline import process_table

#: Bounds of the sampling interval while a task has a memory limit, in seconds: the next sample comes
#: sooner the closer the task is to its limit and the faster it grew since the last one.
MIN_SAMPLE_SECONDS = 0.05
MAX_SAMPLE_SECONDS = 1.0
FIRST_SAMPLE_SECONDS = 0.1
#: The growth a sample interval allows for even when a task has been quiet, in MiB per second.
BURST_MIB_PER_SECOND = 1024.0

_PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def raise_oom_score(adj: int) -> None:
    """In the task process: make it the OOM killer's earlier choice. Only ever raises the value."""
    if adj <= 0:
        return
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
    except OSError:
        return  # not Linux, or no procfs: nothing to prefer
    try:
        os.write(fd, str(adj).encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class MemorySampler:
    """A task's memory: every descendant of its worker (the task's own tree, and what it detached,
    re-parented to the worker), by RSS from one pass over ``/proc``; by PSS once RSS is over the limit.

    One pass costs ~1.3 ms for 80 processes. The next sample is due in ``headroom / (2 × growth)``, the
    growth being the faster of what was seen and 1 GiB/s, between 0.05 and 1 s: a task far below a limit
    of 2 GiB or more is looked at once a second (~0.1-0.2 % of a core), one near its limit twenty times.
    """

    def __init__(self, limit_mib: float) -> None:
        self.limit_mib = limit_mib
        self._last: tuple[float, float] | None = None  # (monotonic, MiB) of the previous sample

    def sample(self) -> float:
        me = os.getpid()
        table = process_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        tree, todo = [], list(children.get(me, []))
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        rss_mib = sum(table[pid][1] for pid in tree) * _PAGE_MIB
        used = rss_mib if rss_mib <= self.limit_mib else sum(_pss_kib(pid) for pid in tree) / 1024
        self._growth = 0.0
        now = time.monotonic()
        if self._last is not None and now > self._last[0]:
            self._growth = max(0.0, (used - self._last[1]) / (now - self._last[0]))
        self._last = (now, used)
        return used

    def next_interval(self) -> float:
        if self._last is None:
            return FIRST_SAMPLE_SECONDS
        headroom = max(0.0, self.limit_mib - self._last[1])
        # Half the headroom at the faster of the growth just seen and a sudden burst: a task that starts
        # allocating at 1 GiB/s from a quiet start is still caught before it is far past its limit.
        wait = headroom / (2 * max(self._growth, BURST_MIB_PER_SECOND))
        return min(MAX_SAMPLE_SECONDS, max(MIN_SAMPLE_SECONDS, wait))


def _memory_cgroup_counter(pid: int) -> tuple[Path, str] | None:
    """The file and field that count OOM kills in ``pid``'s memory cgroup, if this machine has one."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            candidate = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events"
            if candidate.exists():
                return candidate, "oom_kill"
        elif "memory" in controllers.split(","):  # cgroup v1
            for base in (Path("/sys/fs/cgroup/memory") / path.lstrip("/"), Path("/sys/fs/cgroup/memory")):
                if (base / "memory.oom_control").exists():
                    return base / "memory.oom_control", "oom_kill"
    return None


class OomWitness:
    """Reads the OOM-kill counter of a task's memory cgroup when the task starts and when it ends."""

    def __init__(self, pid: int) -> None:
        self._counter = _memory_cgroup_counter(pid)
        self._before = self._read()

    def _read(self) -> int | None:
        if self._counter is None:
            return None
        path, field = self._counter
        try:
            for line in path.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == field:
                    return int(value)
        except (OSError, ValueError):
            return None
        return None

    def saw_oom_kill(self) -> bool:
        after = self._read()
        return self._before is not None and after is not None and after > self._before
