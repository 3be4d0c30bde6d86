"""Worker processes: ``LocalWorker`` (one job, then gone) and ``QueuedLocalWorker`` (many jobs).

Workers are forked from the executor's process so they start warm (Airflow already imported).
A worker never runs a task in its own process: it hands each job to :func:`forklift.runners.run_job`,
which gives the task a process (and process group) of its own, and reports on the result queue

    Result(key, RUNNING, task_pid, worker_pid)   as soon as the task's process exists
    Result(key, SUCCESS | FAILED, reason, worker_pid)   when it has ended
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from forklift.jobs import FAILED, RECYCLED, RUNNING, Job, Result
from forklift.lifeline import die_with_parent, kill_session
from forklift.proctitle import set_title
from forklift.runners import run_job

log = logging.getLogger(__name__)

# Workers are always forked: a warm copy of the executor's process is what makes dispatch cheap,
# whatever Airflow's [core] mp_start_method says (that setting governs Airflow's own processes).
_FORK = multiprocessing.get_context("fork")

TITLE_PREFIX = "airflow worker -- forklift"


@dataclass(frozen=True)
class WorkerOptions:
    """How every worker of one engine behaves; set once, from the deployment's settings."""

    #: Between SIGTERM and SIGKILL when a task outlives its deadline.
    kill_grace: float = 5.0
    #: Runs first in the worker (the adapter's after-fork hygiene; the engine knows no Airflow).
    init: Callable[[], None] | None = None
    #: QueuedLocalWorker only: leave after this many tasks / above this RSS in MiB (0: never).
    max_tasks: int = 0
    max_rss_mib: int = 0


class ResultChannelClosed(Exception):
    """The result queue's server is gone; the worker cannot report, so it stops."""


class _Worker(_FORK.Process):  # type: ignore[name-defined,misc]
    def __init__(self, result_queue: Any, options: WorkerOptions, *, name: str | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.result_queue = result_queue
        self.options = options
        self._task_pgid: int | None = None  # the session (and group) the running task leads

    def run(self) -> None:
        # Ctrl-C in a terminal reaches the whole foreground process group; the scheduler decides
        # how its executor shuts down, so a worker must not die of it on its own.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # SIGTERM (from terminate(), or from the kernel when the scheduler dies, however it dies):
        # take the running task's whole process group down too, so nothing is orphaned.
        signal.signal(signal.SIGTERM, self._on_sigterm)
        die_with_parent(signal.SIGTERM)
        if self.options.init is not None:
            try:
                self.options.init()
            except Exception:  # hygiene that failed must not cost the pool a worker
                log.exception("forklift worker %d: worker initializer failed; continuing", os.getpid())
        try:
            self.do_work()
        except ResultChannelClosed:
            log.warning("forklift worker %d: the result queue is gone; stopping.", os.getpid())

    def do_work(self) -> None:
        raise NotImplementedError

    def _on_sigterm(self, signum: int, frame: object) -> None:
        if self._task_pgid:  # the task leads its own session: leave nothing of it behind
            kill_session(self._task_pgid)
        os._exit(128 + signum)

    def _started(self, job: Job, seq: int, pid: int) -> None:
        self._task_pgid = pid
        self._report(Result(job.key, RUNNING, pid, os.getpid(), seq))

    def _report(self, result: Result) -> None:
        try:
            self.result_queue.put(result)
        except (EOFError, OSError) as exc:  # BrokenPipeError, ConnectionResetError, ...
            raise ResultChannelClosed(str(exc)) from exc

    def execute(self, job: Job, seq: int) -> None:
        set_title(f"{TITLE_PREFIX}: {job.title}")
        me = os.getpid()
        try:
            state, reason = run_job(job, lambda pid: self._started(job, seq, pid), self.options.kill_grace)
        except ResultChannelClosed:
            raise
        except Exception as exc:  # the worker must survive anything one job does
            log.exception("forklift worker %d could not run %s", me, job.title or job.key)
            state, reason = FAILED, f"forklift worker {me} could not run it: {type(exc).__name__}: {exc}"
        finally:
            self._task_pgid = None
        self._report(Result(job.key, state, reason, me, seq))


class LocalWorker(_Worker):
    """Runs exactly one job, reports, and exits (``UnlimitedParallelism``)."""

    def __init__(self, result_queue: Any, job: Job, seq: int = 0, options: WorkerOptions = WorkerOptions()) -> None:
        super().__init__(result_queue, options, name=f"forklift-LocalWorker[{job.title}]")
        self.job = job
        self.seq = seq

    def do_work(self) -> None:
        self.execute(self.job, self.seq)


class QueuedLocalWorker(_Worker):
    """Takes ``(seq, job)`` items from ``task_queue`` until it reads the poison pill ``None`` (``LimitedParallelism``).

    With ``options.max_tasks`` or ``options.max_rss_mib`` set, it leaves between tasks once it has run
    that many or grown that big (announcing it with a RECYCLED result), and the pool starts a fresh one.
    """

    def __init__(self, task_queue: Any, result_queue: Any, options: WorkerOptions = WorkerOptions(), *, index: int = 0) -> None:
        super().__init__(result_queue, options, name=f"forklift-QueuedLocalWorker-{index}")
        self.task_queue = task_queue

    def do_work(self) -> None:
        done = 0
        while True:
            set_title(f"{TITLE_PREFIX}: <idle>")
            try:
                item = self.task_queue.get()
            except (EOFError, OSError):
                log.warning("forklift worker %d: the task queue is gone; stopping.", os.getpid())
                return
            if item is None:  # poison pill
                return
            seq, job = item
            self.execute(job, seq)
            done += 1
            reason = self._recycle_reason(done)
            if reason:
                self._report(Result(None, RECYCLED, reason, os.getpid()))
                return

    def _recycle_reason(self, done: int) -> str | None:
        max_tasks, max_rss_mib = self.options.max_tasks, self.options.max_rss_mib
        if max_tasks and done >= max_tasks:
            return f"ran {done} tasks ([forklift] max_tasks_per_child = {max_tasks})"
        if max_rss_mib:
            import psutil

            rss_mib = psutil.Process().memory_info().rss / 2**20
            if rss_mib > max_rss_mib:
                return f"RSS {rss_mib:.0f} MiB is over [forklift] max_memory_per_child = {max_rss_mib} MiB"
        return None
