"""A task is contained: what it detaches from its session (a double fork into a new session, as a daemon
does) is re-parented to its worker, a child subreaper, and stopped and reaped when the task ends."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest

from forklift.jobs import FAILED, SUCCESS, Cause, Command, ForkCall, Job
from forklift.strategies import EngineOptions, make_strategy

import jobfns
from helpers import wait_for_results
from support import gone, wait_for_path

pytestmark = pytest.mark.timeout(60)

DETACH = (
    "import os, subprocess, sys\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    p = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
    "    open(sys.argv[1] + '.tmp', 'w').write(str(p.pid)); os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "    os._exit(0)\n"
    "os.wait()\n"
)


@pytest.mark.parametrize("parallelism", [0, 2], ids=["unlimited", "limited"])
@pytest.mark.parametrize("mode", ["fork", "subprocess"])
def test_a_detached_sleeper_is_stopped_when_its_task_ends(tmp_path: Path, parallelism: int, mode: str) -> None:
    pidfile = tmp_path / "sleeper.pid"
    if mode == "fork":
        runnable = ForkCall(jobfns.detach_a_sleeper, (str(pidfile),))
    else:
        runnable = Command([sys.executable, "-c", DETACH, str(pidfile)])
    kill_grace = 1.0
    engine = make_strategy(parallelism, EngineOptions(kill_grace=kill_grace))
    engine.start()
    try:
        engine.submit(Job("detacher", runnable, title="detacher"))
        result = wait_for_results(engine, {"detacher"})["detacher"]
        ended = time.monotonic()
        assert result.state == SUCCESS, result
        sleeper = int(wait_for_path(pidfile))
        while not gone(sleeper):
            assert time.monotonic() - ended < kill_grace + 1, f"the detached sleep {sleeper} still runs"
            time.sleep(0.05)
        # Reaped, not a zombie: nobody else would ever wait for it.
        assert not psutil.pid_exists(sleeper) or psutil.Process(sleeper).ppid() not in engine.worker_pids()
    finally:
        engine.terminate()


# -- a key queued again while its earlier run is live or unread --------------------------------------


def spans(path: Path) -> list[tuple[str, float, float]]:
    out = []
    for line in path.read_text().splitlines():
        name, start, end = line.split()
        out.append((name, float(start), float(end)))
    return out


@pytest.mark.parametrize("parallelism", [0, 2], ids=["unlimited", "limited"])
def test_a_key_queued_again_runs_after_its_earlier_run_never_beside_it(tmp_path: Path, parallelism: int) -> None:
    out = tmp_path / "spans"
    engine = make_strategy(parallelism, EngineOptions(kill_grace=1.0))
    engine.start()
    try:
        for _ in range(5):  # many times in a row
            out.unlink(missing_ok=True)
            engine.submit(Job("k", ForkCall(jobfns.span, (str(out), "first", 0.3)), title="k"))
            engine.submit(Job("k", ForkCall(jobfns.span, (str(out), "second", 0.1)), title="k"))  # no refusal
            with pytest.raises(ValueError, match="already waiting to run"):
                engine.submit(Job("k", ForkCall(jobfns.ok), title="k"))  # a third copy is one too many
            finals = []
            deadline = time.monotonic() + 20
            while len(finals) < 2:
                assert time.monotonic() < deadline, f"results so far: {finals}"
                finals += [r for r in engine.poll(timeout=0.1) if r.state != "running"]
            assert [r.state for r in finals] == [SUCCESS, SUCCESS]
            assert finals[0].seq != finals[1].seq, "each run reports under its own dispatch"
            (first, _, first_end), (second, second_start, _) = spans(out)
            assert (first, second) == ("first", "second") and second_start >= first_end, spans(out)
            assert engine.running_keys == set() and not engine.waiting("k")
    finally:
        engine.terminate()


def test_a_key_queued_again_after_its_run_ended_unread(tmp_path: Path) -> None:
    """The earlier run has exited, but sync() has not read it yet: the new one still waits for that read."""
    out = tmp_path / "spans"
    engine = make_strategy(1, EngineOptions(kill_grace=1.0))
    engine.start()
    try:
        engine.submit(Job("k", ForkCall(jobfns.span, (str(out), "first", 0)), title="k"))
        wait_for_path(out)  # it ran; its result sits unread on the queue
        time_ran = out.stat().st_mtime
        engine.submit(Job("k", ForkCall(jobfns.span, (str(out), "second", 0)), title="k"))
        assert engine.waiting("k")
        results = wait_for_results(engine, {"k"})
        assert results["k"].state == SUCCESS
        second = wait_for_results(engine, {"k"})["k"]
        assert second.state == SUCCESS and second.seq != results["k"].seq
        assert [name for name, _, _ in spans(out)] == ["first", "second"] and out.stat().st_mtime >= time_ran
    finally:
        engine.terminate()


def test_a_held_copy_is_withdrawn_by_revoke_and_at_shutdown(tmp_path: Path) -> None:
    out = tmp_path / "spans"
    engine = make_strategy(2, EngineOptions(kill_grace=1.0))
    engine.start()
    engine.submit(Job("k", ForkCall(jobfns.span, (str(out), "first", 0.5)), title="k"))
    engine.submit(Job("k", ForkCall(jobfns.span, (str(out), "second", 0)), title="k"))
    assert engine.revoke("k") == "withdrawn"  # the held copy; the earlier run is the scheduler's past
    engine.submit(Job("j", ForkCall(jobfns.span, (str(out), "j-first", 0.5)), title="j"))
    started: set[str] = set()
    deadline = time.monotonic() + 20
    while started != {"k", "j"}:  # both earlier runs under way (end() withdraws what has not started)
        assert time.monotonic() < deadline
        started |= {r.key for r in engine.poll(timeout=0.1) if r.state == "running"}
    engine.submit(Job("j", ForkCall(jobfns.span, (str(out), "j-second", 0)), title="j"))
    results = engine.end(10)
    assert ("j", FAILED) in [(r.key, r.state) for r in results]
    assert "withdrawn" in next(r.reason for r in results if r.key == "j" and r.state == FAILED)
    names = [name for name, _, _ in spans(out)]
    assert "second" not in names and "j-second" not in names, names


# -- memory ------------------------------------------------------------------------------------------

GROW = (
    "import os, sys, time\n"
    "held = []\n"
    "for step in range(int(sys.argv[1]) // 10):\n"
    "    held.append(bytearray(10 * 2**20)); open(sys.argv[2] + '.tmp', 'w').write(str((step + 1) * 10))\n"
    "    os.replace(sys.argv[2] + '.tmp', sys.argv[2]); time.sleep(0.1)\n"
    "time.sleep(600)\n"
)


@pytest.mark.parametrize("parallelism", [0, 2], ids=["unlimited", "limited"])
@pytest.mark.parametrize("mode", ["fork", "subprocess"])
def test_a_task_over_its_memory_limit_fails_while_its_neighbour_succeeds(
    tmp_path: Path, parallelism: int, mode: str
) -> None:
    grown = tmp_path / "grown"
    if mode == "fork":
        hog = ForkCall(jobfns.grow, (1000, str(grown)))
    else:
        hog = Command([sys.executable, "-c", GROW, "1000", str(grown)])
    engine = make_strategy(parallelism, EngineOptions(kill_grace=1.0))
    engine.start()
    try:
        engine.submit(Job("hog", hog, title="hog", memory_limit_mib=250))
        engine.submit(
            Job("neighbour", ForkCall(jobfns.span, (str(tmp_path / "n"), "n", 1.0)), title="n", memory_limit_mib=250)
        )
        results = wait_for_results(engine, {"hog", "neighbour"}, timeout=60)
        hog_result = results["hog"]
        assert hog_result.state == FAILED and hog_result.reason.startswith("exceeded its memory limit: "), hog_result
        used = int(hog_result.reason.split(": ")[1].split(" MiB")[0])
        assert 250 < used < 450, hog_result.reason  # caught within a few samples of crossing the line
        assert "> 250 MiB" in hog_result.reason
        assert hog_result.cause is Cause.MEMORY_LIMIT
        assert int(grown.read_text()) < 1000, "it was stopped before it took all it asked for"
        assert results["neighbour"].state == SUCCESS
        assert engine.counters["memory_limits"] == 1
    finally:
        engine.terminate()


@pytest.mark.parametrize("mode", ["fork", "subprocess"])
def test_tasks_are_the_oom_killers_first_choice(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "adj"
    if mode == "fork":
        runnable = ForkCall(jobfns.write_oom_score_adj, (str(out),))
    else:
        runnable = Command(
            [sys.executable, "-c", f"open({str(out)!r}, 'w').write(open('/proc/self/oom_score_adj').read().strip())"]
        )
    engine = make_strategy(1, EngineOptions(kill_grace=1.0, oom_score_adj=500))
    engine.start()
    try:
        engine.submit(Job("adj", runnable, title="adj"))
        assert wait_for_results(engine, {"adj"})["adj"].state == SUCCESS
        assert out.read_text() == "500"
        worker = engine.worker_pids()[0]
        assert (
            Path(f"/proc/{worker}/oom_score_adj").read_text().strip()
            == Path("/proc/self/oom_score_adj").read_text().strip()
        )
    finally:
        engine.terminate()


@pytest.mark.parametrize("parallelism", [0, 2], ids=["unlimited", "limited"])
def test_a_detached_child_holding_the_tasks_pipe_does_not_keep_its_supervisor_waiting(
    tmp_path: Path, parallelism: int
) -> None:
    """Airflow 3's supervisor waits for its task's pipes to close (up to 60 s). On its word that the task
    process has ended, the worker stops what was detached, so the task ends with its own process."""
    pidfile = tmp_path / "sleeper.pid"
    engine = make_strategy(parallelism, EngineOptions(kill_grace=1.0))
    engine.start()
    try:
        started = time.monotonic()
        engine.submit(Job("supervised", ForkCall(jobfns.supervise_a_detacher, (str(pidfile),)), title="supervised"))
        result = wait_for_results(engine, {"supervised"}, timeout=20)["supervised"]
        took = time.monotonic() - started
        assert result.state == SUCCESS, result
        assert took < 5, f"the task took {took:.1f} s: its supervisor waited for the detached sleeper"
        assert gone(int(pidfile.read_text()))
    finally:
        engine.terminate()
