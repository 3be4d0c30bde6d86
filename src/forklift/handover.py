"""What a running task leaves on disk so that the next scheduler can take it over.

A task does not need its scheduler: on Airflow 3 its supervisor talks to the API server, on
Airflow 2 its ``LocalTaskJob`` talks to the DB. So when a scheduler stops or dies, forklift's
workers let their tasks run on, and the next scheduler on this machine *adopts* them instead of
having Airflow reset and rerun them. This module is the handover between the two::

    worker (of scheduler A)                 records dir (0700)              scheduler B
    ───────────────────────                 ──────────────────              ───────────
    task started  ── write ──► <name>.json  {key, boot, worker, task,       try_adopt_task_instances
                                             state: running}          ◄──── read: same boot, worker
    A gone: no new work;                                                     alive (pid + start time)?
    watch <name>.owner    ◄──── claim ────  <name>.owner {pid, start}  ◄──── yes: claim it, hold a slot
    nobody claims it within                                                   poll(): worker gone?
    orphan_timeout: stop the task                                             ──► read the outcome,
    task ended ── write ──► <name>.json     {state: success|failed,           report it, remove both
                                             reason}                          files
    worker exits

A record is keyed by the job's key (``repr``, hashed into the file name), names processes by
pid *and* start time (a bare pid may have been reused), carries the boot id (a record from before a
reboot, or from another machine sharing the directory, never matches), and holds no secret: no
token, no workload, no command line. Files are 0600, the directory 0700.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import stat
import time
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from forklift.jobs import RUNNING, Cause


@functools.lru_cache(maxsize=1)
def boot_id() -> str:
    """This boot of this machine (Linux); a pid and start time only mean something within one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"boot-{psutil.boot_time():.0f}"


@dataclass(frozen=True)
class ProcessId:
    """A process, named so that a later process reusing its pid is never taken for it."""

    pid: int
    start: float

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except psutil.Error:
            return None

    @classmethod
    def me(cls) -> ProcessId:
        me = cls.of(os.getpid())
        assert me is not None
        return me

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.start) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


@dataclass(frozen=True)
class TaskRecord:
    """One task as its worker last described it."""

    key: str  # repr of the job's key
    title: str
    boot: str
    worker: ProcessId
    task: ProcessId | None
    state: str  # RUNNING, or the engine's SUCCESS / FAILED
    reason: str = ""
    updated: float = 0.0
    cause: Cause | None = None  # why it failed, once it has

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TaskRecord:
        raw = json.loads(text)
        task = raw.get("task")
        return cls(
            key=str(raw["key"]),
            title=str(raw.get("title", "")),
            boot=str(raw["boot"]),
            worker=ProcessId(int(raw["worker"]["pid"]), float(raw["worker"]["start"])),
            task=ProcessId(int(task["pid"]), float(task["start"])) if task else None,
            state=str(raw["state"]),
            reason=str(raw.get("reason", "")),
            updated=float(raw.get("updated", 0.0)),
            cause=Cause(raw["cause"]) if raw.get("cause") else None,
        )


class RecordsDirError(OSError):
    """The records directory cannot be made private to this user, or written."""


class RecordsDir:
    """The directory of task records shared by every forklift scheduler of one deployment on a machine."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._root = os.fspath(self.path)  # remove() runs once per task on the scheduler's thread

    def ensure(self) -> RecordsDir:
        """Create the directory (0700) if needed; refuse one that other users can read or write."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.path.stat()
        except OSError as exc:
            raise RecordsDirError(f"cannot create forklift's task records directory {str(self.path)!r}: {exc}") from exc
        if info.st_uid != os.getuid():
            raise RecordsDirError(
                f"forklift's task records directory {str(self.path)!r} belongs to uid {info.st_uid}, not to this "
                f"user (uid {os.getuid()}); point [forklift] records_dir at a directory of this user's."
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(self.path, 0o700)  # ours: make it private rather than refuse
        return self

    @staticmethod
    def name(key: Hashable) -> str:
        return hashlib.sha256(repr(key).encode()).hexdigest()[:40]

    def _file(self, key: Hashable, suffix: str) -> Path:
        return self.path / f"{self.name(key)}{suffix}"

    # -- the worker's side -----------------------------------------------------------------
    def write(self, key: Hashable, record: TaskRecord) -> None:
        _write_private(self._file(key, ".json"), record.to_json())

    # -- the adopter's side ----------------------------------------------------------------
    def read(self, key: Hashable) -> TaskRecord | None:
        try:
            record = TaskRecord.from_json(self._file(key, ".json").read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return record if record.key == repr(key) else None

    def claim(self, key: Hashable, owner: ProcessId) -> None:
        _write_private(self._file(key, ".owner"), json.dumps(asdict(owner)))

    def owner(self, key: Hashable) -> ProcessId | None:
        try:
            raw = json.loads(self._file(key, ".owner").read_text())
            return ProcessId(int(raw["pid"]), float(raw["start"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remove(self, key: Hashable, *, claimed: bool = True) -> None:
        """Remove the task's record, and its claim unless ``claimed`` is False (a task this engine
        dispatched itself has none). Called once per task from the scheduler's loop: plain ``os``
        calls, no ``Path`` objects (half the cost)."""
        base = f"{self._root}/{self.name(key)}"
        for suffix in (".json", ".owner") if claimed else (".json",):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(base + suffix)

    def sweep(self, older_than: float) -> int:
        """Remove records nobody can use any more: from another boot, or finished with their worker
        gone for longer than ``older_than`` seconds (the task's own DB state already says how it
        ended, unless a scheduler adopts it first). Returns how many were removed."""
        removed = 0
        me = boot_id()
        now = time.time()
        for path in self.path.glob("*.json"):
            try:
                record = TaskRecord.from_json(path.read_text())
            except (OSError, ValueError, KeyError, TypeError):
                continue
            stale = (
                record.boot != me
                or (record.finished and now - record.updated > older_than and not record.worker.alive())
                or (not record.finished and not record.worker.alive() and now - record.updated > older_than)
            )
            if stale:
                for suffix in (".json", ".owner"):
                    with contextlib.suppress(FileNotFoundError):
                        path.with_suffix(suffix).unlink()
                removed += 1
        return removed


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (readers never see half a record), mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
