"""Run one job inside a worker: by fork or in a fresh interpreter.

Either way the task gets a process of its own that leads its own process group, so the
executor can stop the task and everything it started with one ``killpg``, and a crash of the
task cannot take the worker down. The worker waits for that process and turns its exit status
into SUCCESS or FAILED with a reason.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from forklift.containment import MemorySampler, OomWitness, raise_oom_score
from forklift.jobs import FAILED, SUCCESS, Cause, Command, ForkCall, Job, describe_exit, exit_cause
from forklift.lifeline import kill_session, stop_children, stop_session
from forklift.proctitle import set_title
from forklift.supervisor_wake import WORKER_PID_ENV

log = logging.getLogger(__name__)

#: Called with the pid of the task's process as soon as it exists.
OnStarted = Callable[[int], None]

# Signals a worker changes for itself; a task must start with Python's defaults.
_RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD, signal.SIGHUP)


#: How a job ended, as run_job() tells its worker: (SUCCESS or FAILED, the reason, the cause).
Ending = tuple[str, str, Cause | None]


def run_job(job: Job, on_started: OnStarted, kill_grace: float = 5.0, oom_score_adj: int = 0) -> Ending:
    """Run ``job`` to completion, or until its ``timeout`` or ``memory_limit_mib`` (then TERM, and KILL
    after ``kill_grace``); return ``(state, reason, cause)``. The task process raises its ``oom_score_adj``
    to the value given, so the kernel's OOM killer takes it before its worker or the scheduler."""
    if isinstance(job.runnable, ForkCall):
        outcome = _run_forked(job, job.runnable, on_started, kill_grace, oom_score_adj)
    elif isinstance(job.runnable, Command):
        try:
            outcome = _run_subprocess(job, job.runnable, on_started, kill_grace, oom_score_adj)
        except OSError as exc:  # e.g. the executable is missing: a FAILED task, never a dead worker
            return FAILED, f"could not start {job.runnable.argv[0]!r}: {exc.strerror or exc}", Cause.NOT_STARTED
    else:
        # The type says this cannot happen; a job is whatever came off a queue, so it can.
        reason = f"unknown runnable {type(job.runnable).__name__}; expected ForkCall or Command"  # type: ignore[unreachable]
        return FAILED, reason, Cause.NOT_STARTED
    _stop_detached(job, kill_grace)
    status = outcome.status
    if outcome.stopped_by is not None:
        how = f"forklift stopped its process group with {outcome.stopped_by.name} ({describe_exit(status)})"
        if outcome.memory_mib is not None:
            # Rounded up: it was over the limit, so it never reads "250 MiB > 250 MiB".
            used = math.ceil(outcome.memory_mib)
            reason = f"exceeded its memory limit: {used} MiB > {job.memory_limit_mib} MiB; {how}"
            return FAILED, reason, Cause.MEMORY_LIMIT
        return FAILED, f"timed out: still running {job.timeout:g} s after it started; {how}", Cause.TIMED_OUT
    if status == 0:
        return SUCCESS, describe_exit(status), None
    if status == -signal.SIGKILL and outcome.oom_killed:
        reason = (
            "killed by SIGKILL: the kernel's OOM killer chose it (its memory cgroup counted an OOM kill; "
            f"forklift makes tasks the OOM killer's first choice, oom_score_adj {oom_score_adj})"
        )
        return FAILED, reason, Cause.OOM_KILLED
    return FAILED, describe_exit(status), exit_cause(status)


@dataclass(frozen=True)
class _Outcome:
    status: int  # Popen-style: negative is the signal that ended it
    stopped_by: signal.Signals | None = None  # forklift's own stop, if it came to that
    memory_mib: float | None = None  # what the task used when forklift stopped it for its memory
    oom_killed: bool = False  # its memory cgroup counted an OOM kill while it ran


def _run_forked(job: Job, call: ForkCall, on_started: OnStarted, kill_grace: float, oom_score_adj: int) -> _Outcome:
    # The child says when its session exists: only then is it reported RUNNING, so a stop that
    # follows the report always finds the session to signal.
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the task's process
        os.close(ready_r)
        code = 1
        try:
            _become_task_process(job)
            raise_oom_score(oom_score_adj)
            os.write(ready_w, b"1")
            os.close(ready_w)
            code = int(call.func(*call.args) or 0)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            log.exception("Task %s raised", job.title or job.key)
            code = 1
        finally:
            # Flush what the task wrote, then leave without running the worker's atexit/finalizers,
            # which belong to the worker (and would e.g. close the Manager connection it shares).
            try:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(ready_w)
    os.read(ready_r, 1)  # b"" if it died first: its exit status will say why
    os.close(ready_r)
    on_started(pid)
    witness = OomWitness(pid)
    stopped_by, memory_mib = _supervise(pid, job, kill_grace)
    _sweep_group(pid, job)
    _, wait_status = _waitpid_retrying(pid)
    return _Outcome(os.waitstatus_to_exitcode(wait_status), stopped_by, memory_mib, witness.saw_oom_kill())


def _become_task_process(job: Job) -> None:
    """After-fork hygiene in the task's child.

    The DB engine pool is already disposed with ``close=False`` by Airflow's own
    ``register_at_fork`` hook (closing would break the parent's connections).
    """
    # A session of its own (and so a process group of its own): everything the task starts stays
    # in it, even in other groups, so it can all be stopped together.
    os.setsid()
    _reset_signals()
    os.environ[WORKER_PID_ENV] = str(os.getppid())  # the worker: see supervisor_wake
    # As a fresh interpreter would have it: Ctrl-C is a KeyboardInterrupt the task can handle.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.update(job.env)
    set_title(f"airflow task -- forklift: {job.title}")


def _reset_signals() -> None:
    for sig in _RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def _prepare_child(oom_score_adj: int) -> None:
    _reset_signals()
    raise_oom_score(oom_score_adj)


def _run_subprocess(
    job: Job, command: Command, on_started: OnStarted, kill_grace: float, oom_score_adj: int
) -> _Outcome:
    env = {**os.environ, **job.env, WORKER_PID_ENV: str(os.getpid())}  # see supervisor_wake
    proc = subprocess.Popen(
        list(command.argv),
        stdin=subprocess.PIPE if command.secret_input is not None else subprocess.DEVNULL,
        close_fds=True,
        start_new_session=True,  # its own session and group (see _become_task_process), no terminal
        env=env,
        # An ignored signal stays ignored across exec: undo what the worker set for itself.
        # (Safe here: a worker has no threads.)
        preexec_fn=functools.partial(_prepare_child, oom_score_adj),  # noqa: PLW1509 - no threads here
    )
    on_started(proc.pid)
    witness = OomWitness(proc.pid)
    if command.secret_input is not None and proc.stdin is not None:
        try:
            proc.stdin.write(command.secret_input)
        except BrokenPipeError:
            pass  # it exited before reading; its exit status says why
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
    stopped_by, memory_mib = _supervise(proc.pid, job, kill_grace)
    _sweep_group(proc.pid, job)
    return _Outcome(proc.wait(), stopped_by, memory_mib, witness.saw_oom_kill())


def _supervise(pid: int, job: Job, kill_grace: float) -> tuple[signal.Signals | None, float | None]:
    """Wait until the child ``pid`` exits, its ``job.timeout`` passes or its tree's memory goes over
    ``job.memory_limit_mib`` (sampled more often the nearer it gets); past a limit, TERM then KILL its group.

    Returns the signal that stopped it (None if it ended by itself) and, for a memory stop, the MiB it
    used. The child is not reaped here.
    """
    limit = job.memory_limit_mib
    if job.timeout is None and not limit:
        return None, None
    deadline = None if job.timeout is None else time.monotonic() + job.timeout
    sampler = MemorySampler(limit) if limit else None
    while True:
        wait = sampler.next_interval() if sampler is not None else float("inf")
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic()))
        if _wait_exit(pid, wait):
            return None, None
        used = sampler.sample() if sampler is not None else None
        if used is not None and used > limit and sampler is not None:
            # No grace for a task still growing: Airflow 3's task runner takes SIGTERM as a cue to call
            # on_kill() and runs on, allocating as it goes.
            stopped_at = used
            still_growing = lambda stopped_at=stopped_at: sampler.sample() > stopped_at * 1.1  # noqa: E731
            return stop_session(pid, kill_grace, lambda: not _wait_exit(pid, 0), impatient=still_growing), used
        if deadline is not None and time.monotonic() >= deadline:
            return _stop(pid, kill_grace), None


def _stop(pid: int, kill_grace: float) -> signal.Signals:
    """TERM, then KILL the task's session; its leader (the supervisor that reports the task's end)
    goes last (see :func:`forklift.lifeline.stop_session`)."""
    return stop_session(pid, kill_grace, still_running=lambda: not _wait_exit(pid, 0))


def _sweep_group(pid: int, job: Job) -> None:
    """Once the task's leader has exited, kill whatever it left behind in its session.

    Done before the leader is reaped: while its zombie holds the pid, the session id cannot be
    reused. A task that exits normally leaves nothing, so this costs one pass over /proc.
    """
    _wait_exit_blocking(pid)
    if [p for p in kill_session(pid) if p != pid]:
        log.warning("forklift: %s left processes behind; killed them.", job.title or job.key)


def _stop_detached(job: Job, kill_grace: float) -> None:
    """What the task detached from its session (a daemon, a double fork) was re-parented to this
    worker, a child subreaper: stop and reap it now that the task has ended."""
    stopped = stop_children(kill_grace)
    for pid, command in stopped:
        log.warning(
            "forklift: %s left pid %d running outside its session (%s); stopped it.", job.title or job.key, pid, command
        )


def _wait_exit_blocking(pid: int) -> None:
    while True:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            return
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        except ChildProcessError:
            return


def _wait_exit(pid: int, timeout: float) -> bool:
    """True once child ``pid`` has exited (without reaping it), False if ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            fd = pidfd_open(pid)
        except OSError:
            fd = None
        if fd is not None:
            try:
                while True:  # a pidfd turns readable when the process exits; look at least once
                    remaining = max(0.0, deadline - time.monotonic())
                    if select.select([fd], [], [], remaining)[0]:
                        return True
                    if remaining == 0:
                        return False
            finally:
                os.close(fd)
    # No pidfd (not Linux, or an old kernel): look without reaping, a few times a second.
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _waitpid_retrying(pid: int) -> tuple[int, int]:
    while True:
        try:
            return os.waitpid(pid, 0)
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us; kept for clarity
            continue
