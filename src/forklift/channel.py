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
from multiprocessing.managers import SyncManager
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


class _Manager(SyncManager):
    """``multiprocessing.Manager()``'s SyncManager, whose ``Queue()`` can also be drained at once."""


_Manager.register("Queue", _DrainableQueue)


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
