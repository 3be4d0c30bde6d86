"""The exit-signal guard: a SIGTERM that lands inside a log write still stops the process.

The scenario is Airflow 3's scheduler in miniature: a main loop that logs through structlog (whose
write lock is not reentrant) and a SIGTERM handler that logs "Exiting gracefully" and raises
SystemExit. Without the guard the handler waits forever for the lock its own thread holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from support import main_thread_wchan

structlog = pytest.importorskip("structlog")  # Airflow 3's logging; it comes with the test environment

pytestmark = pytest.mark.timeout(180)

TRIALS = 10
EXIT_WAIT = 30.0  # far above the 20 ms the guard holds a signal back
CONTROL_WAIT = 5.0

SCENARIO = textwrap.dedent(
    """
    import os, signal, sys
    import structlog
    from forklift.shutdown import ExitSignalGuard

    logger = structlog.WriteLogger(open(sys.argv[2], "w"))

    def _exit_gracefully(signum, frame):  # what Airflow's SchedulerJobRunner._exit_gracefully does
        logger.msg(f"Exiting gracefully upon receiving signal {signum}")
        sys.exit(0)

    signal.signal(signal.SIGTERM, _exit_gracefully)
    if sys.argv[1] == "guard":
        ExitSignalGuard().install()
    print("ready", flush=True)
    i = 0
    busy = sys.argv[3] == "busy"
    while True:
        i += 1
        logger.msg(f"TaskInstance Finished: dag_id=forklift_matrix, task_id=span_{i:06d}, state=success")
        if not busy:
            sum(range(20_000))  # a scheduler does other work between log lines
    """
)


def _start(mode: str, log: Path, load: str = "busy") -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCENARIO, mode, str(log), load],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.stderr
    return proc


@pytest.mark.parametrize("load", ["busy", "mixed"])
def test_sigterm_inside_a_log_write_still_exits(tmp_path: Path, load: str) -> None:
    """busy: the loop does nothing but log, so a signal nearly always lands inside a write and the
    guard has to leave without the handler's line. mixed: the handler gets to run as written."""
    announced = 0
    for trial in range(TRIALS):
        log = tmp_path / f"guarded-{trial}.log"
        proc = _start("guard", log, load)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=EXIT_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"trial {trial}: SIGTERM did not stop the guarded process within {EXIT_WAIT:.0f} s")
        stderr = proc.stderr.read() if proc.stderr else ""
        assert code == 0, stderr
        ran_as_written = "Exiting gracefully upon receiving signal 15" in log.read_text()
        assert ran_as_written or "arrived during a log write; exiting without logging it" in stderr, stderr
        announced += ran_as_written
    if load == "mixed":
        assert announced > TRIALS // 2, f"the handler ran as written in only {announced} of {TRIALS} trials"


def test_control_without_the_guard_the_handler_deadlocks(tmp_path: Path) -> None:
    """Shows the scenario really deadlocks, so the test above can fail. The log is a pipe nobody reads,
    so the loop is certain to be inside a write (holding the logger's lock) when the signal lands."""
    for trial in range(3):
        fifo = tmp_path / f"bare-{trial}.fifo"
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer open it; never read
        try:
            proc = _start("bare", fifo)
            deadline = time.monotonic() + 30
            while "pipe_write" not in main_thread_wchan(proc.pid):
                assert time.monotonic() < deadline, (
                    f"the loop never blocked on its full log pipe: {main_thread_wchan(proc.pid)!r}"
                )
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            # From now on the pipe is read, so a hang is the lock's doing, not the full pipe's.
            os.set_blocking(reader, True)
            drain = threading.Thread(
                target=lambda fd=reader: [None for _ in iter(lambda: os.read(fd, 65536), b"")], daemon=True
            )
            drain.start()
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=CONTROL_WAIT)  # the handler waits for the lock its own thread holds
            proc.kill()
            proc.wait()
            drain.join(timeout=10)
        finally:
            os.close(reader)


def test_forked_child_runs_the_handler_unchanged(tmp_path: Path) -> None:
    """A process forked after install (a worker, the Manager) gets the plain handler's behaviour."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        from forklift.shutdown import ExitSignalGuard
        calls = []
        def _exit_gracefully(signum, frame):
            calls.append(signum)
        signal.signal(signal.SIGTERM, _exit_gracefully)
        ExitSignalGuard().install()
        assert signal.getsignal(signal.SIGTERM) is not _exit_gracefully  # wrapped
        pid = os.fork()
        if pid == 0:
            import logging
            logging.getLogger().addFilter(lambda r: os.kill(os.getpid(), signal.SIGTERM) or True)
            logging.warning("the signal lands inside this log call")
            os._exit(0 if calls == [signal.SIGTERM] else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "0", out.stderr


LOST_EXIT = textwrap.dedent(
    """
    import os, signal, sys
    from forklift.shutdown import ExitSignalGuard

    def _exit_gracefully(signum, frame):
        sys.exit(0)

    signal.signal(signal.SIGTERM, _exit_gracefully)
    guard = ExitSignalGuard()
    guard.install()

    class SignalsWhileFinalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the finalizer

    SignalsWhileFinalized()  # collected at once: its SystemExit is "ignored"
    print("carried on after the signal", flush=True)
    for heartbeat in range(int(sys.argv[1])):
        if sys.argv[2] == "guard":
            guard.raise_lost_exit()
    print("loop ended without exiting", flush=True)
    sys.exit(3)
    """
)


@pytest.mark.parametrize("mode", ["guard", "bare"])
def test_exit_lost_in_a_finalizer_is_raised_at_the_next_heartbeat(mode: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", LOST_EXIT, "5", mode], capture_output=True, text=True, timeout=60, check=False
    )
    # Python swallowed the handler's SystemExit either way: that is the situation being handled.
    assert "Exception ignored" in out.stderr and "carried on after the signal" in out.stdout, out
    if mode == "guard":
        assert out.returncode == 0, out
        assert "exit on signal 15 was lost; exiting now" in out.stderr
    else:  # the control: without the guard the process never exits on its own
        assert out.returncode == 3, out


ROUND_TRIP = textwrap.dedent(
    """
    import signal, sys, threading, time
    import forklift.shutdown as shutdown
    from forklift.channel import ResultChannel

    shutdown._MAX_REDELIVERIES = 100  # 2 s for the round trip to finish: far more than it needs here

    def _exit_gracefully(signum, frame):
        sys.exit(0)

    channel = ResultChannel()
    signal.signal(signal.SIGTERM, _exit_gracefully)
    if sys.argv[1] == "guard":
        shutdown.ExitSignalGuard().install()

    def put_when_asked():  # a worker reporting, on its own connection to the Manager
        # The signal must go to the main thread (the scheduler's loop), which waits for the Manager's reply.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        masked.set()
        sys.stdin.readline()
        channel.results.put("result")

    masked = threading.Event()
    putter = threading.Thread(target=put_when_asked, daemon=True)
    putter.start()
    masked.wait()
    got = channel.drain()  # connected: from now on the main thread waits only on the get() below
    try:
        print("ready", flush=True)
        got.extend(channel.drain(block_for=30))  # SIGTERM lands while this waits for the Manager's reply
        while True:
            time.sleep(0.01)
    finally:
        putter.join()
        # Let an abandoned get() on the Manager take the result first, if there is one, so that what
        # follows does not depend on which of the two is quicker.
        deadline = time.monotonic() + 5
        while channel.results.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
        got.extend(channel.drain())
        print(f"got {got}", flush=True)
        channel.close()
    """
)


def _sigterm_inside_a_round_trip(mode: str) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-c", ROUND_TRIP, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 30
        while "unix_stream_read" not in main_thread_wchan(proc.pid):  # waiting for the Manager's reply
            assert time.monotonic() < deadline, f"never waited on the Manager: {main_thread_wchan(proc.pid)!r}"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.stdin.write("put\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    return out


def test_sigterm_inside_a_manager_round_trip_waits_for_its_reply() -> None:
    """The guard holds the signal back until the reply is read, so the result it carries is kept.
    The control: raised inside the round trip, the reply (here, the result) is lost."""
    assert "got ['result']" in _sigterm_inside_a_round_trip("guard")
    assert "got []" in _sigterm_inside_a_round_trip("bare")
