"""Functions the engine tests run as ForkCall jobs (picklable by reference)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def ok() -> int:
    return 0


def exit_with(code: int) -> int:
    return code


def raise_error() -> int:
    raise RuntimeError("job raised on purpose")


def kill_self(signum: int) -> int:
    import faulthandler

    faulthandler.disable()  # pytest's crash dump would only be noise: the crash is the point
    os.kill(os.getpid(), signum)
    return 0


def append(path: str, text: str) -> int:
    with open(path, "a") as f:
        f.write(text + "\n")
    return 0


def wait_for_gate(fifo: str, path: str, text: str) -> int:
    """Block until the test writes to ``fifo``, then append ``text`` to ``path``."""
    with open(fifo) as gate:
        gate.read()
    return append(path, text)


def count_then_wait_for_gate(runs: str, fifo: str) -> int:
    """Note each run in ``runs`` at once, then block until the test writes to ``fifo``."""
    append(runs, "ran")
    with open(fifo) as gate:
        gate.read()
    return 0


def span(path: str, name: str, seconds: float) -> int:
    start = time.time()
    time.sleep(seconds)
    return append(path, f"{name} {start} {time.time()}")


def write_atomically(path: str, text: str) -> None:
    """Write aside and rename: a reader polling for ``path`` never sees it created but still empty."""
    Path(path + ".tmp").write_text(text)
    os.replace(path + ".tmp", path)


def write_env(path: str, name: str) -> int:
    write_atomically(path, os.environ.get(name, "<unset>"))
    return 0


def describe_process(path: str) -> int:
    """Record what the task process looks like from inside: pid, pgid, SIGINT handler."""
    handler = signal.getsignal(signal.SIGINT)
    write_atomically(path, f"{os.getpid()} {os.getpgid(0)} {handler is signal.default_int_handler}")
    return 0


def hang_with_child(pidfile: str) -> int:
    """Start a grandchild in the same process group, record both pids, and never finish."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    tmp = pidfile + ".tmp"
    Path(tmp).write_text(f"{os.getpid()} {child.pid}")
    os.replace(tmp, pidfile)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL stops it: terminate() must escalate
    while True:
        time.sleep(60)


def exit_hard(code: int) -> int:
    """Leave mid-task without any cleanup, as a crashing C extension or os._exit would."""
    os._exit(code)


def hang(pidfile: str, ignore_term: bool) -> int:
    """Record our pid and block forever; optionally shrug off SIGTERM."""
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tmp = pidfile + ".tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, pidfile)
    while True:
        time.sleep(60)


def timed(path: str, name: str, seconds: float) -> int:
    """Sleep, then append ``name pid start end``: a run that left no line did not finish."""
    start = time.time()
    time.sleep(seconds)
    return append(path, f"{name} {os.getpid()} {start} {time.time()}")


def detach_a_sleeper(pidfile: str) -> int:
    """Leave a `sleep 600` behind in a session of its own (double fork + setsid), as a daemon does, and exit."""
    first = os.fork()
    if first == 0:
        os.setsid()
        second = subprocess.Popen(["sleep", "600"], start_new_session=True, close_fds=True)
        tmp = pidfile + ".tmp"
        Path(tmp).write_text(str(second.pid))
        os.replace(tmp, pidfile)
        os._exit(0)  # the sleep's parent is gone: it is an orphan now
    os.waitpid(first, 0)
    return 0


def grow(mib: int, path: str) -> int:
    """Allocate ``mib`` MiB in 10 MiB steps (100 MiB/s, slow enough that a supervisor starved of CPU for
    a second on a loaded machine still stops it well short), touching every page, then hold it; note each
    step in ``path``."""
    held = []
    for step in range(mib // 10):
        held.append(bytearray(10 * 2**20))  # zero-filled: every page is touched
        write_atomically(path, str((step + 1) * 10))  # a stop mid-write must not leave the reader ''
        time.sleep(0.1)
    time.sleep(600)
    return 0


def write_gc_freeze_count(path: str) -> int:
    """How many objects this process inherited frozen (``gc.freeze()``): its collector never walks them."""
    import gc

    write_atomically(path, str(gc.get_freeze_count()))
    return 0


def write_oom_score_adj(path: str) -> int:
    write_atomically(path, Path("/proc/self/oom_score_adj").read_text().strip())
    return 0


def supervise_a_detacher(pidfile: str) -> int:
    """Behave like Airflow 3's supervisor: fork a 'runner' whose stdout is a pipe and read that pipe to
    EOF. The runner leaves a detached `sleep 600` holding the pipe and exits; only stopping the sleeper
    lets this end."""
    from forklift.supervisor_wake import wake_on_child_exit

    wake_on_child_exit()
    r, w = os.pipe()
    runner = os.fork()
    if runner == 0:
        os.dup2(w, 1)
        os.close(r)
        os.close(w)
        if os.fork() == 0:
            os.setsid()
            sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)  # fd 1 is the pipe
            Path(pidfile + ".tmp").write_text(str(sleeper.pid))
            os.replace(pidfile + ".tmp", pidfile)
            os._exit(0)
        os.wait()
        os._exit(0)
    os.close(w)
    while os.read(r, 4096):
        pass
    os.waitpid(runner, 0)
    return 0


def leak_once_gated(gate: str, claim: str, mib: int) -> None:
    """A worker initializer: the first worker to claim ``claim`` starts a thread that, once ``gate``
    exists, allocates ``mib`` MiB it keeps (a leak in the worker itself, not in a task), then says so."""
    import threading

    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return

    def leak() -> None:
        while not os.path.exists(gate):
            time.sleep(0.01)
        _LEAKED.append(bytearray(os.urandom(1)) * (mib * 2**20))  # touched pages: counted in RSS
        with open(gate + ".leaked", "w") as f:
            f.write(str(os.getpid()))

    threading.Thread(target=leak, daemon=True).start()


_LEAKED: list[bytearray] = []
