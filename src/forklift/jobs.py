"""What flows through the engine: jobs in, results out.

A :class:`Job` is everything a worker needs to run one unit of work, and nothing Airflow-specific:
the Airflow adapter turns a workload or command into a Job, the engine runs it and answers with
:class:`Result` tuples on the result queue. Both cross process boundaries by pickling.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

# Result states. Kept as plain strings so results pickle cheaply and the engine needs no Airflow.
RUNNING = "running"
SUCCESS = "success"
FAILED = "failed"
#: Not about a job: a QueuedLocalWorker says it is leaving to be replaced (``info`` says why).
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


Runnable = Union[ForkCall, Command]


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


class Result(NamedTuple):
    """What a worker reports on the result queue.

    ``state`` is RUNNING (``info`` is the pid of the task's process, which leads its own process
    group), then SUCCESS or FAILED (``info`` is the reason, for the log).
    """

    key: Hashable
    state: str
    info: Any = None
    worker_pid: int = 0
    #: Which dispatch of ``key`` this is about, so a stale report (from a copy revoked and then
    #: dispatched again under the same key) is never taken for the new one.
    seq: int = 0


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

