"""Waking Airflow's Task SDK supervisor the moment its task process exits.

The supervisor (Airflow 3) waits for its task process in ``selector.select(timeout)``, where the
timeout is ``[workers] min_heartbeat_interval`` (5 s by default). The task process closes its
sockets a moment *before* the kernel marks it exited. When the supervisor reads those EOFs, checks
``waitpid(WNOHANG)`` and finds the process not quite gone, it unregisters the last socket and selects
on an empty set: nothing wakes it until the timeout. On 2 cores a quarter to a third of tasks lose
those ~5 s, holding a slot the whole time.

The process that hosts the supervisor is forklift's, so forklift can wake it without touching
Airflow's code or the user's settings. The kernel sends SIGCHLD to the supervisor when the task
process exits. A Python handler alone does not help: Python retries an interrupted ``epoll_wait``
(PEP 475). So the handler makes the retry return at once: it adds an always-readable pipe, one-shot,
to every epoll instance of this process (the supervisor's selector is one). The selector returns
with no events it knows, the supervisor's loop checks the exit again, and this time sees it.
Selectors ignore file descriptors they did not register, so an unrelated wake costs one loop turn.

Linux only (``epoll``); elsewhere :func:`wake_on_child_exit` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import select
import signal
from types import FrameType

#: Set by forklift's worker in its task's environment: the pid to tell when the task process has ended.
WORKER_PID_ENV = "FORKLIFT_WORKER_PID"

_EPOLL_CTL_ADD = 1
_EPOLL_CTL_MOD = 3
_EVENTPOLL = "anon_inode:[eventpoll]"


class _EpollEvent(ctypes.Structure):
    # The kernel packs struct epoll_event on x86-64 only.
    _pack_ = 1 if platform.machine() in ("x86_64", "AMD64") else 0
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


_state: dict[str, object] = {}


def _libc() -> ctypes.CDLL | None:
    if "libc" not in _state:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.epoll_ctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_EpollEvent)]
            _state["libc"] = libc
        except (OSError, AttributeError):
            _state["libc"] = None
    return _state["libc"]  # type: ignore[return-value]


def _wake_fd() -> int:
    """A pipe's read end that is always readable (one byte, never read)."""
    fd = _state.get("wake_fd")
    if fd is None:
        r, w = os.pipe()
        os.write(w, b"!")
        os.close(w)
        _state["wake_fd"] = fd = r
    return fd  # type: ignore[return-value]


def _epoll_fds() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == _EVENTPOLL:
                fds.append(int(name))
        except OSError:
            continue  # closed meanwhile (e.g. the listing's own fd)
    return fds


def wake_epolls() -> int:
    """Make every epoll wait in this process return now. Returns how many were woken."""
    libc = _libc()
    if libc is None:
        return 0
    fd = _wake_fd()
    event = _EpollEvent(select.EPOLLIN | select.EPOLLONESHOT, fd)
    woken = 0
    for epfd in _epoll_fds():
        if libc.epoll_ctl(epfd, _EPOLL_CTL_ADD, fd, ctypes.byref(event)) == 0:
            woken += 1
        elif ctypes.get_errno() == errno.EEXIST and libc.epoll_ctl(epfd, _EPOLL_CTL_MOD, fd, ctypes.byref(event)) == 0:
            woken += 1  # registered by an earlier wake and disarmed by its one-shot: re-arm it
    return woken


def _on_sigchld(signum: int, frame: FrameType | None) -> None:
    # Runs between two bytecodes of whatever the supervisor is doing: it must never raise.
    if os.getpid() != _state.get("pid"):
        return
    try:
        wake_epolls()
    except Exception:  # noqa: BLE001, S110 - a missed wake costs only the supervisor's own timeout
        pass
    _tell_worker_the_task_ended()


def _tell_worker_the_task_ended() -> None:
    """Once the task process has exited, tell the worker (SIGUSR1), once.

    What the task detached from its session (a daemon, a double fork) was re-parented to the worker,
    and may still hold the task's stdout: the supervisor then waits up to ``[workers]
    socket_cleanup_timeout`` (60 s) for those pipes to close before it exits. The worker stops such
    leftovers on this word, the pipes close, and the supervisor ends with its task.
    """
    worker = _state.get("worker")
    if not worker or _state.get("told") or os.getppid() != worker:
        return
    try:
        exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # look, never reap
    except ChildProcessError:
        return
    if exited is None:
        return  # a child stopped or continued; none has exited
    _state["told"] = True
    try:
        os.kill(int(worker), signal.SIGUSR1)
    except OSError:
        pass


def _reset_in_child() -> None:
    # The task process the supervisor forks is the user's: it keeps the default SIGCHLD behaviour.
    if _state.get("pid") is not None and os.getpid() != _state["pid"]:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _state.pop("wake_fd", None)


def wake_on_child_exit() -> bool:
    """In this process, wake every epoll wait whenever a child process exits. Idempotent.

    Call it in the process that will run the Task SDK supervisor, before the supervisor starts.
    Returns False where it cannot work (not Linux, no libc).
    """
    if not os.path.isdir("/proc/self/fd") or _libc() is None:
        return False
    if _state.get("pid") == os.getpid():
        return True
    if "at_fork" not in _state:
        os.register_at_fork(after_in_child=_reset_in_child)
        _state["at_fork"] = True
    _state["pid"] = os.getpid()
    # The worker that started this process names itself (runners set it); anyone else is never signalled.
    worker = os.environ.get(WORKER_PID_ENV, "")
    _state["worker"] = int(worker) if worker.isdigit() and int(worker) == os.getppid() else None
    _state.pop("told", None)
    _state.pop("wake_fd", None)
    signal.signal(signal.SIGCHLD, _on_sigchld)
    return True
