"""Fault injection against the engine: every fault is real (signals, killed processes), and every
job still gets exactly one result, no slot stays taken, and nothing is left running."""

from __future__ import annotations

import errno
import faulthandler
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from forklift.handover import RecordsDir
from forklift.jobs import FAILED, RUNNING, SUCCESS, Cause, Command, ForkCall, Job
from forklift.shutdown import SecondSignal
from forklift.strategies import EngineOptions, LimitedParallelism, Strategy, UnlimitedParallelism, make_strategy

import jobfns
from helpers import wait_for_results
from support import gone, wait_for_path, wait_gone

pytestmark = pytest.mark.timeout(120)


def job(key: str, func, *args, **kw) -> Job:
    return Job(key, ForkCall(func, args), title=key, **kw)


def open_gate(fifo: Path) -> None:
    """Let the job blocked reading ``fifo`` go on; nothing to do when no job holds it open any more
    (a plain write would then wait for a reader forever)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no reader
            return
        raise
    try:
        os.write(fd, b"go")
    finally:
        os.close(fd)


def running_pid(strategy: Strategy, key: str) -> tuple[int, int]:
    """Poll until ``key`` reports RUNNING; return (task pid, worker pid)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for r in strategy.poll(timeout=0.2):
            if r.key == key and r.state == RUNNING:
                return r.task_pid, r.worker_pid
    raise AssertionError(f"{key} never started")


class TestDeadWorker:
    @pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
    def test_limited_worker_killed_mid_task(self, tmp_path: Path, sig: signal.Signals) -> None:
        s = LimitedParallelism(2, EngineOptions(kill_grace=1))
        # The workers inherit pytest's faulthandler; our own SIGSEGV would print a "Fatal Python error"
        # dump into the test log that reads like a real crash.
        was_enabled = faulthandler.is_enabled()
        faulthandler.disable()
        try:
            s.start()
        finally:
            if was_enabled:
                faulthandler.enable()
        try:
            s.submit(job("victim", jobfns.hang, str(tmp_path / "pid"), False))
            task_pid, worker_pid = running_pid(s, "victim")
            os.kill(worker_pid, sig)
            wait_gone([worker_pid])
            # One poll (one heartbeat) is enough to see it, fail the task and free its slot.
            results = [r for r in s.poll() if r.state != RUNNING]
            assert [(r.key, r.state) for r in results] == [("victim", FAILED)]
            assert f"forklift worker pid {worker_pid} killed by {sig.name}" in results[0].reason
            assert results[0].cause is Cause.WORKER_DIED
            if sig == signal.SIGKILL:
                assert "possibly out of memory" in results[0].reason
            assert s.running_keys == set()
            wait_gone([task_pid])  # the orphaned task's process group was stopped too
            assert len(s.worker_pids()) == 2 and worker_pid not in s.worker_pids()  # replaced
            assert s.counters["worker_deaths"] == 1
            s.submit(job("after", jobfns.ok))
            assert wait_for_results(s, {"after"})["after"].state == SUCCESS
        finally:
            s.terminate()

    def test_unlimited_worker_killed_mid_task(self, tmp_path: Path) -> None:
        s = UnlimitedParallelism(EngineOptions(kill_grace=1))
        s.start()
        try:
            s.submit(job("victim", jobfns.hang, str(tmp_path / "pid"), False))
            task_pid, worker_pid = running_pid(s, "victim")
            os.kill(worker_pid, signal.SIGKILL)
            wait_gone([worker_pid])
            results = [r for r in s.poll() if r.state != RUNNING]
            assert [(r.key, r.state) for r in results] == [("victim", FAILED)]
            assert s.counters["worker_deaths"] == 1
            wait_gone([task_pid])
        finally:
            s.terminate()

    def test_queued_work_survives_a_worker_death(self, tmp_path: Path) -> None:
        s = LimitedParallelism(1, EngineOptions(kill_grace=1))
        s.start()
        try:
            s.submit(job("victim", jobfns.hang, str(tmp_path / "pid"), False))
            s.submit(job("waiting", jobfns.ok))
            _, worker_pid = running_pid(s, "victim")
            os.kill(worker_pid, signal.SIGKILL)
            got = wait_for_results(s, {"victim", "waiting"})
            assert got["victim"].state == FAILED and got["waiting"].state == SUCCESS
        finally:
            s.terminate()

    def test_task_exits_hard_mid_task(self, strategy: Strategy) -> None:
        strategy.submit(job("exit", jobfns.exit_hard, 7))
        assert wait_for_results(strategy, {"exit"})["exit"].reason == "exited with code 7"


class TestDeadManager:
    def test_manager_killed_with_work_running_and_waiting(self, tmp_path: Path, fifo: Path) -> None:
        s = LimitedParallelism(1, EngineOptions(kill_grace=1))
        s.start()
        try:
            s.submit(job("running", jobfns.wait_for_gate, str(fifo), str(tmp_path / "o"), "x"))
            s.submit(job("waiting", jobfns.ok))
            running_pid(s, "running")
            old_manager = s.manager_pid
            assert old_manager is not None
            os.kill(old_manager, signal.SIGKILL)
            wait_gone([old_manager])
            # Must not raise: it notices and opens a new channel. Its results count: the Manager may die
            # between queueing the worker's RUNNING report (read above) and acknowledging it, and that
            # worker then leaves at once, its task already counted lost here.
            early = {r.key: r for r in s.poll() if r.state != RUNNING}
            assert s.manager_pid not in (None, old_manager)
            assert s.counters["channel_restarts"] == 1
            open_gate(fifo)  # the running task ends, but its worker cannot report it
            got = {**early, **wait_for_results(s, {"running", "waiting"} - set(early))}
            assert (
                got["running"].state == FAILED and "lost with forklift's result-queue manager" in got["running"].reason
            )
            assert got["running"].cause is Cause.LOST_WITH_MANAGER
            assert got["waiting"].state == SUCCESS  # ran on a fresh worker
            assert len(s.worker_pids()) == 1
        finally:
            s.terminate()

    @pytest.mark.parametrize("handover", [False, True], ids=["no-records", "records"])
    def test_a_job_taken_as_the_manager_died_runs_once(self, tmp_path: Path, fifo: Path, handover: bool) -> None:
        """The worker took the job and started it, but its RUNNING report was still unread in the Manager
        when it died: handed to the new queue as if never taken, it would start a second time."""
        runs = tmp_path / "runs"
        records = RecordsDir(tmp_path / "records").ensure() if handover else None
        s = LimitedParallelism(1, EngineOptions(kill_grace=1, records=records))
        s.start()
        try:
            s.submit(job("taken", jobfns.count_then_wait_for_gate, str(runs), str(fifo)))
            s.submit(job("waiting", jobfns.ok))
            wait_for_path(runs)  # started, and never polled: its RUNNING report is not read
            old_manager = s.manager_pid
            assert old_manager is not None
            os.kill(old_manager, signal.SIGKILL)
            wait_gone([old_manager])
            early = {r.key: r for r in s.poll() if r.state != RUNNING}
            assert s.counters["channel_restarts"] == 1
            open_gate(fifo)
            got = {**early, **wait_for_results(s, {"taken", "waiting"} - set(early))}
            assert runs.read_text().splitlines() == ["ran"], "the job started twice"
            if handover:  # its worker saw it through and wrote down how it ended
                assert got["taken"].state == SUCCESS, got["taken"]
            else:  # nobody could report it: its worker stopped it and left
                assert got["taken"].state == FAILED and got["taken"].cause is Cause.LOST_WITH_MANAGER, got["taken"]
            assert got["waiting"].state == SUCCESS  # never taken: it ran once, on a fresh worker
        finally:
            s.terminate()

    def test_unlimited_survives_a_dead_manager(self) -> None:
        s = UnlimitedParallelism(EngineOptions(kill_grace=1))
        s.start()
        try:
            os.kill(s.manager_pid, signal.SIGKILL)  # type: ignore[arg-type]
            wait_gone([s.manager_pid])  # type: ignore[list-item]
            s.poll()
            s.submit(job("after", jobfns.ok))
            assert wait_for_results(s, {"after"})["after"].state == SUCCESS
        finally:
            s.terminate()


class TestRevoke:
    def test_waiting_job_is_withdrawn_and_never_runs(self, tmp_path: Path, fifo: Path) -> None:
        out = tmp_path / "ran"
        s = LimitedParallelism(1, EngineOptions(kill_grace=1))
        s.start()
        try:
            s.submit(job("blocker", jobfns.wait_for_gate, str(fifo), str(tmp_path / "o"), "x"))
            s.submit(job("stuck", jobfns.append, str(out), "stuck ran"))
            running_pid(s, "blocker")
            assert s.revoke("stuck") == "withdrawn"
            fifo.write_text("go")
            got = wait_for_results(s, {"blocker"})
            assert got["blocker"].state == SUCCESS
            assert s.poll(timeout=0.3) == []
            assert not out.exists()
        finally:
            s.terminate()

    def test_running_job_is_stopped_and_reports_nothing(self, strategy: Strategy, tmp_path: Path) -> None:
        strategy.submit(job("stuck", jobfns.hang, str(tmp_path / "pid"), False))
        task_pid, _ = running_pid(strategy, "stuck")
        assert strategy.revoke("stuck") == "stopped"
        assert strategy.running_keys == set()
        wait_gone([task_pid])
        assert [r for r in strategy.poll(timeout=0.5) if r.key == "stuck"] == []
        assert strategy.revoke("stuck") == "unknown"

    def test_revoked_then_dispatched_again_under_the_same_key(self, strategy: Strategy, tmp_path: Path) -> None:
        """The scheduler re-queues a revoked task with the same key: the old copy's late reports
        (its kill) must not be taken for the new copy."""
        strategy.submit(job("k", jobfns.hang, str(tmp_path / "pid"), True))
        old_task, _ = running_pid(strategy, "k")
        assert strategy.revoke("k") == "stopped"
        strategy.submit(job("k", jobfns.ok))
        got = wait_for_results(strategy, {"k"})
        assert got["k"].state == SUCCESS, got["k"]
        # The old copy ignores SIGTERM; the next heartbeats escalate to SIGKILL after kill_grace.
        deadline = time.monotonic() + 15
        while not gone(old_task) and time.monotonic() < deadline:
            assert [r for r in strategy.poll(timeout=0.1) if r.state != RUNNING] == []
        assert gone(old_task)


class TestHardTimeout:
    @pytest.mark.parametrize(("ignore_term", "stopped_by"), [(False, "SIGTERM"), (True, "SIGKILL")])
    def test_parent_stops_a_task_past_its_deadline(
        self, strategy: Strategy, tmp_path: Path, ignore_term: bool, stopped_by: str
    ) -> None:
        strategy.submit(job("slow", jobfns.hang, str(tmp_path / "pid"), ignore_term, timeout=0.5))
        pid = int(wait_for_path(tmp_path / "pid"))
        result = wait_for_results(strategy, {"slow"})["slow"]
        assert result.state == FAILED
        assert result.reason.startswith("timed out: still running 0.5 s after it started")
        assert result.cause is Cause.TIMED_OUT and strategy.counters["timeouts"] == 1
        assert f"with {stopped_by}" in result.reason
        wait_gone([pid])
        assert strategy.counters["timeouts"] == 1

    def test_a_task_within_its_deadline_is_untouched(self, strategy: Strategy) -> None:
        strategy.submit(job("quick", jobfns.ok, timeout=30))
        assert wait_for_results(strategy, {"quick"})["quick"].state == SUCCESS


class TestRecycling:
    def test_max_tasks_per_child(self, tmp_path: Path) -> None:
        s = LimitedParallelism(1, EngineOptions(max_tasks_per_child=2))
        s.start()
        try:
            keys = {f"j{i}" for i in range(5)}
            for k in sorted(keys):
                s.submit(job(k, jobfns.ok))
            got = wait_for_results(s, keys)
            assert all(r.state == SUCCESS for r in got.values())
            assert len({r.worker_pid for r in got.values()}) == 3  # 2 + 2 + 1
            assert s.counters["recycles"] >= 2 and s.counters["worker_deaths"] == 0
        finally:
            s.end(timeout=10)

    def test_max_memory_per_child(self) -> None:
        s = LimitedParallelism(1, EngineOptions(max_memory_per_child=1))  # 1 MiB: every worker is over it
        s.start()
        try:
            for k in ("a", "b"):
                s.submit(job(k, jobfns.ok))
            got = wait_for_results(s, {"a", "b"})
            assert got["a"].worker_pid != got["b"].worker_pid
        finally:
            s.end(timeout=10)


class TestShutdown:
    def test_escalation_stops_waiting_at_once(self, tmp_path: Path) -> None:
        s = LimitedParallelism(1, EngineOptions(kill_grace=0.5))
        s.start()
        s.submit(job("long", jobfns.hang, str(tmp_path / "pid"), False))
        running_pid(s, "long")
        started = time.monotonic()
        results = s.end(timeout=60, escalate=lambda: True)
        assert time.monotonic() - started < 10
        assert [(r.key, r.state) for r in results if r.state != RUNNING] == [("long", FAILED)]

    def test_second_signal_is_noticed_not_fatal(self) -> None:
        with SecondSignal() as second:
            assert not second.arrived()
            os.kill(os.getpid(), signal.SIGTERM)
            assert second.arrived()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def test_workers_die_with_their_parent(self, tmp_path: Path) -> None:
        """SIGKILL the process that owns the engine: its workers, tasks and manager follow it."""
        pidfile = tmp_path / "pids"
        script = textwrap.dedent(
            f"""
            import os, sys, time
            sys.path[:0] = {sys.path!r}
            import jobfns
            from forklift.jobs import ForkCall, Job
            from forklift.strategies import LimitedParallelism
            s = LimitedParallelism(2)
            s.start()
            s.submit(Job("t", ForkCall(jobfns.hang_with_child, ({str(tmp_path / "task")!r},))))
            while not os.path.exists({str(tmp_path / "task")!r}):
                s.poll(timeout=0.1)
            pids = s.worker_pids() + [s.manager_pid]
            open({str(pidfile)!r} + ".tmp", "w").write(" ".join(map(str, pids)))
            os.replace({str(pidfile)!r} + ".tmp", {str(pidfile)!r})
            time.sleep(600)
            """
        )
        owner = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent)
        try:
            pids = [int(p) for p in wait_for_path(pidfile, timeout=60).split()]
            pids += [int(p) for p in (tmp_path / "task").read_text().split()]
            owner.kill()
            owner.wait(10)
            wait_gone(pids, timeout=10)
        finally:
            owner.kill()
            owner.wait(10)


class TestBadInput:
    def test_unpicklable_job_fails_alone(self) -> None:
        s = LimitedParallelism(1)
        s.start()
        try:
            s.submit(Job("bad", ForkCall(lambda: 0)))  # a lambda cannot cross to a worker
            s.submit(job("good", jobfns.ok))
            got = wait_for_results(s, {"bad", "good"})
            assert got["bad"].state == FAILED and "could not hand it to a worker" in got["bad"].reason
            assert got["bad"].cause is Cause.NOT_STARTED
            assert got["good"].state == SUCCESS
            assert s.running_keys == set()
        finally:
            s.end(timeout=10)


def test_huge_undecodable_output_does_not_disturb_the_worker(strategy: Strategy) -> None:
    # 20 MB of random bytes on stdout and stderr: forklift never reads a task's output (it goes where
    # the scheduler's goes), so nothing can choke on it.
    code = "import os, sys; sys.stdout.buffer.write(os.urandom(20_000_000)); sys.stderr.buffer.write(os.urandom(1_000_000))"
    strategy.submit(Job("noisy", Command([sys.executable, "-c", code]), title="noisy"))
    strategy.submit(job("after", jobfns.ok))
    got = wait_for_results(strategy, {"noisy", "after"})
    assert got["noisy"].state == SUCCESS and got["after"].state == SUCCESS


def test_manager_socket_is_private() -> None:
    s = make_strategy(1)
    s.start()
    try:
        address = Path(s.channel.address)  # type: ignore[union-attr]
        assert address.parent.stat().st_mode & 0o777 == 0o700
    finally:
        s.end(timeout=10)
    pickle.dumps  # noqa: B018 - keep the import honest for readers: Jobs cross by pickle
