"""The supervisor wake: a process waiting in epoll on nothing is woken when its child exits.

The child below closes its end of the pipe and only then exits, as a Task SDK task process does.
The parent sees the EOF first, finds the child still alive, and then waits on an empty selector:
without the wake that wait lasts its whole timeout.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 30.0  # the supervisor's select timeout stand-in; far above what the wake should need
CONTROL_TIMEOUT = 3.0

SCENARIO = textwrap.dedent(
    """
    import os, selectors, signal, sys, time
    TIMEOUT = float(sys.argv[2])
    from forklift.supervisor_wake import wake_on_child_exit
    if sys.argv[1] == "wake":
        assert wake_on_child_exit()
    sel = selectors.DefaultSelector()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        # The task process: SIGCHLD is back to the default here, not forklift's handler.
        print("child-sigchld", signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL, flush=True)
        os.close(r); os.close(w)
        time.sleep(0.5)
        os._exit(0)
    os.close(w)
    sel.register(r, selectors.EVENT_READ)
    t0 = time.monotonic()
    selects = 0
    while True:
        selects += 1
        for key, _ in sel.select(timeout=TIMEOUT):
            if not os.read(r, 10):
                sel.unregister(r)
                os.close(r)
        if os.waitpid(pid, os.WNOHANG)[0]:
            break
        if time.monotonic() - t0 > TIMEOUT:
            break
    print("elapsed", round(time.monotonic() - t0, 3), "selects", selects, flush=True)
    """
)


def run(mode: str, select_timeout: float) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO, mode, str(select_timeout)],
        capture_output=True,
        text=True,
        timeout=select_timeout + 30,
        check=True,
    ).stdout
    fields: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.split()
        for name, value in zip(parts[::2], parts[1::2], strict=False):
            fields[name] = value
    return fields


def test_exit_wakes_an_empty_epoll_wait() -> None:
    fields = run("wake", TIMEOUT)
    assert float(fields["elapsed"]) < TIMEOUT / 3, fields
    assert fields["child-sigchld"] == "True", "the task process inherited forklift's SIGCHLD handler"


def test_without_the_wake_the_wait_runs_to_its_timeout() -> None:
    # The control: proves the scenario reproduces the stall the wake exists for.
    fields = run("plain", CONTROL_TIMEOUT)
    assert float(fields["elapsed"]) >= CONTROL_TIMEOUT - 0.1, fields


def test_wake_is_harmless_without_epoll_and_idempotent() -> None:
    from forklift import supervisor_wake

    code = textwrap.dedent(
        """
        import signal
        from forklift import supervisor_wake as w
        assert w.wake_on_child_exit() and w.wake_on_child_exit()
        assert w.wake_epolls() == 0  # no epoll in this process: nothing to wake, no error
        signal.raise_signal(signal.SIGCHLD)  # a stray SIGCHLD does nothing
        print("ok")
        """
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ok\n"
    assert supervisor_wake._EpollEvent.events.size == 4
