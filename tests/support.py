"""Helpers every test folder uses: process liveness, bounded waits, configuration lookups.

Importable as ``support`` from any test module (the tests/ folder is on sys.path through its conftest).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil


def lookup_from(values: dict[tuple[str, str], str]) -> Callable[[str, str], str | None]:
    """A ``lookup(section, key)`` over a dict, as forklift's settings read Airflow's configuration."""
    return lambda section, key: values.get((section, key))


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pid: int) -> bool:
    return not alive(pid)


def still_alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if alive(pid)]


def wait_gone(pids: list[int], timeout: float = 15) -> float:
    """Seconds until every pid has exited; fails the test past ``timeout``."""
    started = time.monotonic()
    while still_alive(pids):
        assert time.monotonic() - started < timeout, f"still alive after {timeout} s: {still_alive(pids)}"
        time.sleep(0.05)
    return time.monotonic() - started


def wait_for_path(path: Path, timeout: float = 30) -> str:
    """The file's text once it exists; fails the test past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.01)
    return path.read_text()


def wait_for_title(pid: int, text: str, timeout: float = 10) -> None:
    """Until the process's title (its command line, as ``setproctitle`` sets it) holds ``text``; fails the
    test past ``timeout``. A worker names itself "<idle>" only once it is back waiting for work."""
    deadline = time.monotonic() + timeout
    while text not in (title := " ".join(psutil.Process(pid).cmdline())):
        assert time.monotonic() < deadline, f"process {pid}'s title is {title!r}, not {text!r}, after {timeout} s"
        time.sleep(0.01)


def main_thread_wchan(pid: int) -> str:
    """Where in the kernel the process's main thread waits ("pipe_write": blocked on a full pipe)."""
    try:
        return Path(f"/proc/{pid}/task/{pid}/wchan").read_text()
    except OSError:
        return ""
