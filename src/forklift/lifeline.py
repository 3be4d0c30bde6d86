"""Process-lifetime ties and process stopping: die with the parent; stop a task's process group now and
kill it later; stop everything a task started, wherever it went (its session, and, through the worker
being a child subreaper, whatever detached from it)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel (Linux) to send ``sig`` when our parent dies, however it dies; True if it could.

    Exits at once if the parent is already gone (it may have died before the request was made).
    """
    expected_parent = os.getppid()
    ok = _prctl(_PR_SET_PDEATHSIG, int(sig))
    if expected_parent == 1 or os.getppid() != expected_parent:
        os._exit(1)
    return ok


def become_subreaper() -> bool:
    """Adopt every orphaned descendant (Linux ``PR_SET_CHILD_SUBREAPER``); True if the kernel agreed.

    A task that detaches (``setsid()``, a double fork, a daemon) escapes its session, but not its
    worker: whatever it leaves behind is re-parented to the worker instead of to init, so the worker
    can stop it when the task ends (:func:`stop_children`).
    """
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def stop_children(kill_grace: float, spare: int | None = None) -> list[tuple[int, str]]:
    """Stop every child of this process but ``spare`` (SIGTERM, then SIGKILL after ``kill_grace``) and
    reap them all, zombies included. A worker's children are its task's leader (spared while it lives)
    and what the task left behind. Returns ``(pid, command)`` of each live one stopped."""
    import psutil

    try:  # one syscall says whether there is any child at all (there rarely is, once a task has ended)
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return []
    me = os.getpid()
    children = []
    for pid, (ppid, _) in process_table().items():
        if ppid == me and pid != spare:
            try:
                children.append(psutil.Process(pid))
            except psutil.Error:
                continue
    stopped = []
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                stopped.append((child.pid, " ".join(child.cmdline()) or child.name()))
            child.terminate()
        except psutil.Error:
            continue
    # wait_procs reaps them (they are our children), so no zombie stays either.
    _, alive = psutil.wait_procs(children, timeout=kill_grace)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=kill_grace)
    return stopped


def process_table() -> dict[int, tuple[int, int]]:
    """``pid -> (ppid, rss pages)`` for every process, from one pass over ``/proc/*/stat`` (~1.3 ms for
    80 processes; a third of what building psutil's process tree costs)."""
    table: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            # After "pid (comm) ": state, ppid, ... rss is the 24th field (the comm may hold spaces).
            fields = data[data.rindex(b")") + 2 :].split()
            table[int(name)] = (int(fields[1]), int(fields[21]))
        except (OSError, ValueError, IndexError):
            continue
    return table


def kill_session(sid: int, spare: int | None = None) -> list[int]:
    """SIGKILL every process in session ``sid`` (a task's session: its leader's pid); return their pids.

    Each task leads a session of its own, and everything it starts stays in it unless it detaches on
    purpose, including children that moved to process groups of their own (Airflow's Task SDK puts
    the task runner in one). The kernel does not reuse a pid while it names a live session, so this
    reaches only the task's processes. One pass over /proc.
    """
    import psutil  # here, not at the top: a fresh task interpreter imports this module and needs no psutil

    me = os.getpid()
    killed = []
    for pid in psutil.pids():
        if pid in (me, spare):
            continue
        try:
            if os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return killed


def stop_session(
    sid: int, kill_grace: float, still_running: Callable[[], bool], impatient: Callable[[], bool] = lambda: False
) -> signal.Signals:
    """Stop a task's session so that its supervisor can still record how it ended.

    SIGTERM to the leader's group first (the task's own handlers run; Airflow 3's supervisor forwards
    it to its task). Still running after ``kill_grace``: SIGKILL everything in the session *but* the
    leader. Airflow 3's task runner only calls ``on_kill()`` on SIGTERM and runs on, and the supervisor
    is what reports a task's end to the API server, so killing it with its task would leave the task
    instance "running" with nobody left to say otherwise. The leader then gets ``kill_grace`` to report
    and exit before it is killed too. ``impatient()`` ends the first grace early (a task still growing past
    its memory limit gets none). Returns the last signal it took.
    """

    def wait(seconds: float, give_up: Callable[[], bool] = lambda: False) -> bool:
        deadline = time.monotonic() + seconds
        while still_running() and time.monotonic() < deadline and not give_up():
            time.sleep(0.05)
        return still_running()

    signal_group(sid, signal.SIGTERM)
    if not wait(kill_grace, impatient):
        return signal.SIGTERM
    kill_session(sid, spare=sid)
    if wait(kill_grace):
        kill_session(sid)
    return signal.SIGKILL


def signal_group(pgid: int, sig: int) -> None:
    """Signal a process group that may already be gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def signal_process(proc: psutil.Process, sig: int) -> None:
    """Signal a process that may already be gone."""
    import psutil

    try:
        proc.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


class GroupStopper:
    """Stops task process groups from the executor's thread without blocking it: SIGTERM now, and
    SIGKILL from :meth:`escalate` (called on every poll) once ``kill_grace`` has passed."""

    def __init__(self, kill_grace: float) -> None:
        self.kill_grace = kill_grace
        self._kill_at: dict[int, float] = {}  # process group → when SIGKILL follows the SIGTERM

    def stop(self, pgid: int) -> None:
        signal_group(pgid, signal.SIGTERM)
        self._kill_at[pgid] = time.monotonic() + self.kill_grace

    def escalate(self) -> None:
        now = time.monotonic()
        for pgid, when in list(self._kill_at.items()):
            if now >= when:
                signal_group(pgid, signal.SIGKILL)
                del self._kill_at[pgid]

    def take_pending(self) -> list[int]:
        """The groups still waiting for their SIGKILL (for terminate(), which kills them itself)."""
        pending, self._kill_at = list(self._kill_at), {}
        return pending
