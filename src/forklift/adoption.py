"""Adoption: tasks another engine (a scheduler that stopped or died) left running on this machine,
taken over from their records (:mod:`forklift.handover`) and watched through their worker's pidfd.

An adopted task holds a slot in the engine that adopted it until its end is read here; the worker
that runs it belongs to the earlier engine and writes the outcome to the task's record.
"""

from __future__ import annotations

import collections
import logging
import os
import select
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

from forklift.handover import ProcessId, RecordsDir, TaskRecord, boot_id
from forklift.jobs import Cause, Finished, Result
from forklift.lifeline import GroupStopper, kill_session

log = logging.getLogger(__name__)


@dataclass
class _Adopted:
    record: TaskRecord
    pidfd: int | None  # readable once the worker has exited; None: look with psutil instead

    def release(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class Adoptions:
    """The tasks one engine has adopted, by key."""

    def __init__(self, records: RecordsDir | None, stopper: GroupStopper, counters: collections.Counter[str]) -> None:
        self.records = records
        self._stopper = stopper
        self._counters = counters
        self._adopted: dict[Hashable, _Adopted] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._adopted

    def __len__(self) -> int:
        return len(self._adopted)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._adopted)

    def adopt(self, key: Hashable) -> bool:
        """Take over ``key`` if another engine left it running on this machine (or left its outcome).

        False: there is nothing here to adopt (no records, no record, another boot, or its worker died
        without an outcome, in which case whatever is left of the task is stopped).
        """
        if self.records is None:
            return False
        record = self.records.read(key)
        if record is None or record.boot != boot_id():
            return False
        pidfd = None
        if not record.finished:
            pidfd = _open_pidfd(record.worker)
            if pidfd is None and not record.worker.alive():
                # Its worker is gone without an outcome: nobody can vouch for the task any more.
                if record.task is not None and record.task.alive():
                    kill_session(record.task.pid)
                log.warning("forklift: not adopting %s: its worker %d is gone.", record.title or key, record.worker.pid)
                self.records.remove(key)
                return False
        self.records.claim(key, ProcessId.me())
        self._adopted[key] = _Adopted(record, pidfd)
        self._counters["adoptions"] += 1
        log.info(
            "forklift: adopted %s (%s; worker pid %d)",
            record.title or key,
            "still running" if not record.finished else f"already {record.state}",
            record.worker.pid,
        )
        return True

    def poll(self) -> list[Result]:
        """Adopted tasks whose worker has exited: their outcome, as the worker recorded it."""
        if not self._adopted:
            return []
        fds = [a.pidfd for a in self._adopted.values() if a.pidfd is not None]
        ready = set(select.select(fds, [], [], 0)[0]) if fds else set()
        out: list[Result] = []
        for key, adopted in list(self._adopted.items()):
            if adopted.pidfd is not None:
                if adopted.pidfd not in ready:
                    continue
            elif not adopted.record.finished and adopted.record.worker.alive():
                continue
            out.append(self._outcome(key, adopted))
            del self._adopted[key]
        return out

    def _outcome(self, key: Hashable, adopted: _Adopted) -> Result:
        assert self.records is not None
        adopted.release()
        record = self.records.read(key) or adopted.record
        self.records.remove(key)
        worker = record.worker.pid
        if record.finished:
            return Finished(key, record.state, record.reason, worker, 0, record.cause)
        if record.task is not None and record.task.alive():
            kill_session(record.task.pid)  # unsupervised now: stop what is left of it
        reason = f"forklift worker pid {worker} (of an earlier scheduler) died while running it"
        log.error("forklift: %s: %s", record.title or key, reason)
        return Finished.failed(key, Cause.WORKER_DIED, reason, worker)

    def revoke(self, key: Hashable) -> bool:
        """Stop an adopted task at the scheduler's request (TERM now, KILL later); False if not adopted."""
        adopted = self._adopted.pop(key, None)
        if adopted is None:
            return False
        task = adopted.record.task
        if task is not None and task.alive():
            self._stopper.stop(task.pid)
        adopted.release()
        return True

    def take_all(self) -> list[tuple[Hashable, TaskRecord]]:
        """Forget every adopted task and return its record (terminate() stops what still runs)."""
        taken = [(key, adopted.record) for key, adopted in self._adopted.items()]
        self.release()
        return taken

    def release(self) -> None:
        """Forget every adopted task, leaving it to run (its worker writes its outcome for the next engine)."""
        for adopted in self._adopted.values():
            adopted.release()
        self._adopted.clear()


def _open_pidfd(proc: ProcessId) -> int | None:
    """A pidfd for ``proc`` (readable once it exits), or None if it is gone or the kernel has none.

    The start time is checked after opening: the fd then names that very process, never a later one
    that reused its pid.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd = int(pidfd_open(proc.pid))
    except OSError:
        return None
    if not proc.alive():
        os.close(fd)
        return None
    return fd
