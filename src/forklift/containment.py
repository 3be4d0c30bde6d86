"""Keeping a task's memory from costing the scheduler: OOM-killer preference, a per-task limit, and
telling an OOM kill from any other SIGKILL.

* **OOM preference.** Each task process raises its own ``/proc/self/oom_score_adj`` (raising needs no
  privilege). The kernel's OOM killer picks the process with the highest badness, roughly
  ``1000 × share of memory + oom_score_adj``: at +500 a task goes before a scheduler of up to half the
  machine's memory, while among tasks the bigger one still goes first. Workers and the scheduler keep
  their own value.
* **Memory limit.** :class:`MemorySampler` measures a task's whole process tree: everything in its
  session (cheap: one ``getsid`` per pid, ~0.1 ms for a hundred processes), plus what it detached
  (re-parented to its worker; looked for once a second, as that costs a full process scan). It reads
  RSS (one ``statm`` read per process); only when the RSS sum passes the limit does it read PSS
  (``smaps_rollup``, ~1 ms per process), which splits pages shared with the worker and other tasks
  fairly (a forked task starts with ~90 MiB RSS but ~45 MiB PSS). RSS is never below PSS, so nothing
  over the limit is missed; the limit applies to PSS.
* **OOM kills.** A task killed by SIGKILL was the OOM killer's choice if its memory cgroup's
  ``oom_kill`` counter rose while it ran (cgroup v2 ``memory.events``, v1 ``memory.oom_control``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

#: How often a task's memory is sampled while it has a limit, in seconds.
SAMPLE_SECONDS = 0.1
#: How often the worker looks for what a task detached from its session.
DETACHED_SCAN_SECONDS = 1.0


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
    """A task's memory (MiB), from its session and what it detached; see the module's docstring."""

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self._detached: set[int] = set()
        self._next_scan = 0.0

    def members(self) -> list[int]:
        me = os.getpid()
        now = time.monotonic()
        if now >= self._next_scan:
            self._next_scan = now + DETACHED_SCAN_SECONDS
            try:
                self._detached = {p.pid for p in psutil.Process(me).children(recursive=True)}
            except psutil.Error:
                self._detached = set()
        pids = set(self._detached)
        for pid in psutil.pids():
            try:
                if os.getsid(pid) == self.sid:
                    pids.add(pid)
            except OSError:
                continue
        pids.discard(me)
        return list(pids)

    def mib(self, limit_mib: float) -> float:
        """The tree's PSS in MiB when its RSS is over ``limit_mib``, else its RSS (under the limit either way)."""
        pids = self.members()
        rss = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/statm") as f:
                    rss += int(f.read().split()[1])
            except (OSError, ValueError, IndexError):
                continue
        rss_mib = rss * os.sysconf("SC_PAGE_SIZE") / 2**20
        if rss_mib <= limit_mib:
            return rss_mib
        return sum(_pss_kib(pid) for pid in pids) / 1024


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
