"""The scheduler's SIGTERM/SIGINT, from forklift's side.

``ExitSignalGuard`` (while the executor runs): the scheduler's own exit handler must get to run.
``SecondSignal`` (while ``end()`` waits): a second signal stops the waiting.

The scheduler calls ``end()`` after its first signal. An operator who signals again does not want
to wait for running tasks any longer, so while ``end()`` waits, forklift listens for that second
signal and stops waiting (the tasks are then stopped, not abandoned).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# A signal that lands inside a log write is held back this long, this many times, so that the
# handler can usually run as written; after that it leaves without its log line.
_REDELIVER_AFTER = 0.02
_MAX_REDELIVERIES = 5

# The scheduler's exit handler, on both Airflow lines: SchedulerJobRunner._exit_gracefully.
_EXIT_HANDLER_NAME = "_exit_gracefully"


def _logging_files() -> frozenset[str]:
    files = {logging.__file__}
    try:
        import structlog._output as structlog_output
    except ImportError:  # pragma: no cover - structlog comes with Airflow 3
        pass
    else:
        files.add(structlog_output.__file__)
    return frozenset(os.path.realpath(f) for f in files)


def _round_trip_files() -> frozenset[str]:
    import multiprocessing.connection
    import multiprocessing.managers

    return frozenset(os.path.realpath(m.__file__ or "") for m in (multiprocessing.connection, multiprocessing.managers))


def _inside(frame: FrameType | None, files: frozenset[str]) -> bool:
    while frame is not None:
        if os.path.realpath(frame.f_code.co_filename) in files:
            return True
        frame = frame.f_back
    return False


def inside_log_write(frame: FrameType | None, files: frozenset[str] | None = None) -> bool:
    """Whether the interrupted thread (``frame`` and its callers) is in the middle of writing a log record."""
    return _inside(frame, _logging_files() if files is None else files)


def inside_round_trip(frame: FrameType | None) -> bool:
    """Whether the interrupted thread is in the middle of a call to a ``multiprocessing`` Manager."""
    return _inside(frame, _ROUND_TRIP_FILES)


_ROUND_TRIP_FILES = _round_trip_files()


class ExitSignalGuard:
    """Keeps the scheduler's SIGTERM/SIGINT handler from deadlocking the scheduler.

    Airflow's scheduler logs from its signal handler ("Exiting gracefully upon receiving signal
    15") before it raises ``SystemExit``. Airflow 3 writes logs through structlog, whose write lock
    is a plain ``threading.Lock``: when the signal lands while the main thread is inside a log
    write, it already holds that lock, the handler waits for it forever and the scheduler never
    stops (nor calls ``end()``); only SIGKILL ends it.

    The guard wraps that handler (and only it). A signal that lands inside a log write is sent
    again a moment later, when the write is normally done, and the handler then runs as written.
    If the main thread is still writing after a few tries, the guard does what the handler does
    without its log line: ``sys.exit(0)``, which the scheduler's loop turns into ``end()``.

    A signal that lands inside a round trip to the result queue's Manager is held back the same
    way: raised there, ``SystemExit`` would drop the results that reply carries (the proxy then
    starts a new connection, see ``forklift.channel``). After a few tries the handler runs anyway.

    The handler's ``SystemExit`` can also be lost: raised while the main thread is running a
    finalizer (``__del__``, a weakref callback), Python prints "Exception ignored" and carries on,
    and the scheduler keeps scheduling. The guard remembers that an exit was asked for;
    :meth:`raise_lost_exit`, called from the executor's heartbeat, raises it again from there.
    """

    def __init__(self) -> None:
        self._previous: dict[int, Callable[[int, FrameType | None], Any]] = {}
        self._pid = os.getpid()
        self._files = _logging_files()
        self._redeliveries = 0
        self._exit_requested: int | None = None
        self._closed = False

    def install(self) -> None:
        """Wrap the scheduler's exit handler, if it is installed by now; calling it again is cheap.

        Airflow 3 installs it before the executor starts; Airflow 2 only after, so the executor
        calls this again from its heartbeat.
        """
        # Handlers can only be set from the main thread; only Python handlers can be wrapped.
        if self._closed or threading.current_thread() is not threading.main_thread():
            return
        for sig in _SIGNALS:
            current = signal.getsignal(sig)
            if current == self._handler:
                continue
            if callable(current) and getattr(current, "__name__", "") == _EXIT_HANDLER_NAME:
                self._previous[sig] = current
                signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        self._closed = True
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handler:
                signal.signal(sig, previous)
        self._previous.clear()

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum)
        if previous is None:  # pragma: no cover - uninstalled between delivery and this call
            return
        # A forked child that inherited the guard (a worker, the Manager) runs the handler as is.
        ours = os.getpid() == self._pid
        in_log_write = ours and inside_log_write(frame, self._files)
        if (in_log_write or (ours and inside_round_trip(frame))) and self._redeliveries < _MAX_REDELIVERIES:
            self._redeliveries += 1
            timer = threading.Timer(_REDELIVER_AFTER, os.kill, (self._pid, signum))
            timer.daemon = True
            timer.start()
            return
        if in_log_write:
            self._redeliveries = 0
            # No logging here: that is the deadlock. A raw write to stderr takes no lock.
            os.write(2, f"forklift: signal {signum} arrived during a log write; exiting without logging it\n".encode())
            raise SystemExit(os.EX_OK)
        self._redeliveries = 0
        if ours:
            self._exit_requested = signum
        previous(signum, frame)

    def raise_lost_exit(self) -> None:
        """Raise ``SystemExit(0)`` if the exit handler ran and the process is still going on."""
        if self._exit_requested is not None and os.getpid() == self._pid:
            signum, self._exit_requested = self._exit_requested, None
            os.write(2, f"forklift: the scheduler's exit on signal {signum} was lost; exiting now\n".encode())
            raise SystemExit(os.EX_OK)


class SecondSignal:
    """Context manager: while active, SIGTERM/SIGINT set a flag instead of their usual effect."""

    def __init__(self) -> None:
        self._seen = False
        self._previous: dict[int, Any] = {}

    def arrived(self) -> bool:
        return self._seen

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._seen = True

    def __enter__(self) -> SecondSignal:
        # Handlers can only be set from the main thread; elsewhere there is nothing to listen for.
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
