"""Worker processes: ``LocalWorker`` (one job, then gone) and ``QueuedLocalWorker`` (many jobs).

Workers are forked from the executor's process so they start warm (Airflow already imported).
A worker never runs a task in its own process: it hands each job to :func:`forklift.runners.run_job`,
which gives the task a process (and process group) of its own, and reports on the result queue

    Started(key, task_pid, worker_pid, seq)   as soon as the task's process exists
    Finished(key, SUCCESS | FAILED, reason, worker_pid, seq, cause)   when it has ended

With a records directory (``WorkerOptions.records``), a worker also writes each task's record there
(:mod:`forklift.handover`) and outlives its scheduler: when the scheduler dies or exits, the kernel
sends the worker SIGHUP; it takes no new work, lets its task run on for a scheduler to adopt, stops
it if none does within ``orphan_timeout``, writes the outcome, and exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from forklift.handover import ProcessId, RecordsDir, TaskRecord, boot_id
from forklift.jobs import FAILED, RETIRE, RUNNING, Cause, Finished, Job, Message, Recycled, Started, WorkQueue
from forklift.lifeline import become_subreaper, die_with_parent, kill_session, stop_children, stop_session
from forklift.proctitle import set_title
from forklift.runners import run_job

log = logging.getLogger(__name__)

# Workers are always forked: a warm copy of the executor's process is what makes dispatch cheap,
# whatever Airflow's [core] mp_start_method says (that setting governs Airflow's own processes).
_FORK = multiprocessing.get_context("fork")

TITLE_PREFIX = "airflow worker -- forklift"

#: A QueuedLocalWorker's two cells in memory it shares with its engine (a ``RawArray("q", 2)``): the
#: seq of the last job it took from the task queue, and 1 while it waits in the queue's ``get()``. If the
#: Manager dies with a worker's RUNNING report unread, they tell the engine the job was taken, so that
#: it is not handed to a second worker (see QueuedPool.reopen_queues).
TAKEN_SEQ, IN_GET = 0, 1


@dataclass(frozen=True)
class WorkerOptions:
    """How every worker of one engine behaves; set once, from the deployment's settings."""

    #: Between SIGTERM and SIGKILL when a task outlives its deadline.
    kill_grace: float = 5.0
    #: Runs first in the worker (the adapter's after-fork hygiene; the engine knows no Airflow).
    init: Callable[[], None] | None = None
    #: QueuedLocalWorker only: leave after this many tasks / above this RSS in MiB / once its RSS has
    #: grown this many MiB over its size after start (0: never).
    max_tasks: int = 0
    max_rss_mib: int = 0
    max_rss_growth_mib: int = 0
    #: Where tasks' records go so another scheduler can adopt them. None: no handover, and a
    #: worker dies with its scheduler, taking its task with it.
    records: RecordsDir | None = None
    #: With ``records``: how long a task whose scheduler is gone may run on unadopted (0: stop it at once).
    orphan_timeout: float = 600.0
    #: Each task process raises its oom_score_adj to this (0: leave it), so the OOM killer takes a task
    #: before the scheduler or forklift's own processes.
    oom_score_adj: int = 0


class ResultChannelClosed(Exception):
    """The result queue's server is gone; the worker cannot report, so it stops."""


class _Worker(_FORK.Process):  # type: ignore[name-defined,misc]
    def __init__(self, result_queue: WorkQueue, options: WorkerOptions, *, name: str | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.result_queue = result_queue
        self.options = options
        self._task_pgid: int | None = None  # the session (and group) the running task leads
        self._job: Job | None = None  # the job being run, from before its process exists
        self._parent: ProcessId | None = None  # the scheduler that started this worker
        self._me: ProcessId | None = None
        self._leaving = False  # take no further work: finish the task in hand, then exit
        self._orphaned = False  # the scheduler is gone
        self._channel_closed = False
        self._stop_reason: str | None = None  # set when forklift stops an unadopted task (Cause.ORPHANED)
        self._task: ProcessId | None = None  # the running task's process, as its record names it
        self._watchdog: threading.Thread | None = None
        self._detached_stopped: list[tuple[int, str]] = []  # stopped on the supervisor's word (SIGUSR1)
        self._subreaper = False

    def run(self) -> None:
        # Ctrl-C in a terminal reaches the whole foreground process group; the scheduler decides
        # how its executor shuts down, so a worker must not die of it on its own.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._parent = ProcessId.of(os.getppid())
        self._me = ProcessId.me()
        # Whatever a task detaches from its session comes back here, to be stopped when the task ends;
        # the Task SDK supervisor says (SIGUSR1) when its task process has ended, before it exits itself.
        # (The handler is installed whatever the kernel says: SIGUSR1's default would end the worker.)
        self._subreaper = become_subreaper()
        signal.signal(signal.SIGUSR1, self._on_task_process_ended)
        if self.options.records is None:
            # No handover: when the scheduler dies, however it dies, the task goes with it.
            die_with_parent(signal.SIGTERM)
        else:
            # Handover: the scheduler's death is news, not an order (see _on_parent_gone).
            signal.signal(signal.SIGHUP, self._on_parent_gone)
            die_with_parent(signal.SIGHUP)
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
        if self.options.records is not None and self._job is not None:
            # Handover: a SIGTERM to the whole process group (a service manager stopping the
            # scheduler) must not cost the task its run; it goes on, and this worker leaves after it.
            # forklift's own terminate() stops the task's session first, so that still ends it.
            self._leaving = True
            return
        if self._task_pgid:  # the task leads its own session: leave nothing of it behind
            kill_session(self._task_pgid)
            stop_children(0)  # and what it detached from its session (re-parented to this subreaper)
        os._exit(128 + signum)

    def _on_task_process_ended(self, signum: int, frame: object) -> None:
        # No logging here (a handler must not take the logging lock); execute() logs what was stopped.
        if self._subreaper and self._task_pgid:
            self._detached_stopped += stop_children(self.options.kill_grace, spare=self._task_pgid)

    def _on_parent_gone(self, signum: int, frame: object) -> None:
        if self._parent is not None and os.getppid() == self._parent.pid:
            return  # a SIGHUP from a terminal, not the kernel's word that the scheduler died
        self._orphaned = self._leaving = True
        if self._job is None:
            os._exit(0)  # nothing in hand: nothing to hand over
        self._watch_while_orphaned()

    def _watch_while_orphaned(self) -> None:
        """Once the task's process exists, watch (in a thread: the main one waits for the task) for a
        scheduler to adopt it, and stop it if none does within ``orphan_timeout``."""
        if self._watchdog is not None or self._task_pgid is None or self._job is None:
            return
        self._watchdog = threading.Thread(
            target=self._orphan_watch, args=(self._job, self._task_pgid), name="forklift-orphan-watch", daemon=True
        )
        self._watchdog.start()

    def _orphan_watch(self, job: Job, pgid: int) -> None:
        records, limit = self.options.records, self.options.orphan_timeout
        assert records is not None
        unowned_since: float | None = time.monotonic()
        while self._task_pgid == pgid:
            owner = records.owner(job.key)
            if owner is not None and owner != self._parent and owner.alive():
                unowned_since = None  # adopted: its new scheduler watches it now
            elif unowned_since is None:
                unowned_since = time.monotonic()  # its adopter is gone too
                log.warning("forklift worker %d: the scheduler that adopted %s is gone.", os.getpid(), job.title)
            if unowned_since is not None and time.monotonic() - unowned_since >= limit:
                self._stop_reason = (
                    f"stopped by forklift: its scheduler was gone and no scheduler adopted it within {limit:g} s "
                    "([forklift] orphan_timeout)"
                )
                log.warning("forklift worker %d: %s: %s", os.getpid(), job.title or job.key, self._stop_reason)
                stop_session(pgid, self.options.kill_grace, still_running=lambda: self._task_pgid == pgid)
                return
            time.sleep(0.25)

    def _started(self, job: Job, seq: int, pid: int) -> None:
        self._task_pgid = pid
        self._task = ProcessId.of(pid)
        self._record(job, RUNNING, "", None)
        self._report(Started(job.key, pid, os.getpid(), seq))
        if self._orphaned:
            self._watch_while_orphaned()

    def _record(self, job: Job, state: str, reason: str, cause: Cause | None) -> None:
        records = self.options.records
        if records is None or self._me is None:
            return
        try:
            records.write(
                job.key,
                TaskRecord(
                    repr(job.key), job.title, boot_id(), self._me, self._task, state, reason, time.time(), cause
                ),
            )
        except OSError as exc:  # the record is a safety net; the task runs and reports without it
            log.warning("forklift worker %d: could not write the record of %s: %s", os.getpid(), job.title, exc)

    def _report(self, result: Message) -> None:
        if self._channel_closed:
            return
        try:
            self.result_queue.put(result)
        except (EOFError, OSError) as exc:  # BrokenPipeError, ConnectionResetError, ...
            if self.options.records is None:
                raise ResultChannelClosed(str(exc)) from exc
            # The task's record carries its outcome to whichever scheduler reads it; this worker
            # finishes supervising the task and then leaves.
            self._channel_closed = self._leaving = True

    def execute(self, job: Job, seq: int) -> None:
        if self._orphaned:
            return  # taken in the instant the scheduler died: not started, so Airflow resets it
        set_title(f"{TITLE_PREFIX}: {job.title}")
        me = os.getpid()
        self._job = job
        try:
            state, reason, cause = run_job(
                job, lambda pid: self._started(job, seq, pid), self.options.kill_grace, self.options.oom_score_adj
            )
        except ResultChannelClosed:
            if self._task_pgid:
                # Its RUNNING report could not be sent, so no engine will hear how it ends: it must not
                # run on unsupervised (the engine reports it lost with the Manager).
                kill_session(self._task_pgid)
            raise
        except Exception as exc:  # the worker must survive anything one job does
            log.exception("forklift worker %d could not run %s", me, job.title or job.key)
            state, reason = FAILED, f"forklift worker {me} could not run it: {type(exc).__name__}: {exc}"
            cause = Cause.NOT_STARTED
        finally:
            self._task_pgid = None
        for pid, command in self._detached_stopped:
            log.warning(
                "forklift: %s left pid %d running outside its session (%s); stopped it.",
                job.title or job.key,
                pid,
                command,
            )
        self._detached_stopped = []
        if self._stop_reason is not None:
            state, reason, cause = FAILED, f"{self._stop_reason} ({reason})", Cause.ORPHANED
        self._record(job, state, reason, cause)
        self._job = self._task = None
        self._report(Finished(job.key, state, reason, me, seq, cause))


class LocalWorker(_Worker):
    """Runs exactly one job, reports, and exits (``UnlimitedParallelism``)."""

    def __init__(
        self, result_queue: WorkQueue, job: Job, seq: int = 0, options: WorkerOptions = WorkerOptions()
    ) -> None:
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

    def __init__(
        self,
        task_queue: WorkQueue,
        result_queue: WorkQueue,
        options: WorkerOptions = WorkerOptions(),
        *,
        index: int = 0,
        taken: Any = None,
    ) -> None:
        super().__init__(result_queue, options, name=f"forklift-QueuedLocalWorker-{index}")
        self.task_queue = task_queue
        self.taken = taken  # TAKEN_SEQ and IN_GET, shared with the engine; None outside a pool
        self._rss_at_start = 0.0

    def do_work(self) -> None:
        done = 0
        # Its size once started (forked from the scheduler, initialised): what the leak guard compares to.
        self._rss_at_start = _rss_mib() if self.options.max_rss_growth_mib else 0.0
        while True:
            set_title(f"{TITLE_PREFIX}: <idle>")
            self._note_taken(getting=True)
            try:
                item = self.task_queue.get()
            except (EOFError, OSError):
                self._note_taken()
                log.warning("forklift worker %d: the task queue is gone; stopping.", os.getpid())
                return
            if item is None or item == RETIRE:
                self._note_taken()
                if item is None:  # poison pill
                    return
                # The pool is shrinking, and this worker was idle to take it.
                self._report(Recycled(os.getpid(), "idle past [forklift] idle_timeout", replace=False))
                return
            seq, job = item
            self._note_taken(seq)
            self.execute(job, seq)
            if self._leaving:
                return
            done += 1
            reason = self._recycle_reason(done)
            if reason:
                self._report(Recycled(os.getpid(), reason))
                return

    def _note_taken(self, seq: int | None = None, *, getting: bool = False) -> None:
        if self.taken is None:
            return
        if seq is not None:
            self.taken[TAKEN_SEQ] = seq  # before IN_GET clears: an engine that sees 0 there sees this
        self.taken[IN_GET] = 1 if getting else 0

    def _recycle_reason(self, done: int) -> str | None:
        max_tasks, max_rss_mib, growth_mib = (
            self.options.max_tasks,
            self.options.max_rss_mib,
            self.options.max_rss_growth_mib,
        )
        if max_tasks and done >= max_tasks:
            return f"ran {done} tasks ([forklift] max_tasks_per_child = {max_tasks})"
        if max_rss_mib or growth_mib:
            rss_mib = _rss_mib()
            if max_rss_mib and rss_mib > max_rss_mib:
                return f"RSS {rss_mib:.0f} MiB is over [forklift] max_memory_per_child = {max_rss_mib} MiB"
            if growth_mib and rss_mib - self._rss_at_start > growth_mib:
                return (
                    f"RSS grew {rss_mib - self._rss_at_start:.0f} MiB since it started ({self._rss_at_start:.0f} → "
                    f"{rss_mib:.0f} MiB), over [forklift] max_memory_growth_per_child = {growth_mib} MiB"
                )
        return None


def _rss_mib() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20
