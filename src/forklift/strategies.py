"""The process engine: ``UnlimitedParallelism`` and ``LimitedParallelism``.

A strategy owns every process forklift starts and knows nothing of Airflow: jobs go in through
:meth:`Strategy.submit`, results come out of :meth:`Strategy.poll`, which never blocks by default.
Both are called only from the executor's thread. It is put together from rooms of its own::

    Strategy ── channel  (channel.py)   the Manager server and its queues; reopened if it dies
             ── pool     (pools.py)     how jobs reach workers: OneProcessPerJob | QueuedPool
             ── ledger   (ledger.py)    each dispatch, what its worker said, how long jobs take
             ── adopted  (adoption.py)  tasks another engine left running here
             ── stopper  (lifeline.py)  TERM now, KILL after kill_grace, without blocking

Bookkeeping is per dispatched job, so nothing is lost or double-counted:

* a job is *pending* (held in the pool, by priority) until a worker is free for it;
* then *dispatched* until its SUCCESS/FAILED result is read, or its worker is found dead (FAILED,
  with the worker's exit status as the reason);
* a *revoked* job's process group is stopped and whatever it still reports is dropped.

If the Manager process dies, the next :meth:`Strategy.poll` starts a new one: jobs that had not
started are handed to the new task queue, jobs whose worker can no longer report are FAILED once that
worker has gone (or, with a records directory, take the outcome their worker wrote), and fresh
workers replace the old.

With a records directory (:mod:`forklift.handover`), work outlives its scheduler: ``end`` with
``leave_running=True`` leaves running tasks to their workers instead of stopping them, and ``adopt``
takes over a task another engine (a scheduler that stopped or died) left running on this machine:
it then holds a slot here and its end is reported by ``poll`` like any other.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing.process
import signal
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeGuard

import psutil

from forklift.adoption import Adoptions
from forklift.channel import CHANNEL_ERRORS, ResultChannel
from forklift.handover import RecordsDir
from forklift.jobs import FAILED, RUNNING, Cause, Finished, Job, Message, Recycled, Result, WorkQueue, describe_exit
from forklift.ledger import TAKEN_UNSEEN, Ledger
from forklift.lifeline import GroupStopper, kill_session, signal_group, signal_process
from forklift.pools import OneProcessPerJob, Pool, QueuedPool
from forklift.workers import LocalWorker, WorkerOptions, _Worker

log = logging.getLogger(__name__)

#: How long a blocking read of the result queue may wait while ``end()`` is waiting for workers.
_END_POLL_SECONDS = 0.05
STOPPED_AT_SHUTDOWN = "stopped by forklift at shutdown before it finished"


@dataclass(frozen=True)
class EngineOptions:
    """How an engine treats its workers and tasks (the executor fills it from ``[forklift]`` settings)."""

    #: How long a stopped task (or worker) gets between SIGTERM and SIGKILL.
    kill_grace: float = 5.0
    #: Run in each worker as it starts (the executor disposes the DB pool inherited from the scheduler).
    worker_init: Callable[[], None] | None = None
    #: Replace a QueuedLocalWorker after this many tasks (0: never).
    max_tasks_per_child: int = 0
    #: Replace a QueuedLocalWorker whose RSS exceeds this many MiB between tasks (0: never).
    max_memory_per_child: int = 0
    #: Replace a QueuedLocalWorker whose RSS has grown this many MiB since it started (0: never).
    max_memory_growth_per_child: int = 0
    #: LimitedParallelism: workers idle this many seconds leave, down to ``min_workers`` (0: never).
    idle_timeout: float = 0.0
    min_workers: int = 0
    #: LimitedParallelism: tasks accepted beyond the workers, held ready for the next free one.
    prefetch: int = 0
    #: Where running tasks leave their records for the next scheduler (None: no handover).
    records: RecordsDir | None = None
    #: With records: how long a task whose scheduler is gone runs on unadopted.
    orphan_timeout: float = 600.0
    #: oom_score_adj each task process raises itself to (0: leave it alone).
    oom_score_adj: int = 0


class Strategy:
    """What both strategies share: the Manager, the result queue, and dispatch bookkeeping."""

    def __init__(self, options: EngineOptions = EngineOptions()) -> None:
        self.options = options
        self.kill_grace = options.kill_grace
        self.records = options.records
        # What every worker gets. Recycling applies to QueuedLocalWorkers only: a LocalWorker runs
        # one task anyway.
        self.worker_options = WorkerOptions(
            kill_grace=options.kill_grace,
            init=options.worker_init,
            max_tasks=options.max_tasks_per_child,
            max_rss_mib=options.max_memory_per_child,
            max_rss_growth_mib=options.max_memory_growth_per_child,
            records=options.records,
            orphan_timeout=options.orphan_timeout,
            oom_score_adj=options.oom_score_adj,
        )
        #: A key's next dispatch, submitted while its earlier run was still live (see submit()).
        self._held_behind: dict[Hashable, Job] = {}
        self.channel: ResultChannel | None = None
        #: What happened, for metrics: worker_deaths, recycles, timeouts, revokes, channel_restarts, adoptions, memory_limits.
        self.counters: collections.Counter[str] = collections.Counter()
        self._stopper = GroupStopper(options.kill_grace)
        self.ledger = Ledger(self.counters, self._stopper.stop, self._forget_record)
        # The ledger's books, under the names the engine's code reads them by.
        self._dispatched = self.ledger.dispatched
        self._revoked = self.ledger.revoked
        self._submitted = self.ledger.submitted
        self._adopted = Adoptions(options.records, self._stopper, self.counters)
        self._recycled: set[int] = set()  # worker pids that left on purpose
        self.stale: set[int] = set()  # worker pids bound to a Manager that died
        self.pool: Pool = OneProcessPerJob(self)  # each strategy puts its own shape here
        self._started = False
        self._ending = False

    @property
    def result_queue(self) -> WorkQueue | None:
        """The queue workers report on (None before start() and after the end)."""
        return self.channel.results if self.channel is not None else None

    @property
    def _results(self) -> WorkQueue:
        if self.channel is None:
            raise RuntimeError(f"{type(self).__name__} has no result queue: it was not started, or has ended.")
        return self.channel.results

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def ending(self) -> bool:
        return self._ending

    @property
    def adopted(self) -> int:
        """How many adopted tasks hold a slot here."""
        return len(self._adopted)

    def results(self) -> WorkQueue:
        return self._results

    def start(self) -> None:
        if self._started:
            raise RuntimeError(f"{type(self).__name__} was already started; create a new one.")
        self._open_channel()
        self._started = True
        self.pool.start()

    def _open_channel(self) -> None:
        self.channel = ResultChannel()
        self.pool.open(self.channel)

    def submit(self, job: Job) -> None:
        if not self._started or self._ending:
            raise RuntimeError(
                f"{type(self).__name__} is not accepting work (started={self._started}, ending={self._ending})."
            )
        if self.pool.is_pending(job.key) or job.key in self._held_behind:
            raise ValueError(f"job {job.key!r} is already waiting to run in forklift; not queueing it twice.")
        if job.key in self._dispatched or job.key in self._adopted:
            # The same key again while its earlier run is live, or ended but not yet read: a task resumed
            # after deferral (the trigger fired fast), a retry racing sync(). It runs once that run has
            # ended, never beside it; the earlier run's reports keep their own dispatch number.
            self._held_behind[job.key] = job
            log.info(
                "forklift: %s queued again while its earlier run is live; it runs once that run ends.",
                job.title or job.key,
            )
            return
        self._submitted[job.key] = time.monotonic()
        self.pool.accept(job)

    def poll(self, timeout: float = 0.0) -> list[Result]:
        """Everything that happened since the last call.

        Never blocks by default (the scheduler's ``sync()``); with ``timeout`` it waits up to that
        long for the first result, for callers that have nothing else to do.
        """
        dead = self._dead_workers()
        try:
            results = self._drain(block_for=timeout)
        except CHANNEL_ERRORS as exc:
            results = []
            self.restore_channel(exc)
        results.extend(self._fail_lost(dead))
        results.extend(self.pool.fail_unclaimed())
        results.extend(self._adopted.poll())
        self._stopper.escalate()
        self.pool.after_poll()
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
            self.pool.accept(job)

    def waiting(self, key: Hashable) -> bool:
        """Whether ``key`` still has a run here: pending, dispatched, adopted or held behind another."""
        return key in self._dispatched or key in self._adopted or key in self._held_behind or self.pool.is_pending(key)

    def _withdraw_held(self) -> list[Result]:
        reason = "withdrawn: forklift was shutting down before it started"
        results: list[Result] = [Finished.failed(key, Cause.WITHDRAWN, reason) for key in self._held_behind]
        self._held_behind.clear()
        return results

    def take_dispatch_latencies(self) -> list[float]:
        """Seconds from submit() to the task's process running, for each job that started since the last call."""
        return self.ledger.take_latencies()

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
        if self.pool.withdraw(key):
            self.counters["revokes"] += 1
            return "withdrawn"
        if self._adopted.revoke(key):
            self.counters["revokes"] += 1
            return "stopped"
        dispatch = self._dispatched.pop(key, None)
        if dispatch is None:
            return "unknown"
        self.counters["revokes"] += 1
        if dispatch.worker_pid is None and self.pool.take_back(dispatch):
            return "withdrawn"
        self._revoked.add(dispatch.seq)
        if dispatch.task_pid:
            self._stopper.stop(dispatch.task_pid)
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
        try:
            return self._end(timeout, escalate, leave_running=leave_running)
        except BaseException as exc:
            # Whatever broke the orderly end, the workers must not outlive it: the interpreter's exit
            # joins every live worker, and a worker that never got its stop message waits forever.
            leave = leave_running and self.records is not None
            log.error(
                "forklift: shutdown failed (%r); %s now.",
                exc,
                "leaving running tasks for the next scheduler" if leave else "stopping every task and worker",
            )
            if leave:
                self._leave_running()
            else:
                self.terminate()
            raise

    def _end(self, timeout: float, escalate: Callable[[], bool], *, leave_running: bool) -> list[Result]:
        self._ending = True
        results = self.pool.withdraw_pending() + self._withdraw_held()
        try:
            self.pool.ask_workers_to_stop()
        except CHANNEL_ERRORS as exc:
            log.warning("forklift: could not hand workers their stop message (%s); stopping them.", exc)
            timeout = 0
        deadline = time.monotonic() + timeout
        while self._live_workers() and time.monotonic() < deadline and not escalate():
            try:
                results.extend(self._drain(block_for=_END_POLL_SECONDS))
            except CHANNEL_ERRORS:
                break
        results.extend(self.poll_final())
        results.extend(self._adopted.poll())
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
        except CHANNEL_ERRORS:
            results = []
        results.extend(self._fail_lost(dead))
        return results

    def terminate(self) -> list[Result]:
        """Stop everything now: TERM, then after ``kill_grace`` KILL, of each task's process group
        and each worker; then shut the manager down. Returns FAILED results for unfinished jobs."""
        self._ending = True
        results = self.pool.withdraw_pending() + self._withdraw_held()
        stopping = set(self._dispatched)
        groups = [d.task_pid for d in self._dispatched.values() if d.task_pid] + self._stopper.take_pending()
        workers = list(self.pool.workers())
        # Workers are our children: multiprocessing reaps them. Only their descendants are
        # waited for through psutil (which would otherwise reap the workers behind join()'s back).
        tasks = self._descendants(workers)
        # Adopted tasks belong to another engine's workers: stopped the same way, waited for by polling.
        for key, record in self._adopted.take_all():
            task = record.task
            if task is not None and task.alive():
                groups.append(task.pid)
                try:
                    tasks.append(psutil.Process(task.pid))
                except psutil.NoSuchProcess:
                    pass
            results.append(Finished.failed(key, Cause.STOPPED_AT_SHUTDOWN, STOPPED_AT_SHUTDOWN, record.worker.pid))
        # 1. Tasks first, gently: each task's whole process group gets SIGTERM and kill_grace to go.
        for pgid in groups:
            signal_group(pgid, signal.SIGTERM)
        for proc in tasks:
            signal_process(proc, signal.SIGTERM)
        _, alive = psutil.wait_procs(tasks, timeout=self.kill_grace)
        for pgid in groups:
            signal_group(pgid, signal.SIGKILL)
        for proc in alive:
            signal_process(proc, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=self.kill_grace)
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
        if self.channel is not None:
            try:
                results.extend(self._as_stopped(r, stopping) for r in self._drain() if r.state != RUNNING)
            except Exception as exc:  # noqa: BLE001 - the manager may be gone already; nothing more to read then
                log.debug("forklift: could not read final results: %s", exc)
        for key, dispatch in list(self._dispatched.items()):
            results.append(
                Finished.failed(key, Cause.STOPPED_AT_SHUTDOWN, STOPPED_AT_SHUTDOWN, max(dispatch.worker_pid or 0, 0))
            )
            del self._dispatched[key]
            self._forget_record(key)
        self._shutdown_manager()
        return results

    @staticmethod
    def _as_stopped(result: Result, stopping: set[Hashable]) -> Result:
        """A failure of a job that terminate() stopped, whose worker saw it die of the signals sent there:
        say who sent them, not "killed by SIGKILL — possibly out of memory"."""
        if isinstance(result, Finished) and result.state == FAILED and result.key in stopping:
            return Finished.failed(
                result.key, Cause.STOPPED_AT_SHUTDOWN, STOPPED_AT_SHUTDOWN, result.worker_pid, result.seq
            )
        return result

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
        if key in self._dispatched or key in self._adopted or self.pool.is_pending(key):
            return True  # ours already
        return self._adopted.adopt(key)

    def _leave_running(self) -> list[Result]:
        """End without stopping running tasks: their workers carry on and write their outcomes for
        the next scheduler. Only idle workers (sent their stop message already) and the Manager go."""
        left = [w for w in self.pool.workers() if w.is_alive()]
        for worker in left:
            # multiprocessing's exit handler would SIGTERM and then join every live child: that is
            # what must not happen to a worker whose task is to outlive this scheduler.
            multiprocessing.process._children.discard(worker)  # type: ignore[attr-defined]
            self.pool.forget(worker)
        running = [d.job.title or key for key, d in self._dispatched.items() if d.worker_pid]
        if running:
            log.warning(
                "forklift: leaving %d running task(s) for the next scheduler to adopt "
                "([forklift] on_shutdown = adopt): %s",
                len(running),
                ", ".join(map(str, running)),
            )
        self._dispatched.clear()
        self._adopted.release()
        self._shutdown_manager()
        return []

    def _forget_record(self, key: Hashable) -> None:
        if self.records is not None:
            try:
                self.records.remove(key, claimed=False)  # adopted tasks' records go through Adoptions
            except OSError as exc:  # a leftover record is swept later; never fail a result over it
                log.debug("forklift: could not remove the record of %r: %s", key, exc)

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.pool.workers() if w.pid is not None and w.is_alive()]

    @property
    def manager_pid(self) -> int | None:
        return self.channel.pid if self.channel is not None else None

    # -- shared machinery -------------------------------------------------------------------
    def _live_workers(self) -> list[_Worker]:
        return [w for w in self.pool.workers() if w.is_alive()]

    def _dead_workers(self) -> list[_Worker]:
        return [w for w in self.pool.workers() if not w.is_alive()]

    def _drain(self, block_for: float = 0.0) -> list[Result]:
        if self.channel is None:
            return []
        return [message for message in self.channel.drain(block_for) if self._record(message)]

    def _record(self, message: Message) -> TypeGuard[Result]:
        """Update bookkeeping; False for a message that is not to be passed on."""
        if isinstance(message, Recycled):
            self._recycled.add(message.worker_pid)
        return self.ledger.record(message)

    def ready_budget(self, horizon: float) -> int:
        """How many tasks are worth holding ready beyond the ones running (see Ledger.ready_budget)."""
        return self.pool.ready_budget(horizon)

    def _fail_lost(self, dead: list[_Worker]) -> list[Result]:
        """Jobs whose worker died without reporting their end: FAILED, with the worker's exit status."""
        out: list[Result] = []
        for worker in dead:
            status = worker.exitcode if worker.exitcode is not None else -signal.SIGKILL
            held_work = any(d.worker_pid == worker.pid for d in self._dispatched.values())
            # A LocalWorker leaves once it has reported: only leaving with its job unreported is a death.
            expected = (
                worker.pid in self._recycled
                or worker.pid in self.stale
                or (not held_work and isinstance(worker, LocalWorker))
            )
            if not expected and not self._ending:
                self.counters["worker_deaths"] += 1
                log.error("forklift: worker pid %s %s; it will be replaced.", worker.pid, describe_exit(status))
            for key, dispatch in list(self._dispatched.items()):
                if dispatch.worker_pid == worker.pid:
                    recorded = self.records.read(key) if self.records is not None else None
                    if recorded is not None and recorded.finished and recorded.worker.pid == worker.pid:
                        # It could not report (its channel was gone), but it wrote down how the task ended.
                        out.append(
                            Finished(
                                key, recorded.state, recorded.reason, worker.pid or 0, dispatch.seq, recorded.cause
                            )
                        )
                        del self._dispatched[key]
                        self._forget_record(key)
                        continue
                    # It has lost its supervisor: stop everything in its session, wherever it went.
                    if dispatch.task_pid:
                        kill_session(dispatch.task_pid)
                    cause = Cause.LOST_WITH_MANAGER if worker.pid in self.stale else Cause.WORKER_DIED
                    if worker.pid in self.stale:
                        reason = (
                            f"its result was lost with forklift's result-queue manager (worker pid {worker.pid} "
                            f"{describe_exit(status)} once it could not report)"
                        )
                    else:
                        reason = f"forklift worker pid {worker.pid} {describe_exit(status)} while running it"
                    log.error("forklift: %s: %s", dispatch.job.title or key, reason)
                    out.append(Finished.failed(key, cause, reason, worker.pid or 0, dispatch.seq))
                    del self._dispatched[key]
                    self._forget_record(key)
            self.pool.forget(worker)
            self._recycled.discard(worker.pid or 0)
            self.stale.discard(worker.pid or 0)
            _close_dead(worker)
        if not self.stale:
            out.extend(self._settle_taken_unseen())
        return out

    def _settle_taken_unseen(self) -> list[Result]:
        """Jobs a worker of a dead Manager took without its RUNNING report arriving: once every such
        worker has left, each ends as its record says (handover), or FAILED, lost with the Manager."""
        out: list[Result] = []
        for key, dispatch in list(self._dispatched.items()):
            if dispatch.worker_pid != TAKEN_UNSEEN:
                continue
            recorded = self.records.read(key) if self.records is not None else None
            if recorded is not None and recorded.finished:
                out.append(
                    Finished(key, recorded.state, recorded.reason, recorded.worker.pid, dispatch.seq, recorded.cause)
                )
            else:
                reason = (
                    "its result was lost with forklift's result-queue manager (a worker took it just before "
                    "the manager died, and has left)"
                )
                log.error("forklift: %s: %s", dispatch.job.title or key, reason)
                out.append(Finished.failed(key, Cause.LOST_WITH_MANAGER, reason, 0, dispatch.seq))
            del self._dispatched[key]
            self._forget_record(key)
        return out

    def restore_channel(self, exc: BaseException) -> None:
        """The Manager died: open a new channel; old workers leave once they find theirs gone."""
        old_pid = self.manager_pid
        self.counters["channel_restarts"] += 1
        log.error(
            "forklift: the result-queue manager (pid %s) is gone (%s: %s); starting a new one.",
            old_pid,
            type(exc).__name__,
            exc,
        )
        self.stale.update(w.pid for w in self.pool.workers() if w.pid is not None)
        old = self.channel
        self._open_channel()
        self.pool.reopen_queues()
        if old is not None:
            old.close()  # it is dead already; this only tidies up

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
        for worker in list(self.pool.workers()):
            worker.join(timeout=self.kill_grace)
            self.pool.forget(worker)
            _close_dead(worker)

    def _shutdown_manager(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


class UnlimitedParallelism(Strategy):
    """One ``LocalWorker`` process per job, started at once; it exits once it has reported."""

    def __init__(self, options: EngineOptions = EngineOptions()) -> None:
        super().__init__(options)
        self.pool = OneProcessPerJob(self)


class LimitedParallelism(Strategy):
    """Exactly ``parallelism`` ``QueuedLocalWorker`` processes fed from a task queue (see QueuedPool):
    jobs wait here, highest priority first, and up to ``options.prefetch`` more than the workers wait
    on the task queue, held ready for the first worker that comes free."""

    def __init__(self, parallelism: int, options: EngineOptions = EngineOptions()) -> None:
        prefetch = options.prefetch
        if parallelism <= 0:
            raise ValueError(
                f"LimitedParallelism needs parallelism >= 1, got {parallelism!r}; use UnlimitedParallelism for 0."
            )
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch={prefetch!r} is invalid: use 0 or a positive number of jobs.")
        super().__init__(options)
        self.parallelism = parallelism
        self.prefetch = prefetch
        self.pool = self._queued = QueuedPool(
            self, parallelism, prefetch, idle_timeout=options.idle_timeout, min_workers=options.min_workers
        )

    @property
    def task_queue(self) -> WorkQueue | None:
        return self._queued.task_queue

    @property
    def pending_keys(self) -> set[Hashable]:
        return set(self._queued.pending_keys)


def make_strategy(parallelism: int, options: EngineOptions = EngineOptions()) -> Strategy:
    """``0`` → :class:`UnlimitedParallelism`; ``N > 0`` → :class:`LimitedParallelism` with N workers."""
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 0:
        raise ValueError(
            f"parallelism={parallelism!r} is invalid: use 0 (one process per task) or a positive number of workers."
        )
    if parallelism == 0:
        return UnlimitedParallelism(options)
    return LimitedParallelism(parallelism, options)


def _close_dead(worker: _Worker) -> None:
    """Reap and release a worker that has exited (a live one is left alone)."""
    worker.join(timeout=0)
    if worker.exitcode is not None:
        worker.close()
