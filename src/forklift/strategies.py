"""The process engine: ``UnlimitedParallelism`` and ``LimitedParallelism``.

A strategy owns every process forklift starts: a ``multiprocessing.Manager()`` server whose
``result_queue`` carries :class:`~forklift.jobs.Result` tuples back, and the workers. It knows
nothing of Airflow: jobs go in through :meth:`submit`, results come out of :meth:`poll`, which never
blocks by default. Both are called only from the executor's thread.

Bookkeeping is per dispatched job, so nothing is lost or double-counted:

* a job is *pending* (held here, by priority) until a worker is free for it;
* then *dispatched* until its SUCCESS/FAILED result is read, or its worker is found dead (FAILED,
  with the worker's exit status as the reason);
* a *revoked* job's process group is stopped and whatever it still reports is dropped.

If the Manager process dies, the next :meth:`poll` starts a new one: jobs that had not started are
handed to the new task queue, jobs whose worker can no longer report are FAILED once that worker
has gone (or, with a records directory, take the outcome their worker wrote), and fresh workers
replace the old.

With a records directory (:mod:`forklift.handover`), work outlives its scheduler: :meth:`end` with
``leave_running=True`` leaves running tasks to their workers instead of stopping them, and
:meth:`adopt` takes over a task another engine (a scheduler that stopped or died) left running on
this machine: it then holds a slot here and its end is reported by :meth:`poll` like any other.
"""

from __future__ import annotations

import collections
import gc
import heapq
import itertools
import logging
import multiprocessing.process
import os
import queue
import select
import signal
import statistics
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from multiprocessing.managers import SyncManager
from typing import Any

import psutil

from forklift.handover import ProcessId, RecordsDir, TaskRecord, boot_id
from forklift.jobs import FAILED, RECYCLED, RUNNING, Job, Result, describe_exit
from forklift.lifeline import die_with_parent, kill_session
from forklift.proctitle import set_title
from forklift.workers import _FORK, LocalWorker, QueuedLocalWorker, WorkerOptions, _Worker

log = logging.getLogger(__name__)

#: How long a blocking read of the result queue may wait while ``end()`` is waiting for workers.
_END_POLL_SECONDS = 0.05
#: A job handed to the task queue that no worker has started after this long, with the queue
#: empty, was taken by a worker that died before it could say so: it is FAILED, not waited for.
CLAIM_TIMEOUT = 60.0

#: Errors that mean "the Manager process (and so the queue) is gone".
_CHANNEL_ERRORS = (EOFError, OSError, ConnectionError)


_SEQ = itertools.count(1)


@dataclass
class _Dispatch:
    job: Job
    seq: int = field(default_factory=lambda: next(_SEQ))
    worker_pid: int | None = None  # known once the worker says RUNNING (Limited) or at spawn (Unlimited)
    task_pid: int | None = None  # leads the task's process group
    handed_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # when its RUNNING report was read


@dataclass
class _Adopted:
    """A task another engine left running, now watched from here through its worker's pidfd."""

    record: TaskRecord
    pidfd: int | None  # readable once the worker has exited; None: look with psutil instead


class _DrainableQueue(queue.Queue):  # type: ignore[type-arg]
    """The Manager's queue, plus :meth:`drain`: everything waiting, in one round trip.

    Each proxy call is a round trip to the Manager process (~0.1 ms); ``sync()`` reading a burst of
    results one ``get_nowait()`` at a time would pay that per result.
    """

    def remove(self, seq: int) -> bool:
        """Take the job with this dispatch number off the queue, if no worker has taken it yet."""
        with self.mutex:
            for item in self.queue:
                if isinstance(item, tuple) and item and item[0] == seq:
                    self.queue.remove(item)
                    self.not_full.notify()
                    return True
        return False

    def drain(self, limit: int) -> list[Any]:
        items: list[Any] = []
        with self.mutex:
            while self.queue and len(items) < limit:
                items.append(self.queue.popleft())
            if items:
                self.not_full.notify(len(items))
        return items


class _Manager(SyncManager):
    """``multiprocessing.Manager()``'s SyncManager, whose ``Queue()`` can also be drained at once."""


_Manager.register("Queue", _DrainableQueue)

#: How many recent run times ready_budget() judges the pace by.
RUNTIME_SAMPLES = 64

#: At most this many results are read in one round trip (bounds one message's size).
_DRAIN_BATCH = 10_000


def _manager_init() -> None:
    # The manager serves the result queue until end(); a terminal's Ctrl-C must not kill it early,
    # but it must not outlive the scheduler either.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(signal.SIGKILL)
    set_title("airflow executor -- forklift: result queue manager")


class _Strategy:
    """What both strategies share: the Manager, the result queue, and dispatch bookkeeping."""

    def __init__(
        self,
        *,
        kill_grace: float = 5.0,
        worker_init: Callable[[], None] | None = None,
        max_tasks_per_child: int = 0,
        max_memory_per_child: int = 0,
        records: RecordsDir | None = None,
        orphan_timeout: float = 600.0,
        oom_score_adj: int = 0,
    ) -> None:
        self.kill_grace = kill_grace
        self.records = records
        # What every worker gets. Recycling applies to QueuedLocalWorkers only: a LocalWorker runs
        # one task anyway.
        self.worker_options = WorkerOptions(
            kill_grace=kill_grace,
            init=worker_init,
            max_tasks=max_tasks_per_child,
            max_rss_mib=max_memory_per_child,
            records=records,
            orphan_timeout=orphan_timeout,
            oom_score_adj=oom_score_adj,
        )
        self._adopted: dict[Hashable, _Adopted] = {}
        #: A key's next dispatch, submitted while its earlier run was still live (see submit()).
        self._held_behind: dict[Hashable, Job] = {}
        self.manager: SyncManager | None = None
        self.result_queue: Any = None
        #: What happened, for metrics: worker_deaths, recycles, timeouts, revokes, channel_restarts, adoptions, memory_limits.
        self.counters: collections.Counter[str] = collections.Counter()
        # submit() → RUNNING, per job, for the dispatch-latency metric (taken by take_dispatch_latencies).
        self._submitted: dict[Hashable, float] = {}
        self._latencies: list[float] = []
        #: How long recent tasks ran (RUNNING read → end read), for ready_budget().
        self._runtimes: collections.deque[float] = collections.deque(maxlen=RUNTIME_SAMPLES)
        self._dispatched: dict[Hashable, _Dispatch] = {}
        self._revoked: set[int] = set()  # seqs of revoked dispatches whose reports are dropped
        self._kill_at: dict[int, float] = {}  # process group → when SIGKILL follows the SIGTERM
        self._recycled: set[int] = set()  # worker pids that left on purpose
        self._stale: set[int] = set()  # worker pids bound to a Manager that died
        self._started = False
        self._ending = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            raise RuntimeError(f"{type(self).__name__} was already started; create a new one.")
        self._open_channel()
        self._started = True

    def _open_channel(self) -> None:
        self.manager = _Manager(ctx=_FORK)
        self.manager.start(initializer=_manager_init)
        self.result_queue = self.manager.Queue()

    def submit(self, job: Job) -> None:
        if not self._started or self._ending:
            raise RuntimeError(
                f"{type(self).__name__} is not accepting work (started={self._started}, ending={self._ending})."
            )
        if self._is_pending(job.key) or job.key in self._held_behind:
            raise ValueError(f"job {job.key!r} is already waiting to run in forklift; not queueing it twice.")
        if job.key in self._dispatched or job.key in self._adopted:
            # The same key again while its earlier run is live, or ended but not yet read: a task resumed
            # after deferral (the trigger fired fast), a retry racing sync(). It runs once that run has
            # ended, never beside it; the earlier run's reports keep their own dispatch number.
            self._held_behind[job.key] = job
            log.info("forklift: %s queued again while its earlier run is live; it runs once that run ends.", job.title or job.key)
            return
        self._submitted[job.key] = time.monotonic()
        self._accept(job)

    def poll(self, timeout: float = 0.0) -> list[Result]:
        """Everything that happened since the last call.

        Never blocks by default (the scheduler's ``sync()``); with ``timeout`` it waits up to that
        long for the first result, for callers that have nothing else to do.
        """
        dead = self._dead_workers()
        try:
            results = self._drain(block_for=timeout)
        except _CHANNEL_ERRORS as exc:
            results = []
            self._restore_channel(exc)
        results.extend(self._fail_lost(dead))
        results.extend(self._fail_unclaimed())
        results.extend(self._poll_adopted())
        self._escalate_kills()
        self._after_poll(dead)
        for result in results:
            if result.state != RUNNING:
                self._submitted.pop(result.key, None)
        self._release_held()
        return results

    def _release_held(self) -> None:
        """Dispatch each held job whose key's earlier run has now ended (its result is read)."""
        for key in [k for k in self._held_behind if k not in self._dispatched and k not in self._adopted]:
            job = self._held_behind.pop(key)
            if self._ending:
                continue
            self._submitted[key] = time.monotonic()
            self._accept(job)

    def waiting(self, key: Hashable) -> bool:
        """Whether ``key`` still has a run here: pending, dispatched, adopted or held behind another."""
        return key in self._dispatched or key in self._adopted or key in self._held_behind or self._is_pending(key)

    def _withdraw_held(self) -> list[Result]:
        reason = "withdrawn: forklift was shutting down before it started"
        results = [Result(key, FAILED, reason, 0) for key in self._held_behind]
        self._held_behind.clear()
        return results

    def take_dispatch_latencies(self) -> list[float]:
        """Seconds from submit() to the task's process running, for each job that started since the last call."""
        out, self._latencies = self._latencies, []
        return out

    def revoke(self, key: Hashable) -> str:
        """Withdraw ``key`` if it has not started, stop its process group if it has.

        Returns ``"withdrawn"``, ``"stopped"``, ``"stopped when it starts"`` (a worker has taken it and
        not yet said RUNNING) or ``"unknown"``. Nothing more is reported for it.
        """
        self._submitted.pop(key, None)
        if self._held_behind.pop(key, None) is not None:
            # The scheduler's current copy is the held one; the earlier run is already over for it.
            self.counters["revokes"] += 1
            return "withdrawn"
        if self._withdraw(key):
            self.counters["revokes"] += 1
            return "withdrawn"
        adopted = self._adopted.pop(key, None)
        if adopted is not None:
            self.counters["revokes"] += 1
            self._stop_adopted(adopted)
            return "stopped"
        dispatch = self._dispatched.pop(key, None)
        if dispatch is None:
            return "unknown"
        self.counters["revokes"] += 1
        if dispatch.worker_pid is None and self._take_back(dispatch):
            return "withdrawn"
        self._revoked.add(dispatch.seq)
        if dispatch.task_pid:
            self._stop_group(dispatch.task_pid)
            return "stopped"
        return "stopped when it starts"  # a worker has taken it but not started it yet

    def end(
        self, timeout: float, escalate: Callable[[], bool] = lambda: False, *, leave_running: bool = False
    ) -> list[Result]:
        """Stop taking work, let running jobs finish for up to ``timeout`` s, then stop the rest, or,
        with ``leave_running`` (and a records directory), leave them to run on for the next scheduler
        to adopt.

        ``escalate`` is asked while waiting; once it says True the waiting stops (a second signal).
        """
        self._ending = True
        results = self._withdraw_pending() + self._withdraw_held()
        try:
            self._ask_workers_to_stop()
        except _CHANNEL_ERRORS as exc:
            log.warning("forklift: could not hand workers their stop message (%s); stopping them.", exc)
            timeout = 0
        deadline = time.monotonic() + timeout
        while self._live_workers() and time.monotonic() < deadline and not escalate():
            try:
                results.extend(self._drain(block_for=_END_POLL_SECONDS))
            except _CHANNEL_ERRORS:
                break
        results.extend(self.poll_final())
        results.extend(self._poll_adopted())
        if leave_running and self.records is not None:
            return results + self._leave_running()
        if self._live_workers() or self._dispatched:
            log.warning(
                "forklift: %d job(s) still running %.1f s after shutdown began%s; stopping them.",
                len(self._dispatched),
                time.monotonic() - (deadline - timeout),
                " (a second signal asked not to wait)" if escalate() else "",
            )
        results.extend(self.terminate())
        return results

    def poll_final(self) -> list[Result]:
        dead = self._dead_workers()
        try:
            results = self._drain()
        except _CHANNEL_ERRORS:
            results = []
        results.extend(self._fail_lost(dead))
        return results

    def terminate(self) -> list[Result]:
        """Stop everything now: TERM, then after ``kill_grace`` KILL, of each task's process group
        and each worker; then shut the manager down. Returns FAILED results for unfinished jobs."""
        self._ending = True
        results = self._withdraw_pending() + self._withdraw_held()
        groups = [d.task_pid for d in self._dispatched.values() if d.task_pid] + list(self._kill_at)
        workers = list(self._workers())
        # Workers are our children: multiprocessing reaps them. Only their descendants are
        # waited for through psutil (which would otherwise reap the workers behind join()'s back).
        tasks = self._descendants(workers)
        # Adopted tasks belong to another engine's workers: stopped the same way, waited for by polling.
        for key, adopted in list(self._adopted.items()):
            task = adopted.record.task
            if task is not None and task.alive():
                groups.append(task.pid)
                try:
                    tasks.append(psutil.Process(task.pid))
                except psutil.NoSuchProcess:
                    pass
            if adopted.pidfd is not None:
                os.close(adopted.pidfd)
            del self._adopted[key]
            results.append(Result(key, FAILED, "stopped by forklift at shutdown before it finished", adopted.record.worker.pid))
        # 1. Tasks first, gently: each task's whole process group gets SIGTERM and kill_grace to go.
        for pgid in groups:
            _signal_group(pgid, signal.SIGTERM)
        for proc in tasks:
            _signal_proc(proc, signal.SIGTERM)
        _, alive = psutil.wait_procs(tasks, timeout=self.kill_grace)
        for pgid in groups:
            _signal_group(pgid, signal.SIGKILL)
        for proc in alive:
            _signal_proc(proc, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=self.kill_grace)
        self._kill_at.clear()
        # Whatever a task started outside its worker's tree is still in the task's session.
        for pgid in groups:
            kill_session(pgid)
        # 2. Then the workers (a worker's SIGTERM handler also kills whatever task it still has).
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        deadline = time.monotonic() + self.kill_grace
        for worker in workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                worker.kill()
        self._reap_workers()
        if self.result_queue is not None and self.manager is not None:
            try:
                results.extend(r for r in self._drain() if r.state != RUNNING)
            except Exception as exc:  # the manager may be gone already; nothing more to read then
                log.debug("forklift: could not read final results: %s", exc)
        for key, dispatch in list(self._dispatched.items()):
            results.append(
                Result(key, FAILED, "stopped by forklift at shutdown before it finished", dispatch.worker_pid or 0)
            )
            del self._dispatched[key]
            self._forget_record(key)
        self._shutdown_manager()
        return results

    # -- state for callers and tests --------------------------------------------------------
    @property
    def running_keys(self) -> set[Hashable]:
        return set(self._dispatched) | set(self._adopted)

    @property
    def adopted_keys(self) -> set[Hashable]:
        return set(self._adopted)

    # -- handover: adopting what another engine left running ----------------------------------
    def adopt(self, key: Hashable) -> bool:
        """Take over ``key`` if another engine left it running on this machine (or left its outcome).

        True: it holds a slot here from now on and :meth:`poll` reports its end. False: there is
        nothing here to adopt (no record, another boot, or its worker died without an outcome, in
        which case whatever is left of the task is stopped), so Airflow may reset and rerun it.
        """
        if self.records is None or not self._started or self._ending:
            return False
        if key in self._dispatched or key in self._adopted or self._is_pending(key):
            return True  # ours already
        record = self.records.read(key)
        if record is None or record.boot != boot_id():
            return False
        pidfd = None
        if not record.finished:
            pidfd = _open_pidfd(record.worker)
            if pidfd is None and not record.worker.alive():
                # Its worker is gone without an outcome: nobody can vouch for the task any more.
                if record.task is not None and record.task.alive():
                    kill_session(record.task.pid)
                log.warning("forklift: not adopting %s: its worker %d is gone.", record.title or key, record.worker.pid)
                self.records.remove(key)
                return False
        self.records.claim(key, ProcessId.me())
        self._adopted[key] = _Adopted(record, pidfd)
        self.counters["adoptions"] += 1
        log.info(
            "forklift: adopted %s (%s; worker pid %d)",
            record.title or key,
            "still running" if not record.finished else f"already {record.state}",
            record.worker.pid,
        )
        return True

    def _poll_adopted(self) -> list[Result]:
        """Adopted tasks whose worker has exited: their outcome, as the worker recorded it."""
        if not self._adopted:
            return []
        fds = [a.pidfd for a in self._adopted.values() if a.pidfd is not None]
        ready = set(select.select(fds, [], [], 0)[0]) if fds else set()
        out: list[Result] = []
        for key, adopted in list(self._adopted.items()):
            if adopted.pidfd is not None:
                if adopted.pidfd not in ready:
                    continue
            elif not adopted.record.finished and adopted.record.worker.alive():
                continue
            out.append(self._adopted_outcome(key, adopted))
            del self._adopted[key]
        return out

    def _adopted_outcome(self, key: Hashable, adopted: _Adopted) -> Result:
        assert self.records is not None
        if adopted.pidfd is not None:
            os.close(adopted.pidfd)
        record = self.records.read(key) or adopted.record
        self.records.remove(key)
        worker = record.worker.pid
        if record.finished:
            return Result(key, record.state, record.reason, worker)
        if record.task is not None and record.task.alive():
            kill_session(record.task.pid)  # unsupervised now: stop what is left of it
        reason = f"forklift worker pid {worker} (of an earlier scheduler) died while running it"
        log.error("forklift: %s: %s", record.title or key, reason)
        return Result(key, FAILED, reason, worker)

    def _stop_adopted(self, adopted: _Adopted) -> None:
        task = adopted.record.task
        if task is not None and task.alive():
            self._stop_group(task.pid)
        if adopted.pidfd is not None:
            os.close(adopted.pidfd)
            adopted.pidfd = None

    def _leave_running(self) -> list[Result]:
        """End without stopping running tasks: their workers carry on and write their outcomes for
        the next scheduler. Only idle workers (sent their stop message already) and the Manager go."""
        left = [w for w in self._workers() if w.is_alive()]
        for worker in left:
            # multiprocessing's exit handler would SIGTERM and then join every live child: that is
            # what must not happen to a worker whose task is to outlive this scheduler.
            multiprocessing.process._children.discard(worker)  # type: ignore[attr-defined]
            self._forget_worker(worker)
        running = [d.job.title or key for key, d in self._dispatched.items() if d.worker_pid]
        if running:
            log.warning(
                "forklift: leaving %d running task(s) for the next scheduler to adopt "
                "([forklift] on_shutdown = adopt): %s",
                len(running),
                ", ".join(map(str, running)),
            )
        self._dispatched.clear()
        for adopted in self._adopted.values():
            if adopted.pidfd is not None:
                os.close(adopted.pidfd)
        self._adopted.clear()
        self._shutdown_manager()
        return []

    def _forget_record(self, key: Hashable) -> None:
        if self.records is not None:
            try:
                self.records.remove(key)
            except OSError as exc:  # a leftover record is swept later; never fail a result over it
                log.debug("forklift: could not remove the record of %r: %s", key, exc)

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers() if w.pid is not None and w.is_alive()]

    @property
    def manager_pid(self) -> int | None:
        process = getattr(self.manager, "_process", None)
        return process.pid if process is not None else None

    # -- hooks for the two strategies -------------------------------------------------------
    def _accept(self, job: Job) -> None:
        raise NotImplementedError

    def _is_pending(self, key: Hashable) -> bool:
        return False

    def _withdraw(self, key: Hashable) -> bool:
        return False

    def _withdraw_pending(self) -> list[Result]:
        return []

    def _take_back(self, dispatch: _Dispatch) -> bool:
        """Take a handed-over job back before any worker starts it; False if that is too late."""
        return False

    def _workers(self) -> Iterable[_Worker]:
        raise NotImplementedError

    def _ask_workers_to_stop(self) -> None:
        pass

    def _after_poll(self, dead: list[_Worker]) -> None:
        pass

    def _forget_worker(self, worker: _Worker) -> None:
        raise NotImplementedError

    def _fail_unclaimed(self) -> list[Result]:
        return []

    def _reopen_queues(self) -> None:
        pass

    # -- shared machinery -------------------------------------------------------------------
    def _live_workers(self) -> list[_Worker]:
        return [w for w in self._workers() if w.is_alive()]

    def _dead_workers(self) -> list[_Worker]:
        return [w for w in self._workers() if not w.is_alive()]

    def _drain(self, block_for: float = 0.0) -> list[Result]:
        out: list[Result] = []
        q = self.result_queue
        if q is None:
            return out
        raws: list[Any] = []
        if block_for > 0:
            try:
                raws.append(q.get(timeout=block_for))
            except queue.Empty:
                return out
        while True:
            batch = q.drain(_DRAIN_BATCH)
            raws.extend(batch)
            if len(batch) < _DRAIN_BATCH:
                break
        for raw in raws:
            result = Result(*raw)
            if self._record(result):
                out.append(result)
        return out

    def _record(self, result: Result) -> bool:
        """Update bookkeeping; False for a result that is not to be passed on."""
        if result.state == RECYCLED:
            self._recycled.add(result.worker_pid)
            self.counters["recycles"] += 1
            log.info("forklift: worker %d is being replaced: %s", result.worker_pid, result.info)
            return False
        if result.seq in self._revoked:
            if result.state == RUNNING and result.info:
                log.info("forklift: %s was revoked before it started; stopping its process group %d", result.key, result.info)
                self._stop_group(result.info)
            else:
                self._revoked.discard(result.seq)
                self._forget_record(result.key)
            return False
        dispatch = self._dispatched.get(result.key)
        if dispatch is None or (result.seq and result.seq != dispatch.seq):
            log.warning("forklift: ignoring a result for %r, which is not running here: %s", result.key, result.state)
            return False
        if dispatch.worker_pid and result.worker_pid and dispatch.worker_pid != result.worker_pid:
            log.warning(
                "forklift: ignoring a result for %r from worker %d; it runs on worker %d",
                result.key,
                result.worker_pid,
                dispatch.worker_pid,
            )
            return False
        if result.state == RUNNING:
            dispatch.worker_pid = result.worker_pid
            dispatch.task_pid = result.info
            dispatch.started_at = time.monotonic()
            submitted = self._submitted.get(result.key)
            if submitted is not None:
                self._latencies.append(time.monotonic() - submitted)
        else:
            if isinstance(result.info, str) and result.info.startswith("timed out"):
                self.counters["timeouts"] += 1
            if isinstance(result.info, str) and result.info.startswith("exceeded its memory limit"):
                self.counters["memory_limits"] += 1
            if dispatch.started_at is not None:
                self._runtimes.append(time.monotonic() - dispatch.started_at)
            del self._dispatched[result.key]
            self._forget_record(result.key)
        return True

    def ready_budget(self, horizon: float) -> int:
        """How many tasks are worth holding ready beyond the ones running: 0 here (see LimitedParallelism)."""
        return 0

    def _fail_lost(self, dead: list[_Worker]) -> list[Result]:
        """Jobs whose worker died without reporting their end: FAILED, with the worker's exit status."""
        out: list[Result] = []
        for worker in dead:
            status = worker.exitcode if worker.exitcode is not None else -signal.SIGKILL
            held_work = any(d.worker_pid == worker.pid for d in self._dispatched.values())
            # A LocalWorker leaves once it has reported: only leaving with its job unreported is a death.
            expected = worker.pid in self._recycled or worker.pid in self._stale or not held_work and isinstance(
                worker, LocalWorker
            )
            if not expected and not self._ending:
                self.counters["worker_deaths"] += 1
                log.error("forklift: worker pid %s %s; it will be replaced.", worker.pid, describe_exit(status))
            for key, dispatch in list(self._dispatched.items()):
                if dispatch.worker_pid == worker.pid:
                    recorded = self.records.read(key) if self.records is not None else None
                    if recorded is not None and recorded.finished and recorded.worker.pid == worker.pid:
                        # It could not report (its channel was gone), but it wrote down how the task ended.
                        out.append(Result(key, recorded.state, recorded.reason, worker.pid or 0, dispatch.seq))
                        del self._dispatched[key]
                        self._forget_record(key)
                        continue
                    # It has lost its supervisor: stop everything in its session, wherever it went.
                    if dispatch.task_pid:
                        kill_session(dispatch.task_pid)
                    if worker.pid in self._stale:
                        reason = (
                            f"its result was lost with forklift's result-queue manager (worker pid {worker.pid} "
                            f"{describe_exit(status)} once it could not report)"
                        )
                    else:
                        reason = f"forklift worker pid {worker.pid} {describe_exit(status)} while running it"
                    log.error("forklift: %s: %s", dispatch.job.title or key, reason)
                    out.append(Result(key, FAILED, reason, worker.pid or 0, dispatch.seq))
                    del self._dispatched[key]
                    self._forget_record(key)
            self._forget_worker(worker)
            self._recycled.discard(worker.pid or 0)
            self._stale.discard(worker.pid or 0)
            _close_dead(worker)
        return out

    def _restore_channel(self, exc: BaseException) -> None:
        """The Manager died: open a new channel; old workers leave once they find theirs gone."""
        old_pid = self.manager_pid
        self.counters["channel_restarts"] += 1
        log.error(
            "forklift: the result-queue manager (pid %s) is gone (%s: %s); starting a new one.",
            old_pid,
            type(exc).__name__,
            exc,
        )
        self._stale.update(w.pid for w in self._workers() if w.pid is not None)
        old = self.manager
        self._open_channel()
        self._reopen_queues()
        if old is not None:
            try:
                old.shutdown()
            except Exception as shutdown_exc:  # it is dead already; this only tidies up
                log.debug("forklift: old manager shutdown: %s", shutdown_exc)

    def _stop_group(self, pgid: int) -> None:
        _signal_group(pgid, signal.SIGTERM)
        self._kill_at[pgid] = time.monotonic() + self.kill_grace

    def _escalate_kills(self) -> None:
        now = time.monotonic()
        for pgid, when in list(self._kill_at.items()):
            if now >= when:
                _signal_group(pgid, signal.SIGKILL)
                del self._kill_at[pgid]

    @staticmethod
    def _descendants(workers: list[_Worker]) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        for worker in workers:
            if worker.pid is None:
                continue
            try:
                procs.extend(psutil.Process(worker.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        return procs

    def _reap_workers(self) -> None:
        for worker in list(self._workers()):
            worker.join(timeout=self.kill_grace)
            self._forget_worker(worker)
            _close_dead(worker)

    def _shutdown_manager(self) -> None:
        if self.manager is not None:
            try:
                self.manager.shutdown()
            except Exception as exc:  # already dead: nothing to stop
                log.debug("forklift: manager shutdown: %s", exc)
            self.manager = None
        self.result_queue = None


class UnlimitedParallelism(_Strategy):
    """One ``LocalWorker`` process per job, started at once; it exits once it has reported."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._procs: dict[int, LocalWorker] = {}

    def _accept(self, job: Job) -> None:
        dispatch = _Dispatch(job)
        worker = LocalWorker(self.result_queue, job, dispatch.seq, self.worker_options)
        worker.start()
        assert worker.pid is not None
        self._procs[worker.pid] = worker
        dispatch.worker_pid = worker.pid
        self._dispatched[job.key] = dispatch

    def _workers(self) -> Iterable[_Worker]:
        return list(self._procs.values())

    def _forget_worker(self, worker: _Worker) -> None:
        if worker.pid is not None:
            self._procs.pop(worker.pid, None)


class LimitedParallelism(_Strategy):
    """Exactly ``parallelism`` ``QueuedLocalWorker`` processes fed from a task queue.

    Jobs wait here, highest priority first. At most ``parallelism + prefetch`` are on the task queue
    or running at once: the ``prefetch`` extra ones are taken by the first worker that comes free,
    without waiting for the next ``poll()``. Until a worker takes it, a job can still be withdrawn.
    """

    def __init__(self, parallelism: int, *, prefetch: int = 0, **options: Any) -> None:
        if parallelism <= 0:
            raise ValueError(
                f"LimitedParallelism needs parallelism >= 1, got {parallelism!r}; use UnlimitedParallelism for 0."
            )
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch={prefetch!r} is invalid: use 0 or a positive number of jobs.")
        super().__init__(**options)
        self.parallelism = parallelism
        self.prefetch = prefetch
        self.task_queue: Any = None
        self._pool: dict[int, QueuedLocalWorker] = {}
        self._pending: list[tuple[int, int, Job]] = []
        self._pending_keys: set[Hashable] = set()
        self._seq = itertools.count()
        self._index = itertools.count()
        self._failed_now: list[Result] = []  # failed while being handed over; reported by poll()

    def start(self) -> None:
        super().start()
        # Objects the GC never touches stay shared copy-on-write with every worker (Airflow #58365).
        gc.collect()
        gc.freeze()
        try:
            for _ in range(self.parallelism):
                self._spawn()
        finally:
            gc.unfreeze()

    def _open_channel(self) -> None:
        super()._open_channel()
        assert self.manager is not None
        self.task_queue = self.manager.Queue()

    def _reopen_queues(self) -> None:
        # Jobs handed to the dead queue that no worker had started go to the new one.
        for dispatch in self._dispatched.values():
            if dispatch.worker_pid is None:
                dispatch.handed_at = time.monotonic()
                self.task_queue.put((dispatch.seq, dispatch.job))

    def _spawn(self) -> None:
        worker = QueuedLocalWorker(self.task_queue, self.result_queue, self.worker_options, index=next(self._index))
        worker.start()
        assert worker.pid is not None
        self._pool[worker.pid] = worker

    def _accept(self, job: Job) -> None:
        heapq.heappush(self._pending, (-job.priority, next(self._seq), job))
        self._pending_keys.add(job.key)
        self._feed()

    def _is_pending(self, key: Hashable) -> bool:
        return key in self._pending_keys

    def _withdraw(self, key: Hashable) -> bool:
        if key not in self._pending_keys:
            return False
        self._pending = [item for item in self._pending if item[2].key != key]
        heapq.heapify(self._pending)
        self._pending_keys.discard(key)
        return True

    def _fresh_workers(self) -> int:
        return sum(1 for pid, w in self._pool.items() if pid not in self._stale and w.is_alive())

    def _feed(self) -> None:
        # An adopted task holds a slot like a dispatched one.
        while (
            self._pending
            and len(self._dispatched) + len(self._adopted) < self.parallelism + self.prefetch
            and not self._ending
        ):
            _, _, job = heapq.heappop(self._pending)
            self._pending_keys.discard(job.key)
            dispatch = self._dispatched[job.key] = _Dispatch(job)
            try:
                self.task_queue.put((dispatch.seq, job))
            except _CHANNEL_ERRORS as exc:
                self._restore_channel(exc)  # re-queues this job with the others not yet started
            except Exception as exc:  # e.g. it cannot be pickled: that job fails, the rest go on
                del self._dispatched[job.key]
                reason = f"forklift could not hand it to a worker: {type(exc).__name__}: {exc}"
                log.error("forklift: %s: %s", job.title or job.key, reason)
                self._failed_now.append(Result(job.key, FAILED, reason, 0))

    def _fail_unclaimed(self) -> list[Result]:
        out, self._failed_now = self._failed_now, []
        return out + self._fail_overdue()

    def _fail_overdue(self) -> list[Result]:
        now = time.monotonic()
        overdue = [
            (key, d)
            for key, d in self._dispatched.items()
            if d.worker_pid is None and now - d.handed_at > CLAIM_TIMEOUT
        ]
        if not overdue:
            return []
        try:
            if self.task_queue.qsize() > 0:
                return []  # still queued: workers are busy or being replaced, not lost
        except _CHANNEL_ERRORS:
            return []
        out = []
        for key, dispatch in overdue:
            reason = f"lost before it started: no worker reported starting it within {CLAIM_TIMEOUT:g} s"
            log.error("forklift: %s: %s", dispatch.job.title or key, reason)
            out.append(Result(key, FAILED, reason, 0))
            del self._dispatched[key]
        return out

    def _withdraw_pending(self) -> list[Result]:
        reason = "withdrawn: forklift was shutting down before it started"
        results = [Result(job.key, FAILED, reason, 0) for _, _, job in self._pending]
        self._pending.clear()
        self._pending_keys.clear()
        # Prefetched jobs no worker has taken yet must not run before the workers' stop messages.
        try:
            handed = self.task_queue.drain(_DRAIN_BATCH)
        except _CHANNEL_ERRORS:
            handed = []
        for item in handed:
            if not item:
                continue
            seq, job = item
            dispatch = self._dispatched.get(job.key)
            if dispatch is not None and dispatch.seq == seq:
                del self._dispatched[job.key]
                results.append(Result(job.key, FAILED, reason, 0))
        return results

    def _take_back(self, dispatch: _Dispatch) -> bool:
        try:
            return bool(self.task_queue.remove(dispatch.seq))
        except _CHANNEL_ERRORS:
            return False

    def _workers(self) -> Iterable[_Worker]:
        return list(self._pool.values())

    def _forget_worker(self, worker: _Worker) -> None:
        if worker.pid is not None:
            self._pool.pop(worker.pid, None)

    def _after_poll(self, dead: list[_Worker]) -> None:
        if not self._ending:
            # Workers bound to a dead Manager still count until they leave; only fresh ones are
            # fed, so start enough fresh ones to serve the full parallelism now.
            while self._fresh_workers() < self.parallelism:
                self._spawn()
        try:
            self._feed()
        except _CHANNEL_ERRORS as exc:
            self._restore_channel(exc)

    def _ask_workers_to_stop(self) -> None:
        for _ in self._live_workers():
            self.task_queue.put(None)

    @property
    def pending_keys(self) -> set[Hashable]:
        return set(self._pending_keys)

    def ready_budget(self, horizon: float) -> int:
        """How many tasks are worth holding ready beyond the ones running (at most ``prefetch``).

        A held task is worth it when a worker will take it within ``horizon`` seconds. Each worker
        counts for ``horizon / typical`` tasks, ``typical`` being the median of the recent tasks'
        run times; a worker whose current task has already run longer than ``horizon`` and than
        three typical tasks counts for none, since nobody can say when it frees. Nothing is held
        until a task has finished here: a held task that waits past ``[scheduler] task_queued_timeout``
        is revoked by the scheduler, so long tasks must never have work queued behind them.
        """
        if not self.prefetch or not self._runtimes:
            return 0
        now = time.monotonic()
        typical = max(statistics.median(self._runtimes), 0.05)
        busy = [now - d.started_at for d in self._dispatched.values() if d.started_at is not None]
        stuck = sum(1 for elapsed in busy if elapsed > max(horizon, 3 * typical))
        cycling = max(0, self.parallelism - stuck)
        return min(self.prefetch, int(cycling * horizon / typical))


def make_strategy(parallelism: int, **options: Any) -> _Strategy:
    """``0`` → :class:`UnlimitedParallelism`; ``N > 0`` → :class:`LimitedParallelism` with N workers.

    ``options`` are :class:`_Strategy`'s: ``kill_grace``, ``worker_init``, ``max_tasks_per_child``,
    ``max_memory_per_child``; and ``prefetch``, which only LimitedParallelism uses.
    """
    prefetch = options.pop("prefetch", 0)
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 0:
        raise ValueError(
            f"parallelism={parallelism!r} is invalid: use 0 (one process per task) or a positive number of workers."
        )
    if parallelism == 0:
        return UnlimitedParallelism(**options)
    return LimitedParallelism(parallelism, prefetch=prefetch, **options)


def _open_pidfd(proc: ProcessId) -> int | None:
    """A pidfd for ``proc`` (readable once it exits), or None if it is gone or the kernel has none.

    The start time is checked after opening: the fd then names that very process, never a later one
    that reused its pid.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd = int(pidfd_open(proc.pid))
    except OSError:
        return None
    if not proc.alive():
        os.close(fd)
        return None
    return fd


def _close_dead(worker: _Worker) -> None:
    """Reap and release a worker that has exited (a live one is left alone)."""
    worker.join(timeout=0)
    if worker.exitcode is not None:
        worker.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_proc(proc: psutil.Process, sig: signal.Signals) -> None:
    try:
        proc.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
