"""The process engine: ``UnlimitedParallelism`` and ``LimitedParallelism``.

A strategy owns every process forklift starts: a ``multiprocessing.Manager()`` server whose
``result_queue`` carries :class:`~forklift.jobs.Result` tuples back, and the workers. It knows
nothing of Airflow: jobs go in through :meth:`submit`, results come out of :meth:`poll`, which never
blocks. Both are called only from the executor's thread.

Bookkeeping is per dispatched job, so nothing is lost or double-counted:

* a job is *pending* (held here, by priority) until a worker is free for it;
* then *dispatched* until its SUCCESS/FAILED result is read, or its worker is found dead (FAILED,
  with the worker's exit status as the reason).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import signal
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from multiprocessing.managers import SyncManager
from typing import Any

import psutil

from forklift.jobs import FAILED, RUNNING, Job, Result, describe_exit
from forklift.proctitle import set_title
from forklift.workers import _FORK, LocalWorker, QueuedLocalWorker, _Worker

log = logging.getLogger(__name__)

#: How long a blocking read of the result queue may wait while ``end()`` is waiting for workers.
_END_POLL_SECONDS = 0.05


@dataclass
class _Dispatch:
    job: Job
    worker_pid: int | None = None  # known once the worker says RUNNING (Limited) or at spawn (Unlimited)
    task_pid: int | None = None  # leads the task's process group


def _manager_init() -> None:
    # The manager serves the result queue until end(); a terminal's Ctrl-C must not kill it early.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_title("airflow executor -- forklift: result queue manager")


class _Strategy:
    """What both strategies share: the Manager, the result queue, and dispatch bookkeeping."""

    def __init__(self, *, kill_grace: float = 5.0, worker_init: Callable[[], None] | None = None) -> None:
        self.kill_grace = kill_grace
        #: Runs first in every worker (the adapter's after-fork hygiene; the engine knows no Airflow).
        self.worker_init = worker_init
        self.manager: SyncManager | None = None
        self.result_queue: Any = None
        self._dispatched: dict[Hashable, _Dispatch] = {}
        self._started = False
        self._ending = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            raise RuntimeError(f"{type(self).__name__} was already started; create a new one.")
        self.manager = SyncManager(ctx=_FORK)
        self.manager.start(initializer=_manager_init)
        self.result_queue = self.manager.Queue()
        self._started = True

    def submit(self, job: Job) -> None:
        if not self._started or self._ending:
            raise RuntimeError(f"{type(self).__name__} is not accepting work (started={self._started}, ending={self._ending}).")
        if job.key in self._dispatched or self._is_pending(job.key):
            raise ValueError(f"job {job.key!r} is already queued or running in forklift; not running it twice.")
        self._accept(job)

    def poll(self, timeout: float = 0.0) -> list[Result]:
        """Everything that happened since the last call.

        Never blocks by default (the scheduler's ``sync()``); with ``timeout`` it waits up to that
        long for the first result, for callers that have nothing else to do.
        """
        dead = self._dead_workers()
        results = self._drain(block_for=timeout)
        results.extend(self._fail_lost(dead))
        self._after_poll(dead)
        return results

    def end(self, timeout: float) -> list[Result]:
        """Stop taking work, let running jobs finish for up to ``timeout`` s, stop the rest."""
        self._ending = True
        results = self._withdraw_pending()
        self._ask_workers_to_stop()
        deadline = time.monotonic() + timeout
        while self._live_workers() and time.monotonic() < deadline:
            results.extend(self._drain(block_for=_END_POLL_SECONDS))
        results.extend(self.poll_final())
        if self._live_workers() or self._dispatched:
            log.warning(
                "forklift: %d job(s) still running %.1f s after shutdown began; stopping them.",
                len(self._dispatched),
                timeout,
            )
        results.extend(self.terminate())
        return results

    def poll_final(self) -> list[Result]:
        dead = self._dead_workers()
        results = self._drain()
        results.extend(self._fail_lost(dead))
        return results

    def terminate(self) -> list[Result]:
        """Stop everything now: TERM, then after ``kill_grace`` KILL, of each task's process group
        and each worker; then shut the manager down. Returns FAILED results for unfinished jobs."""
        self._ending = True
        results = self._withdraw_pending()
        groups = [d.task_pid for d in self._dispatched.values() if d.task_pid]
        workers = list(self._workers())
        # Workers are our children: multiprocessing reaps them. Only their descendants are
        # waited for through psutil (which would otherwise reap the workers behind join()'s back).
        others = self._descendants(workers)
        for pgid in groups:
            _signal_group(pgid, signal.SIGTERM)
        for proc in others:
            _signal_proc(proc, signal.SIGTERM)
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        deadline = time.monotonic() + self.kill_grace
        for worker in workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        _, alive = psutil.wait_procs(others, timeout=max(0.0, deadline - time.monotonic()))
        for pgid in groups:
            _signal_group(pgid, signal.SIGKILL)
        for proc in alive:
            _signal_proc(proc, signal.SIGKILL)
        for worker in workers:
            if worker.is_alive():
                worker.kill()
        psutil.wait_procs(alive, timeout=self.kill_grace)
        self._reap_workers()
        if self.result_queue is not None and self.manager is not None:
            try:
                results.extend(r for r in self._drain() if r.state != RUNNING)
            except Exception as exc:  # the manager may be gone already; nothing more to read then
                log.debug("forklift: could not read final results: %s", exc)
        for key, dispatch in list(self._dispatched.items()):
            results.append(Result(key, FAILED, "stopped by forklift at shutdown before it finished", dispatch.worker_pid or 0))
            del self._dispatched[key]
        self._shutdown_manager()
        return results

    # -- state for callers and tests --------------------------------------------------------
    @property
    def running_keys(self) -> set[Hashable]:
        return set(self._dispatched)

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers() if w.pid is not None and w.is_alive()]

    # -- hooks for the two strategies -------------------------------------------------------
    def _accept(self, job: Job) -> None:
        raise NotImplementedError

    def _is_pending(self, key: Hashable) -> bool:
        return False

    def _withdraw_pending(self) -> list[Result]:
        return []

    def _workers(self) -> Iterable[_Worker]:
        raise NotImplementedError

    def _ask_workers_to_stop(self) -> None:
        pass

    def _after_poll(self, dead: list[_Worker]) -> None:
        pass

    def _forget_worker(self, worker: _Worker) -> None:
        raise NotImplementedError

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
        first = True
        while True:
            try:
                if first and block_for > 0:
                    raw = q.get(timeout=block_for)
                else:
                    raw = q.get_nowait()
            except queue.Empty:
                break
            first = False
            result = Result(*raw)
            if self._record(result):
                out.append(result)
        return out

    def _record(self, result: Result) -> bool:
        """Update bookkeeping; False for a result that belongs to no job of ours (late or foreign)."""
        dispatch = self._dispatched.get(result.key)
        if dispatch is None:
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
        else:
            del self._dispatched[result.key]
        return True

    def _fail_lost(self, dead: list[_Worker]) -> list[Result]:
        """Jobs whose worker died without reporting their end: FAILED, with the worker's exit status."""
        out: list[Result] = []
        for worker in dead:
            status = worker.exitcode if worker.exitcode is not None else -signal.SIGKILL
            for key, dispatch in list(self._dispatched.items()):
                if dispatch.worker_pid == worker.pid:
                    if dispatch.task_pid:
                        _signal_group(dispatch.task_pid, signal.SIGKILL)  # it has lost its supervisor
                    reason = f"forklift worker pid {worker.pid} {describe_exit(status)} while running it"
                    log.error("forklift: %s: %s", dispatch.job.title or key, reason)
                    out.append(Result(key, FAILED, reason, worker.pid or 0))
                    del self._dispatched[key]
            self._forget_worker(worker)
            _close_dead(worker)
        return out

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

    def __init__(self, *, kill_grace: float = 5.0, worker_init: Callable[[], None] | None = None) -> None:
        super().__init__(kill_grace=kill_grace, worker_init=worker_init)
        self._procs: dict[int, LocalWorker] = {}

    def _accept(self, job: Job) -> None:
        worker = LocalWorker(self.result_queue, job, init=self.worker_init)
        worker.start()
        assert worker.pid is not None
        self._procs[worker.pid] = worker
        self._dispatched[job.key] = _Dispatch(job, worker_pid=worker.pid)

    def _workers(self) -> Iterable[_Worker]:
        return list(self._procs.values())

    def _forget_worker(self, worker: _Worker) -> None:
        if worker.pid is not None:
            self._procs.pop(worker.pid, None)


class LimitedParallelism(_Strategy):
    """Exactly ``parallelism`` ``QueuedLocalWorker`` processes fed from a task queue.

    Jobs wait here, highest priority first, and go onto the task queue only when a worker is
    free, so a queued job never sits behind a busy worker and can still be withdrawn.
    """

    def __init__(
        self, parallelism: int, *, kill_grace: float = 5.0, worker_init: Callable[[], None] | None = None
    ) -> None:
        if parallelism <= 0:
            raise ValueError(f"LimitedParallelism needs parallelism >= 1, got {parallelism!r}; use UnlimitedParallelism for 0.")
        super().__init__(kill_grace=kill_grace, worker_init=worker_init)
        self.parallelism = parallelism
        self.task_queue: Any = None
        self._pool: dict[int, QueuedLocalWorker] = {}
        self._pending: list[tuple[int, int, Job]] = []
        self._pending_keys: set[Hashable] = set()
        self._seq = itertools.count()

    def start(self) -> None:
        super().start()
        assert self.manager is not None
        self.task_queue = self.manager.Queue()
        import gc

        # Objects the GC never touches stay shared copy-on-write with every worker (Airflow #58365).
        gc.collect()
        gc.freeze()
        try:
            for _ in range(self.parallelism):
                self._spawn()
        finally:
            gc.unfreeze()

    def _spawn(self) -> None:
        worker = QueuedLocalWorker(self.task_queue, self.result_queue, index=len(self._pool), init=self.worker_init)
        worker.start()
        assert worker.pid is not None
        self._pool[worker.pid] = worker

    def _accept(self, job: Job) -> None:
        heapq.heappush(self._pending, (-job.priority, next(self._seq), job))
        self._pending_keys.add(job.key)
        self._feed()

    def _is_pending(self, key: Hashable) -> bool:
        return key in self._pending_keys

    def _feed(self) -> None:
        while self._pending and len(self._dispatched) < self.parallelism and not self._ending:
            _, _, job = heapq.heappop(self._pending)
            self._pending_keys.discard(job.key)
            self._dispatched[job.key] = _Dispatch(job)
            self.task_queue.put(job)

    def _withdraw_pending(self) -> list[Result]:
        results = [
            Result(job.key, FAILED, "withdrawn: forklift was shutting down before it started", 0)
            for _, _, job in self._pending
        ]
        self._pending.clear()
        self._pending_keys.clear()
        return results

    def _workers(self) -> Iterable[_Worker]:
        return list(self._pool.values())

    def _forget_worker(self, worker: _Worker) -> None:
        if worker.pid is not None:
            self._pool.pop(worker.pid, None)

    def _after_poll(self, dead: list[_Worker]) -> None:
        if not self._ending:
            for worker in dead:
                log.error(
                    "forklift: worker pid %s %s; starting a replacement.",
                    worker.pid,
                    describe_exit(worker.exitcode if worker.exitcode is not None else -signal.SIGKILL),
                )
            while len(self._pool) < self.parallelism:
                self._spawn()
        self._feed()

    def _ask_workers_to_stop(self) -> None:
        for _ in self._live_workers():
            self.task_queue.put(None)

    @property
    def pending_keys(self) -> set[Hashable]:
        return set(self._pending_keys)


def make_strategy(
    parallelism: int, *, kill_grace: float = 5.0, worker_init: Callable[[], None] | None = None
) -> _Strategy:
    """``0`` → :class:`UnlimitedParallelism`; ``N > 0`` → :class:`LimitedParallelism` with N workers."""
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 0:
        raise ValueError(
            f"parallelism={parallelism!r} is invalid: use 0 (one process per task) or a positive number of workers."
        )
    if parallelism == 0:
        return UnlimitedParallelism(kill_grace=kill_grace, worker_init=worker_init)
    return LimitedParallelism(parallelism, kill_grace=kill_grace, worker_init=worker_init)


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
