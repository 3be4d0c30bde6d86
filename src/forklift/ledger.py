"""The ledger: which job each dispatch is, what its worker said about it, and how long jobs take.

No processes here, so it is tested on its own: the engine hands every message from the result queue
to :meth:`Ledger.record`, which says whether it is news for the executor, and asks the engine (through
the two callbacks it was built with) to stop a revoked copy that started anyway, or to forget a task's
handover record once its end is known.
"""

from __future__ import annotations

import collections
import itertools
import logging
import statistics
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeGuard

from forklift.jobs import Cause, Job, Message, Recycled, Result, Started

log = logging.getLogger(__name__)

#: How many recent run times ready_budget() judges the pace by.
RUNTIME_SAMPLES = 64
#: Failures counted for forklift's metrics (docs/metrics.md), by cause.
COUNTED = {Cause.TIMED_OUT: "timeouts", Cause.MEMORY_LIMIT: "memory_limits"}

_SEQ = itertools.count(1)

#: A dispatch's ``worker_pid`` when a worker of a Manager that died took it, but its RUNNING report
#: died with that Manager: started (or about to be) by a worker the engine cannot name.
TAKEN_UNSEEN = -1


@dataclass
class Dispatch:
    """One dispatch of a job: a job dispatched again (after a revoke) gets a new ``seq``."""

    job: Job
    seq: int = field(default_factory=lambda: next(_SEQ))
    worker_pid: int | None = None  # known once the worker says RUNNING (Limited) or at spawn (Unlimited)
    task_pid: int | None = None  # leads the task's process group
    handed_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # when its RUNNING report was read


class Ledger:
    """Dispatched jobs by key, revoked dispatch numbers, and the timings the metrics and the held-ready
    budget read. Used only from the executor's thread."""

    def __init__(
        self,
        counters: collections.Counter[str],
        stop_group: Callable[[int], None],
        forget_record: Callable[[Hashable], None],
    ) -> None:
        self.counters = counters
        self._stop_group = stop_group
        self._forget_record = forget_record
        self.dispatched: dict[Hashable, Dispatch] = {}
        self.revoked: set[int] = set()  # seqs of revoked dispatches whose reports are dropped
        #: submit() → RUNNING, per job, for the dispatch-latency metric (taken by take_latencies).
        self.submitted: dict[Hashable, float] = {}
        self._latencies: list[float] = []
        #: How long recent tasks ran (RUNNING read → end read), for ready_budget().
        self.runtimes: collections.deque[float] = collections.deque(maxlen=RUNTIME_SAMPLES)

    def take_latencies(self) -> list[float]:
        out, self._latencies = self._latencies, []
        return out

    def record(self, message: Message) -> TypeGuard[Result]:
        """Update the books; False for a message that is not to be passed on to the executor."""
        if isinstance(message, Recycled):
            if message.replace:
                self.counters["recycles"] += 1
                log.info("forklift: worker %d is being replaced: %s", message.worker_pid, message.reason)
            else:
                self.counters["idle_retirements"] += 1
                log.info("forklift: worker %d leaves the pool: %s", message.worker_pid, message.reason)
            return False
        if message.seq in self.revoked:
            if isinstance(message, Started):
                log.info(
                    "forklift: %s was revoked before it started; stopping its process group %d",
                    message.key,
                    message.task_pid,
                )
                self._stop_group(message.task_pid)
            else:
                self.revoked.discard(message.seq)
                self._forget_record(message.key)
            return False
        dispatch = self.dispatched.get(message.key)
        if dispatch is None or (message.seq and message.seq != dispatch.seq):
            log.warning("forklift: ignoring a result for %r, which is not running here: %s", message.key, message.state)
            return False
        if dispatch.worker_pid and message.worker_pid and dispatch.worker_pid != message.worker_pid:
            log.warning(
                "forklift: ignoring a result for %r from worker %d; it runs on worker %d",
                message.key,
                message.worker_pid,
                dispatch.worker_pid,
            )
            return False
        now = time.monotonic()
        if isinstance(message, Started):
            dispatch.worker_pid = message.worker_pid
            dispatch.task_pid = message.task_pid
            dispatch.started_at = now
            submitted = self.submitted.get(message.key)
            if submitted is not None:
                self._latencies.append(now - submitted)
        else:
            if message.cause in COUNTED:
                self.counters[COUNTED[message.cause]] += 1
            if dispatch.started_at is not None:
                self.runtimes.append(now - dispatch.started_at)
            del self.dispatched[message.key]
            self._forget_record(message.key)
        return True

    def ready_budget(self, workers: int, most: int, horizon: float) -> int:
        """How many tasks are worth holding ready beyond the ones running (at most ``most``).

        A held task is worth it when a worker will take it within ``horizon`` seconds. Each of the
        ``workers`` counts for ``horizon / typical`` tasks, ``typical`` being the median of the recent
        tasks' run times; a worker whose current task has already run longer than ``horizon`` and than
        three typical tasks counts for none, since nobody can say when it frees. Nothing is held until
        a task has finished: a held task that waits past ``[scheduler] task_queued_timeout`` is revoked
        by the scheduler, so long tasks must never have work queued behind them.
        """
        if not most or not self.runtimes:
            return 0
        now = time.monotonic()
        typical = max(statistics.median(self.runtimes), 0.05)
        busy = [now - d.started_at for d in self.dispatched.values() if d.started_at is not None]
        stuck = sum(1 for elapsed in busy if elapsed > max(horizon, 3 * typical))
        cycling = max(0, workers - stuck)
        return min(most, int(cycling * horizon / typical))
