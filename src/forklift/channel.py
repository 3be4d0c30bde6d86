"""The result channel: a ``multiprocessing.Manager()`` server and the queues it serves.

Workers put :data:`~forklift.jobs.Message` tuples on its result queue; LimitedParallelism's task queue
lives on the same server. If the server dies, every queue goes with it: the engine opens a new
channel (:meth:`ResultChannel.open`) and retires the old one. One channel per engine, used only from
the executor's thread.
"""

from __future__ import annotations

import logging
import queue
import signal
from multiprocessing.managers import BaseProxy, SyncManager
from typing import Any, cast

from forklift.jobs import Message, WorkQueue
from forklift.lifeline import die_with_parent
from forklift.proctitle import set_title
from forklift.workers import _FORK

log = logging.getLogger(__name__)

#: Errors that mean "the Manager process (and so the queue) is gone".
CHANNEL_ERRORS = (EOFError, OSError, ConnectionError)
#: At most this many items are read in one round trip (bounds one message's size).
DRAIN_BATCH = 10_000


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


class _InStepConnection:
    """A proxy's connection to the Manager that knows whether its last round trip was completed."""

    __slots__ = ("_conn", "in_step")

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.in_step = True

    def send(self, obj: Any) -> None:
        self.in_step = False
        self._conn.send(obj)

    def recv(self) -> Any:
        obj = self._conn.recv()
        self.in_step = True
        return obj

    def close(self) -> None:
        self._conn.close()


class _QueueProxy(BaseProxy):
    """The proxy to a :class:`_DrainableQueue`, kept in step with the Manager across interruptions.

    A proxy call is a request and a reply on one connection (shared by every proxy to the same
    Manager in the thread). An exception raised between the two, usually a signal handler's, such as
    the scheduler's ``SystemExit`` on SIGTERM, leaves the reply unread, and the stock proxy reads it
    as the *next* call's reply: ``end()`` got ``queue.Empty`` back from a ``put()`` and never stopped
    the workers. A connection left out of step is dropped and the next call opens a new one; the
    reply it held is lost (a drain's results then come back as the workers' records or as failures).
    """

    _exposed_ = ("put", "put_nowait", "get", "get_nowait", "qsize", "empty", "full", "drain", "remove")

    def _connect(self) -> None:
        super()._connect()  # type: ignore[misc]
        tls = self._tls  # type: ignore[attr-defined]
        tls.connection = _InStepConnection(tls.connection)

    def _callmethod(self, methodname: str, args: tuple[Any, ...] = (), kwds: dict[Any, Any] | None = None) -> Any:
        tls = self._tls  # type: ignore[attr-defined]
        conn = getattr(tls, "connection", None)
        if isinstance(conn, _InStepConnection) and not conn.in_step:
            del tls.connection
            try:
                conn.close()
            except OSError:  # pragma: no cover - nothing to close on a broken connection
                pass
            log.debug("forklift: a Manager round trip was interrupted; its connection is replaced.")
        return super()._callmethod(methodname, args, kwds or {})

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self._callmethod("put", (item, block, timeout))

    def put_nowait(self, item: Any) -> None:
        self._callmethod("put_nowait", (item,))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self._callmethod("get", (block, timeout))

    def get_nowait(self) -> Any:
        return self._callmethod("get_nowait")

    def qsize(self) -> int:
        return cast(int, self._callmethod("qsize"))

    def empty(self) -> bool:
        return cast(bool, self._callmethod("empty"))

    def full(self) -> bool:
        return cast(bool, self._callmethod("full"))

    def drain(self, limit: int) -> list[Any]:
        return cast("list[Any]", self._callmethod("drain", (limit,)))

    def remove(self, seq: int) -> bool:
        return cast(bool, self._callmethod("remove", (seq,)))


class _Manager(SyncManager):
    """``multiprocessing.Manager()``'s SyncManager, whose ``Queue()`` can also be drained at once."""


_Manager.register("Queue", _DrainableQueue, _QueueProxy)


def _manager_init() -> None:
    # The manager serves the result queue until end(); a terminal's Ctrl-C must not kill it early,
    # but it must not outlive the scheduler either.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(signal.SIGKILL)
    set_title("airflow executor -- forklift: result queue manager")


class ResultChannel:
    """One Manager server and its result queue (and any further queue the engine asks for)."""

    def __init__(self) -> None:
        self.manager = _Manager(ctx=_FORK)
        self.manager.start(initializer=_manager_init)
        self.results = self.new_queue()

    def new_queue(self) -> WorkQueue:
        return cast(WorkQueue, self.manager.Queue())

    @property
    def pid(self) -> int | None:
        process = getattr(self.manager, "_process", None)
        return process.pid if process is not None else None

    @property
    def address(self) -> Any:
        return self.manager.address

    def drain(self, block_for: float = 0.0) -> list[Message]:
        """Every message waiting, in as few round trips as possible; with ``block_for``, first wait up
        to that long for one. Raises one of CHANNEL_ERRORS if the server is gone."""
        messages: list[Message] = []
        if block_for > 0:
            try:
                messages.append(self.results.get(timeout=block_for))
            except queue.Empty:
                return messages
        while True:
            batch = self.results.drain(DRAIN_BATCH)
            messages.extend(batch)
            if len(batch) < DRAIN_BATCH:
                return messages

    def close(self) -> None:
        """Stop the server (a dead one needs nothing stopped)."""
        try:
            self.manager.shutdown()
        except Exception as exc:  # noqa: BLE001 - already dead: nothing to stop
            log.debug("forklift: manager shutdown: %s", exc)
