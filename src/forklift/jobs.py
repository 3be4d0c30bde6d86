"""What flows through the engine: jobs in, results out.

A :class:`Job` is everything a worker needs to run one unit of work, and nothing Airflow-specific:
the Airflow adapter turns a workload or command into a Job, the engine runs it and answers with
:class:`Started` and :class:`Finished` tuples on the result queue. Both cross process boundaries by pickling.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

# Result states. Kept as plain strings so results pickle cheaply and the engine needs no Airflow.
RUNNING = "running"
SUCCESS = "success"
FAILED = "failed"
#: Not about a job: a QueuedLocalWorker is leaving to be replaced (see Recycled).
RECYCLED = "recycled"


@dataclass(frozen=True)
class ForkCall:
    """Run ``func(*args)`` in a forked child of the worker; its return value is the exit code.

    ``func`` must be importable by name (it is pickled by reference).
    """

    func: Callable[..., int]
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Command:
    """Run ``argv`` in a fresh process.

    ``secret_input`` is written to the process's stdin and never appears on its command line, in
    its environment or in a log: that is how a task's token reaches it.
    """

    argv: Sequence[str]
    secret_input: bytes | None = field(default=None, repr=False)


Runnable = ForkCall | Command


@dataclass(frozen=True)
class Job:
    """One unit of work for a worker."""

    key: Hashable
    runnable: Runnable
    #: Shown in process titles and logs, so it must never hold a secret.
    title: str = ""
    #: Higher runs first when more jobs wait than workers are free.
    priority: int = 0
    #: Extra environment for the task process (e.g. Airflow's DAG-parsing context).
    env: Mapping[str, str] = field(default_factory=dict)
    #: Hard limit in seconds from the task's start; past it the worker stops the task's process
    #: group (SIGTERM, then SIGKILL after the worker's ``kill_grace``) and reports FAILED "timed out".
    timeout: float | None = None
    #: Memory limit in MiB for the task's whole process tree (PSS; see forklift.containment); over it,
    #: the worker stops the task the same way and reports FAILED "exceeded its memory limit". 0: none.
    memory_limit_mib: int = 0


class Cause(str, enum.Enum):
    """Why a job failed, as code reads it (metrics, tests, the executor); the reason string beside it
    is what people read. A str, so it pickles and prints as its value."""

    EXIT_CODE = "exit_code"  # the task's process exited with a non-zero code
    KILLED_BY_SIGNAL = "killed_by_signal"  # a signal forklift did not send ended it (kill -9, a segfault)
    OOM_KILLED = "oom_killed"  # the kernel's OOM killer took it (its memory cgroup counted the kill)
    TIMED_OUT = "timed_out"  # still running past its hard deadline: stopped from outside
    MEMORY_LIMIT = "memory_limit"  # its process tree went over its memory limit: stopped
    NOT_STARTED = "not_started"  # its process could not be started, or the job not handed to a worker
    WORKER_DIED = "worker_died"  # the worker running it died (or was killed) first
    LOST_WITH_MANAGER = "lost_with_manager"  # its worker could not report once the result queue was gone
    LOST_BEFORE_START = "lost_before_start"  # handed to a worker that vanished before starting it
    REFUSED = "refused"  # refused at dispatch: not a command forklift runs, or a malformed workload
    WITHDRAWN = "withdrawn"  # forklift was shutting down before it started
    STOPPED_AT_SHUTDOWN = "stopped_at_shutdown"  # still running when forklift stopped everything
    ORPHANED = "orphaned"  # its scheduler was gone and no other adopted it within orphan_timeout

    def __str__(self) -> str:
        return self.value


class Started(NamedTuple):
    """A worker's word that a job's process exists; the process leads its own process group."""

    key: Hashable
    task_pid: int
    worker_pid: int = 0
    #: Which dispatch of ``key`` this is about, so a stale report (from a copy revoked and then
    #: dispatched again under the same key) is never taken for the new one.
    seq: int = 0

    @property
    def state(self) -> str:
        return RUNNING


class Finished(NamedTuple):
    """How a job ended: SUCCESS, or FAILED with its ``cause`` and a ``reason`` for people."""

    key: Hashable
    state: str
    reason: str = ""
    worker_pid: int = 0
    seq: int = 0
    cause: Cause | None = None  # None for SUCCESS

    @classmethod
    def failed(cls, key: Hashable, cause: Cause, reason: str, worker_pid: int = 0, seq: int = 0) -> Finished:
        return cls(key, FAILED, reason, worker_pid, seq, cause)


class Recycled(NamedTuple):
    """Not about a job: a QueuedLocalWorker says it is leaving, and why; ``replace`` is False when it
    leaves a pool that is shrinking (``[forklift] idle_timeout``) rather than to be replaced."""

    worker_pid: int
    reason: str
    replace: bool = True

    @property
    def state(self) -> str:
        return RECYCLED


#: Put on the task queue instead of a job: the idle worker that takes it leaves (the pool shrinks).
#: ``None`` is the other sentinel: the poison pill every worker gets at the end.
RETIRE = "retire"

#: What :meth:`poll` hands the executor.
Result = Started | Finished
#: What crosses the result queue.
Message = Started | Finished | Recycled


def exit_cause(status: int) -> Cause | None:
    """The cause for a ``Popen.returncode``-style status (None: it succeeded)."""
    if status == 0:
        return None
    return Cause.EXIT_CODE if status > 0 else Cause.KILLED_BY_SIGNAL


def describe_exit(status: int) -> str:
    """Turn a ``Popen.returncode``-style status (negative = signal) into a reason for humans."""
    if status >= 0:
        return f"exited with code {status}"
    signum = -status
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if signum == signal.SIGKILL:
        return f"killed by {name} — possibly out of memory"
    return f"killed by {name}"


class WorkQueue(Protocol):
    """A queue shared between the engine and its workers (a proxy to the Manager's queue): the task
    queue carries ``(seq, Job)`` items and ``None`` (the poison pill); the result queue carries
    :data:`Message` tuples. ``drain`` and ``remove`` are forklift's additions (one round trip each)."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None: ...

    def get(self, block: bool = True, timeout: float | None = None) -> Any: ...

    def qsize(self) -> int: ...

    def drain(self, limit: int) -> list[Any]: ...

    def remove(self, seq: int) -> bool: ...
