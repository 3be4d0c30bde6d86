"""The two shapes of worker pool, as objects the engine holds (not hooks it inherits).

``OneProcessPerJob`` (UnlimitedParallelism): each job gets a ``LocalWorker`` of its own at once, which
runs it, reports and exits. ``QueuedPool`` (LimitedParallelism): exactly N ``QueuedLocalWorker``s
started with the engine take ``(seq, Job)`` items from a task queue; jobs wait in a priority heap until
there is room, and up to ``prefetch`` more than N wait on the queue, held ready for the next free worker.
With ``idle_timeout`` set, workers idle that long leave (down to ``min_workers``) and new ones are
forked again as soon as work needs them.

A pool knows its workers and where jobs wait before a worker starts them; what each dispatch is and
what became of it is the ledger's (:mod:`forklift.ledger`), and everything else the engine's
(:class:`PoolHost`).
"""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
import multiprocessing
import time
from collections.abc import Hashable
from typing import Protocol

from forklift.channel import CHANNEL_ERRORS, DRAIN_BATCH, ResultChannel
from forklift.jobs import RETIRE, Cause, Finished, Job, Result, WorkQueue
from forklift.ledger import TAKEN_UNSEEN, Dispatch, Ledger
from forklift.workers import IN_GET, TAKEN_SEQ, LocalWorker, QueuedLocalWorker, WorkerOptions, _Worker

log = logging.getLogger(__name__)

#: A job handed to the task queue that no worker has started after this long, with the queue
#: empty, was taken by a worker that died before it could say so: it is FAILED, not waited for.
CLAIM_TIMEOUT = 60.0
WITHDRAWN = "withdrawn: forklift was shutting down before it started"
#: After the Manager dies: how long to wait for workers inside the dead queue's get() to fail out of it.
GET_SETTLE = 1.0

# The workers' shared cells come from the fork context: the memory must be inherited, not passed.
_FORK = multiprocessing.get_context("fork")


class PoolHost(Protocol):
    """What a pool reads from the engine that holds it."""

    ledger: Ledger
    worker_options: WorkerOptions
    #: Worker pids bound to a Manager that died: they leave on their own and take no new work.
    stale: set[int]

    @property
    def ending(self) -> bool: ...

    @property
    def adopted(self) -> int: ...

    def results(self) -> WorkQueue: ...

    def restore_channel(self, exc: BaseException) -> None: ...


class Pool(Protocol):
    """How jobs reach workers: what UnlimitedParallelism and LimitedParallelism differ in."""

    def open(self, channel: ResultChannel) -> None:
        """A new channel: open this pool's queues on it (at start, and after the Manager died)."""

    def start(self) -> None:
        """Start the workers that exist from the beginning."""

    def accept(self, job: Job) -> None:
        """Take a job to run; it is dispatched (in the ledger) once it is handed to a worker."""

    def is_pending(self, key: Hashable) -> bool:
        """Waiting here for room, not yet handed to any worker."""

    def withdraw(self, key: Hashable) -> bool:
        """Forget a pending job; False if it is not pending."""

    def withdraw_pending(self) -> list[Result]:
        """At the end: every job no worker has taken, FAILED as withdrawn."""

    def take_back(self, dispatch: Dispatch) -> bool:
        """Take a handed-over job back before any worker starts it; False if that is too late."""

    def workers(self) -> list[_Worker]: ...

    def forget(self, worker: _Worker) -> None: ...

    def after_poll(self) -> None:
        """Replace lost workers and hand over what now has room."""

    def fail_unclaimed(self) -> list[Result]:
        """Jobs that can no longer start: FAILED."""

    def reopen_queues(self) -> None:
        """After a new channel is open: hand it the jobs the dead one held."""

    def ask_workers_to_stop(self) -> None: ...

    def ready_budget(self, horizon: float) -> int:
        """How many tasks are worth holding ready beyond the ones running."""


class OneProcessPerJob:
    """UnlimitedParallelism's pool: a ``LocalWorker`` per job, started at once."""

    def __init__(self, host: PoolHost) -> None:
        self.host = host
        self._procs: dict[int, LocalWorker] = {}

    def open(self, channel: ResultChannel) -> None:
        pass

    def start(self) -> None:
        pass

    def accept(self, job: Job) -> None:
        dispatch = Dispatch(job)
        worker = LocalWorker(self.host.results(), job, dispatch.seq, self.host.worker_options)
        worker.start()
        assert worker.pid is not None
        self._procs[worker.pid] = worker
        dispatch.worker_pid = worker.pid
        self.host.ledger.dispatched[job.key] = dispatch

    def is_pending(self, key: Hashable) -> bool:
        return False

    def withdraw(self, key: Hashable) -> bool:
        return False

    def withdraw_pending(self) -> list[Result]:
        return []

    def take_back(self, dispatch: Dispatch) -> bool:
        return False

    def workers(self) -> list[_Worker]:
        return list(self._procs.values())

    def forget(self, worker: _Worker) -> None:
        if worker.pid is not None:
            self._procs.pop(worker.pid, None)

    def after_poll(self) -> None:
        pass

    def fail_unclaimed(self) -> list[Result]:
        return []

    def reopen_queues(self) -> None:
        pass

    def ask_workers_to_stop(self) -> None:
        pass

    def ready_budget(self, horizon: float) -> int:
        return 0


class QueuedPool:
    """LimitedParallelism's pool: ``size`` QueuedLocalWorkers fed from a task queue, highest priority first.

    At most ``size + prefetch`` jobs are on the task queue or running at once (an adopted task holds a
    slot too): the ``prefetch`` extra ones are taken by the first worker that comes free, without
    waiting for the engine's next poll. Until a worker takes it, a job can still be withdrawn.
    """

    def __init__(
        self, host: PoolHost, size: int, prefetch: int, idle_timeout: float = 0.0, min_workers: int = 0
    ) -> None:
        self.host = host
        self.size = size
        self.prefetch = prefetch
        #: 0: the pool stays at ``size`` (the default). Otherwise workers idle this long leave, down to
        #: ``min_workers``, and ``target`` (how many the pool keeps alive) follows the work.
        self.idle_timeout = idle_timeout
        self.min_workers = min(min_workers, size)
        self.target = size
        self._idle_since: dict[int, float] = {}
        self.task_queue: WorkQueue | None = None
        self._pool: dict[int, QueuedLocalWorker] = {}
        self._pending: list[tuple[int, int, Job]] = []
        self.pending_keys: set[Hashable] = set()
        self._order = itertools.count()
        self._index = itertools.count()
        self._failed_now: list[Result] = []  # failed while being handed over; reported by the next poll
        #: Where each job not yet seen started stands in the order jobs went on the task queue: the
        #: queue is FIFO, so a worker that took the job at position p means every job up to p was taken.
        self._position: dict[int, int] = {}
        self._puts = itertools.count()

    @property
    def _tasks(self) -> WorkQueue:
        if self.task_queue is None:
            raise RuntimeError("LimitedParallelism has no task queue: it was not started, or has ended.")
        return self.task_queue

    def open(self, channel: ResultChannel) -> None:
        self.task_queue = channel.new_queue()

    def start(self) -> None:
        gc.collect()  # once, here: what is garbage now would be copied into every worker
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        """Fork one worker with the heap frozen, at start() and whenever one comes back later (a
        replacement, a shrunk pool growing): objects the child's collector never walks stay shared
        copy-on-write with the scheduler (Airflow #58365). No collect() here: a late spawn happens in
        the scheduler's heartbeat, and a full collection of its heap would stall it."""
        taken = _FORK.RawArray("q", [-1, 0])  # TAKEN_SEQ, IN_GET: shared memory, inherited by the fork
        worker = QueuedLocalWorker(
            self._tasks, self.host.results(), self.host.worker_options, index=next(self._index), taken=taken
        )
        gc.freeze()  # the child keeps it frozen; the scheduler takes it back at once
        try:
            worker.start()
        finally:
            gc.unfreeze()
        assert worker.pid is not None
        self._pool[worker.pid] = worker

    def accept(self, job: Job) -> None:
        heapq.heappush(self._pending, (-job.priority, next(self._order), job))
        self.pending_keys.add(job.key)
        if self.target < self.size and not self.host.ending:
            self._grow()  # a shrunk pool forks a worker for it now, not at the next poll
        self._feed()

    def is_pending(self, key: Hashable) -> bool:
        return key in self.pending_keys

    def withdraw(self, key: Hashable) -> bool:
        if key not in self.pending_keys:
            return False
        self._pending = [item for item in self._pending if item[2].key != key]
        heapq.heapify(self._pending)
        self.pending_keys.discard(key)
        return True

    def _feed(self) -> None:
        dispatched = self.host.ledger.dispatched
        while (
            self._pending and len(dispatched) + self.host.adopted < self.size + self.prefetch and not self.host.ending
        ):
            _, _, job = heapq.heappop(self._pending)
            self.pending_keys.discard(job.key)
            dispatch = dispatched[job.key] = Dispatch(job)
            try:
                self._hand(dispatch)
            except CHANNEL_ERRORS as exc:
                self.host.restore_channel(exc)  # re-queues this job with the others not yet started
            except Exception as exc:  # noqa: BLE001 - e.g. it cannot be pickled: that job fails, the rest go on
                del dispatched[job.key]
                reason = f"forklift could not hand it to a worker: {type(exc).__name__}: {exc}"
                log.error("forklift: %s: %s", job.title or job.key, reason)
                self._failed_now.append(Finished.failed(job.key, Cause.NOT_STARTED, reason))

    def _hand(self, dispatch: Dispatch) -> None:
        self._tasks.put((dispatch.seq, dispatch.job))
        self._position[dispatch.seq] = next(self._puts)
        if len(self._position) > 4 * (self.size + self.prefetch) + 64:
            # Only jobs not yet seen started can be in doubt when a Manager dies.
            waiting = {d.seq for d in self.host.ledger.dispatched.values() if d.worker_pid is None}
            self._position = {seq: at for seq, at in self._position.items() if seq in waiting}

    def fail_unclaimed(self) -> list[Result]:
        out, self._failed_now = self._failed_now, []
        return out + self._fail_overdue()

    def _fail_overdue(self) -> list[Result]:
        dispatched = self.host.ledger.dispatched
        now = time.monotonic()
        overdue = [
            (key, d) for key, d in dispatched.items() if d.worker_pid is None and now - d.handed_at > CLAIM_TIMEOUT
        ]
        if not overdue:
            return []
        try:
            if self._tasks.qsize() > 0:
                return []  # still queued: workers are busy or being replaced, not lost
        except CHANNEL_ERRORS:
            return []
        out: list[Result] = []
        for key, dispatch in overdue:
            reason = f"lost before it started: no worker reported starting it within {CLAIM_TIMEOUT:g} s"
            log.error("forklift: %s: %s", dispatch.job.title or key, reason)
            out.append(Finished.failed(key, Cause.LOST_BEFORE_START, reason))
            del dispatched[key]
        return out

    def withdraw_pending(self) -> list[Result]:
        results: list[Result] = [Finished.failed(job.key, Cause.WITHDRAWN, WITHDRAWN) for _, _, job in self._pending]
        self._pending.clear()
        self.pending_keys.clear()
        # Prefetched jobs no worker has taken yet must not run before the workers' stop messages.
        try:
            handed = self._tasks.drain(DRAIN_BATCH)
        except CHANNEL_ERRORS:
            handed = []
        dispatched = self.host.ledger.dispatched
        for item in handed:
            if not item:
                continue
            if item == RETIRE:
                continue
            seq, job = item
            dispatch = dispatched.get(job.key)
            if dispatch is not None and dispatch.seq == seq:
                del dispatched[job.key]
                results.append(Finished.failed(job.key, Cause.WITHDRAWN, WITHDRAWN))
        return results

    def take_back(self, dispatch: Dispatch) -> bool:
        try:
            return bool(self._tasks.remove(dispatch.seq))
        except CHANNEL_ERRORS:
            return False

    def workers(self) -> list[_Worker]:
        return list(self._pool.values())

    def forget(self, worker: _Worker) -> None:
        if worker.pid is not None:
            self._pool.pop(worker.pid, None)

    def after_poll(self) -> None:
        if not self.host.ending:
            self._grow()
        try:
            self._feed()
            if self.idle_timeout > 0 and not self.host.ending:
                self._retire_idle()
        except CHANNEL_ERRORS as exc:
            self.host.restore_channel(exc)

    def _fresh(self) -> list[int]:
        """Live workers bound to the current Manager: the ones that are fed."""
        return [pid for pid, w in self._pool.items() if pid not in self.host.stale and w.is_alive()]

    def _grow(self) -> None:
        """Keep ``target`` fresh workers alive: replace the lost, and bring a shrunk pool back up to the
        work there is (what runs, waits on the queue or waits for room), forked from the warm scheduler."""
        if self.target < self.size:
            demand = len(self.host.ledger.dispatched) + len(self._pending)
            self.target = max(self.target, min(self.size, demand))
        # Workers bound to a dead Manager still count until they leave; only fresh ones are fed.
        for _ in range(self.target - len(self._fresh())):
            self._spawn()

    def _retire_idle(self) -> None:
        """Ask workers idle for ``idle_timeout`` to leave, down to ``min_workers``: a RETIRE on the task
        queue is taken by whichever idle worker reads it first, and idle workers are alike."""
        if self._pending:
            return
        dispatched = self.host.ledger.dispatched.values()
        busy = {d.worker_pid for d in dispatched if d.worker_pid is not None}
        fresh = self._fresh()
        now = time.monotonic()
        for pid in list(self._idle_since):
            if pid not in fresh or pid in busy:
                del self._idle_since[pid]
        for pid in fresh:
            if pid not in busy:
                self._idle_since.setdefault(pid, now)
        if any(d.worker_pid is None for d in dispatched):
            return  # jobs on the queue: the idle workers are about to take them
        long_idle = sum(
            1 for pid in fresh if pid in self._idle_since and now - self._idle_since[pid] >= self.idle_timeout
        )
        in_flight = max(0, len(fresh) - self.target)  # RETIREs sent that no worker has taken yet
        leave = min(long_idle - in_flight, self.target - self.min_workers)
        if leave <= 0:
            return
        for _ in range(leave):
            self._tasks.put(RETIRE)
        self.target -= leave
        self._idle_since.clear()  # the ones staying start a new idle period
        log.info(
            "forklift: %d worker(s) idle for %g s ([forklift] idle_timeout) leave the pool; %d stay",
            leave,
            self.idle_timeout,
            self.target,
        )

    def reopen_queues(self) -> None:
        # Jobs handed to the dead queue that no worker took go to the new one. One whose RUNNING report
        # died with the Manager was taken all the same: handed again, it would start twice (on Airflow 3
        # the second start is refused, and that refusal would fail a task whose first run goes on).
        taken_up_to = self._taken_up_to()
        handed, self._position = self._position, {}
        for dispatch in self.host.ledger.dispatched.values():
            if dispatch.worker_pid is not None:
                continue
            if handed.get(dispatch.seq, taken_up_to + 1) <= taken_up_to:
                dispatch.worker_pid = TAKEN_UNSEEN  # settled once the old workers have left
                continue
            dispatch.handed_at = time.monotonic()
            self._hand(dispatch)

    def _taken_up_to(self) -> int:
        """The furthest position on the dead queue a worker took, from the workers' shared cells."""
        workers = list(self._pool.values())

        def getting() -> list[QueuedLocalWorker]:
            return [w for w in workers if w.taken is not None and w.taken[IN_GET] and w.is_alive()]

        # A worker inside get() may be about to note what it took; on a dead Manager get() fails at once.
        deadline = time.monotonic() + GET_SETTLE
        while getting() and time.monotonic() < deadline:
            time.sleep(0.005)
        furthest = max((self._position.get(w.taken[TAKEN_SEQ], -1) for w in workers if w.taken is not None), default=-1)
        # Still inside get() (stopped, say): count each as having taken the next job, rather than risk
        # starting that job twice.
        return furthest + len(getting())

    def ask_workers_to_stop(self) -> None:
        # Count first, then send. Any worker takes any stop message, so one that takes a message sent
        # for an earlier worker can exit before the loop reaches it: counted as it went, its own
        # message would never be sent, and the last worker would wait for one until end()'s timeout.
        # (Airflow's own LocalExecutor.end() loses a message so, and waits on that worker forever.)
        alive = sum(1 for worker in self._pool.values() if worker.is_alive())
        for _ in range(alive):
            self._tasks.put(None)

    def ready_budget(self, horizon: float) -> int:
        """See :meth:`forklift.ledger.Ledger.ready_budget`: at most ``prefetch``, judged on ``size`` workers."""
        return self.host.ledger.ready_budget(self.size, self.prefetch, horizon)
