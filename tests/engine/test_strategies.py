"""The process engine without Airflow: both strategies, both run modes, results, shutdown."""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from forklift.jobs import FAILED, RUNNING, SUCCESS, Cause, Command, ForkCall, Job
from forklift.strategies import EngineOptions, LimitedParallelism, Strategy, UnlimitedParallelism, make_strategy
from forklift.testing.measure import peak_overlap

import jobfns
from helpers import descendants, wait_for_results, wait_for_running
from support import wait_for_path, wait_for_title

PY = sys.executable


class _LeavingBetweenStopMessages:
    """A pool's task queue on which each stop message is taken, and its worker gone, before the next
    is sent: the widest form of the race between sending stop messages and workers leaving."""

    def __init__(self, queue: Any, workers: list[Any]) -> None:
        self._queue = queue
        self._workers = workers

    def put(self, item: Any) -> None:
        alive = [w for w in self._workers if w.is_alive()]
        self._queue.put(item)
        if item is None and alive:
            ready = multiprocessing.connection.wait([w.sentinel for w in alive], timeout=10)
            for worker in alive:
                if worker.sentinel in ready:
                    worker.join(timeout=10)  # its exit status too, not only its closed pipes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


def fork_job(key: str, func, *args, **kw) -> Job:
    return Job(key, ForkCall(func, args), title=key, **kw)


def cmd_job(key: str, code: str, secret: bytes | None = None, **kw) -> Job:
    return Job(key, Command([PY, "-c", code], secret_input=secret), title=key, **kw)


def test_make_strategy_picks_by_parallelism() -> None:
    assert isinstance(make_strategy(0), UnlimitedParallelism)
    limited = make_strategy(3)
    assert isinstance(limited, LimitedParallelism) and limited.parallelism == 3
    for bad in (-1, 1.5, "4", True, None):
        with pytest.raises(ValueError, match="parallelism="):
            make_strategy(bad)  # type: ignore[arg-type]


class TestOutcomes:
    """Every way a job can end becomes exactly one SUCCESS or FAILED result with a reason."""

    def test_fork_outcomes(self, strategy: Strategy) -> None:
        jobs = [
            fork_job("ok", jobfns.ok),
            fork_job("exit3", jobfns.exit_with, 3),
            fork_job("raises", jobfns.raise_error),
            fork_job("segv", jobfns.kill_self, signal.SIGSEGV),
            fork_job("oom", jobfns.kill_self, signal.SIGKILL),
        ]
        for job in jobs:
            strategy.submit(job)
        got = wait_for_results(strategy, {j.key for j in jobs})
        assert (got["ok"].state, got["ok"].reason) == (SUCCESS, "exited with code 0")
        assert (got["exit3"].state, got["exit3"].reason) == (FAILED, "exited with code 3")
        assert got["ok"].cause is None and got["exit3"].cause is Cause.EXIT_CODE
        assert (got["raises"].state, got["raises"].reason) == (FAILED, "exited with code 1")
        assert (got["segv"].state, got["segv"].reason) == (FAILED, "killed by SIGSEGV")
        assert got["segv"].cause is Cause.KILLED_BY_SIGNAL
        assert got["oom"].state == FAILED
        assert got["oom"].reason == "killed by SIGKILL — possibly out of memory"
        assert strategy.running_keys == set()

    def test_subprocess_outcomes(self, strategy: Strategy) -> None:
        jobs = [
            cmd_job("ok", "pass"),
            cmd_job("exit4", "raise SystemExit(4)"),
            cmd_job("term", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"),
            cmd_job("secret", "import sys; sys.exit(0 if sys.stdin.read() == 'token-123' else 9)", b"token-123"),
            Job("missing", Command(["/nonexistent/airflow", "tasks", "run"]), title="missing"),
        ]
        for job in jobs:
            strategy.submit(job)
        got = wait_for_results(strategy, {j.key for j in jobs})
        assert got["ok"].state == SUCCESS
        assert (got["exit4"].state, got["exit4"].reason) == (FAILED, "exited with code 4")
        assert (got["term"].state, got["term"].reason) == (FAILED, "killed by SIGTERM")
        assert got["secret"].state == SUCCESS, got["secret"].reason
        assert got["missing"].state == FAILED
        assert "could not start '/nonexistent/airflow'" in got["missing"].reason
        assert "No such file" in got["missing"].reason and got["missing"].cause is Cause.NOT_STARTED

    def test_running_is_reported_with_the_task_pid_first(self, strategy: Strategy, tmp_path: Path) -> None:
        out = tmp_path / "proc"
        strategy.submit(fork_job("k", jobfns.describe_process, str(out)))
        seen = []
        while not seen or seen[-1].state == RUNNING:
            seen.extend(strategy.poll(timeout=0.2))
        assert [r.state for r in seen] == [RUNNING, SUCCESS]
        pid, pgid, default_sigint = out.read_text().split()
        # The task leads its own process group (so it can be stopped as a whole) and has
        # Python's default SIGINT handling back, although its worker ignores SIGINT.
        assert int(pid) == seen[0].task_pid == int(pgid)
        assert default_sigint == "True"

    def test_task_environment_is_applied(self, strategy: Strategy, tmp_path: Path) -> None:
        fork_out, sub_out = tmp_path / "fork", tmp_path / "sub"
        env = {"_AIRFLOW_PARSING_CONTEXT_DAG_ID": "my_dag"}
        strategy.submit(fork_job("f", jobfns.write_env, str(fork_out), "_AIRFLOW_PARSING_CONTEXT_DAG_ID", env=env))
        strategy.submit(
            Job(
                "s",
                Command(
                    [
                        PY,
                        "-c",
                        f"import os; open({str(sub_out)!r}, 'w').write(os.environ['_AIRFLOW_PARSING_CONTEXT_DAG_ID'])",
                    ]
                ),
                env=env,
            )
        )
        got = wait_for_results(strategy, {"f", "s"})
        assert got["f"].state == got["s"].state == SUCCESS
        assert fork_out.read_text() == sub_out.read_text() == "my_dag"

    def test_same_key_again_waits_for_the_live_run_and_a_third_is_refused(
        self, strategy: Strategy, fifo: Path, tmp_path: Path
    ) -> None:
        strategy.submit(fork_job("k", jobfns.wait_for_gate, str(fifo), str(tmp_path / "o"), "x"))
        strategy.submit(fork_job("k", jobfns.exit_with, 3))  # held until the first has ended
        with pytest.raises(ValueError, match="already waiting to run"):
            strategy.submit(fork_job("k", jobfns.ok))
        fifo.write_text("go")
        assert wait_for_results(strategy, {"k"})["k"].state == SUCCESS  # the first, never the held one
        assert wait_for_results(strategy, {"k"})["k"].reason == "exited with code 3"


class TestLimited:
    def test_exactly_n_workers_from_start(self) -> None:
        before = descendants()
        s = LimitedParallelism(3)
        s.start()
        try:
            assert len(s.worker_pids()) == 3
            # A worker names itself once it runs; wait for that rather than racing it.
            for pid in s.worker_pids():
                wait_for_title(pid, "airflow worker -- forklift: <idle>")
        finally:
            s.end(timeout=10)
        assert descendants() - before == set()

    def test_never_more_than_n_at_once(self, tmp_path: Path) -> None:
        out = tmp_path / "spans"
        s = LimitedParallelism(2)
        s.start()
        try:
            for i in range(6):
                s.submit(fork_job(f"j{i}", jobfns.span, str(out), f"j{i}", 0.3))
            # Only as many are handed to workers as there are workers; the rest wait here.
            assert len(s.running_keys) == 2 and len(s.pending_keys) == 4
            got = wait_for_results(s, {f"j{i}" for i in range(6)})
        finally:
            s.end(timeout=10)
        assert all(r.state == SUCCESS for r in got.values())
        spans = [tuple(map(float, line.split()[1:])) for line in out.read_text().splitlines()]
        assert peak_overlap(spans) == 2

    def test_waiting_jobs_run_by_priority(self, fifo: Path, tmp_path: Path) -> None:
        order = tmp_path / "order"
        s = LimitedParallelism(1)
        s.start()
        try:
            s.submit(fork_job("blocker", jobfns.wait_for_gate, str(fifo), str(order), "blocker"))
            for name, prio in [("low", 1), ("high", 5), ("mid", 3), ("low2", 1)]:
                s.submit(fork_job(name, jobfns.append, str(order), name, priority=prio))
            fifo.write_text("go")
            wait_for_results(s, {"blocker", "low", "high", "mid", "low2"})
        finally:
            s.end(timeout=10)
        assert order.read_text().split() == ["blocker", "high", "mid", "low", "low2"]

    def test_poison_pill_lets_running_work_finish(self, fifo: Path, tmp_path: Path) -> None:
        before = descendants()
        out = tmp_path / "o"
        s = LimitedParallelism(2)
        s.start()
        s.submit(fork_job("slow", jobfns.wait_for_gate, str(fifo), str(out), "done"))
        wait_for_running(s, "slow")
        workers = [psutil.Process(p) for p in s.worker_pids()]
        # Release the gate from a helper process once end() is under way: end() must wait for it.
        release = psutil.Popen([sys.executable, "-c", f"open({str(fifo)!r}, 'w').write('go')"])
        results = s.end(timeout=30)
        release.wait(10)
        assert [(r.key, r.state) for r in results if r.state != RUNNING] == [("slow", SUCCESS)]
        assert out.read_text() == "done\n"
        # Workers left through the poison pill: a clean exit, not a kill.
        assert all(not w.is_running() for w in workers)
        assert descendants() - before == set()


class TestUnlimited:
    def test_one_process_per_job_gone_when_done(self, tmp_path: Path) -> None:
        s = UnlimitedParallelism()
        s.start()
        try:
            gates = []
            for i in range(5):
                gates.append(tmp_path / f"gate{i}")
                os.mkfifo(gates[-1])
                s.submit(fork_job(f"j{i}", jobfns.wait_for_gate, str(gates[-1]), str(tmp_path / "o"), f"j{i}"))
            assert len(s.worker_pids()) == 5  # all started at once: no limit of forklift's own
            workers = [psutil.Process(p) for p in s.worker_pids()]
            for gate in gates:
                gate.write_text("go")  # blocks until that job is waiting on it
            got = wait_for_results(s, {f"j{i}" for i in range(5)})
            assert all(r.state == SUCCESS for r in got.values())
            # Each LocalWorker exits once it has reported; poll() reaps it.
            deadline = time.monotonic() + 10
            while s.worker_pids() and time.monotonic() < deadline:
                s.poll(timeout=0.05)
            assert s.worker_pids() == []
            assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
        finally:
            s.end(timeout=10)


class TestShutdown:
    def test_end_stops_what_outlives_the_timeout(self, tmp_path: Path) -> None:
        for parallelism in (0, 2):
            before = descendants()
            s = make_strategy(parallelism, EngineOptions(kill_grace=1.0))
            s.start()
            pidfile = tmp_path / f"pids{parallelism}"
            s.submit(fork_job("hangs", jobfns.hang_with_child, str(pidfile)))
            pids = [int(p) for p in wait_for_path(pidfile).split()]
            results = s.end(timeout=0.5)
            final = [r for r in results if r.state != RUNNING]
            assert [(r.key, r.state) for r in final] == [("hangs", FAILED)]
            # The task ignores SIGTERM: only the escalation to SIGKILL of its process group stops it
            # and the grandchild it started.
            assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
            assert descendants() - before == set()

    def test_every_worker_gets_its_stop_message_when_workers_leave_while_they_are_sent(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Any worker takes any stop message. One that takes a message sent for an earlier worker, and
        is gone before the sending reaches it, must not cost the pool a message: the last worker would
        wait for one until end()'s timeout and be killed then (Airflow's own LocalExecutor.end() loses
        a message this way, and waits on that worker for ever)."""
        s = LimitedParallelism(4, EngineOptions(kill_grace=1.0))
        s.start()
        workers = list(s.pool.workers())
        # One job first: the worker that ran it queues for work again behind the three others. Put it
        # first in the pool's order, so the first stop message goes out while it is checked and is taken
        # by one of the others, which are checked after it.
        for worker in workers:
            wait_for_title(worker.pid, "forklift: <idle>")
        s.submit(fork_job("first", jobfns.ok))
        first = wait_for_results(s, {"first"})["first"]
        assert first.state == SUCCESS
        wait_for_title(first.worker_pid, "forklift: <idle>")
        pool = s.pool._pool
        s.pool._pool = {
            first.worker_pid: pool[first.worker_pid],
            **{p: w for p, w in pool.items() if p != first.worker_pid},
        }
        s.pool.task_queue = _LeavingBetweenStopMessages(s.pool.task_queue, workers)
        with caplog.at_level(logging.WARNING, logger="forklift"):
            s.end(timeout=5)
        # Had a worker waited in vain, end() would have stopped it at the timeout, and said so.
        assert "still running" not in caplog.text, caplog.text

    def test_end_that_fails_still_stops_every_worker_and_task(self, fifo: Path, tmp_path: Path) -> None:
        """An exception inside end() (the scheduler's SystemExit, a broken queue) must not leave a worker
        waiting for a stop message it never got: the interpreter's exit would join it forever."""
        s = LimitedParallelism(2, EngineOptions(kill_grace=1.0))
        s.start()
        s.submit(fork_job("running", jobfns.wait_for_gate, str(fifo), str(tmp_path / "o"), "x"))
        wait_for_running(s, "running")
        pids = [w.pid for w in s.pool.workers()] + [s._dispatched["running"].task_pid]

        def broken() -> None:
            raise SystemExit(0)

        s.pool.ask_workers_to_stop = broken  # type: ignore[method-assign]
        with pytest.raises(SystemExit):
            s.end(timeout=30)
        assert all(pids) and [pid for pid in pids if psutil.pid_exists(pid)] == []
        assert s.channel is None  # the Manager is gone too

    def test_terminate_reports_unfinished_work(self, strategy: Strategy, tmp_path: Path) -> None:
        pidfile = tmp_path / "pids"
        strategy.submit(fork_job("hangs", jobfns.hang_with_child, str(pidfile)))
        wait_for_path(pidfile)
        results = strategy.terminate()
        assert [(r.key, r.state) for r in results if r.state != RUNNING] == [("hangs", FAILED)]

    def test_end_withdraws_work_that_has_not_started(self, fifo: Path, tmp_path: Path) -> None:
        s = LimitedParallelism(1, EngineOptions(kill_grace=1.0))
        s.start()
        s.submit(fork_job("running", jobfns.wait_for_gate, str(fifo), str(tmp_path / "o"), "x"))
        s.submit(fork_job("waiting", jobfns.ok))
        wait_for_running(s, "running")
        results = {r.key: r for r in s.end(timeout=0.5) if r.state != RUNNING}
        assert results["waiting"].state == FAILED and "withdrawn" in results["waiting"].reason
        assert results["waiting"].cause is Cause.WITHDRAWN
        # Stopped by the shutdown, and said so (its worker only saw it die of a signal).
        assert results["running"].state == FAILED
        assert results["running"].reason == "stopped by forklift at shutdown before it finished"
        assert results["running"].cause is Cause.STOPPED_AT_SHUTDOWN

    def test_a_task_killed_at_shutdown_is_not_called_out_of_memory(self, tmp_path: Path) -> None:
        """A task that ignores SIGTERM is SIGKILLed after kill_grace; its worker, alive, reports "killed
        by SIGKILL — possibly out of memory". The reason must name the shutdown instead."""
        pidfile = tmp_path / "pid"
        s = LimitedParallelism(1, EngineOptions(kill_grace=0.5))
        s.start()
        s.submit(fork_job("deaf", jobfns.hang, str(pidfile), True))
        wait_for_path(pidfile)
        wait_for_running(s, "deaf")
        (result,) = [r for r in s.end(timeout=0.1) if r.state != RUNNING]
        assert (result.state, result.reason, result.cause) == (
            FAILED,
            "stopped by forklift at shutdown before it finished",
            Cause.STOPPED_AT_SHUTDOWN,
        )

    def test_submit_after_end_is_refused(self) -> None:
        s = LimitedParallelism(1)
        s.start()
        s.end(timeout=5)
        with pytest.raises(RuntimeError, match="not accepting work"):
            s.submit(fork_job("late", jobfns.ok))


def test_poll_does_not_block(strategy: Strategy, fifo: Path, tmp_path: Path) -> None:
    strategy.submit(fork_job("k", jobfns.wait_for_gate, str(fifo), str(tmp_path / "o"), "x"))
    wait_for_running(strategy, "k")
    # Nothing is ready, so poll() must come straight back with nothing (a blocking read would hang
    # here until the pytest-timeout fails the test).
    assert strategy.poll() == []
    fifo.write_text("go")
    assert wait_for_results(strategy, {"k"})["k"].state == SUCCESS


def test_prefetched_jobs_are_withdrawn_at_shutdown_not_run(tmp_path: Path) -> None:
    """Jobs held ready on the task queue have not started: end() withdraws them (FAILED, with the reason)
    instead of letting the worker run them before its stop message."""
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)  # never written: the first job runs until end() stops it
    s = LimitedParallelism(1, EngineOptions(prefetch=2))
    s.start()
    try:
        s.submit(
            Job("running", ForkCall(jobfns.wait_for_gate, (str(fifo), str(tmp_path / "running"), "x")), title="running")
        )
        for key in ("held_1", "held_2"):
            s.submit(Job(key, ForkCall(jobfns.append, (str(tmp_path / key), "ran")), title=key))
        deadline = time.monotonic() + 30
        while not any(r.key == "running" and r.state == RUNNING for r in s.poll(timeout=0.1)):
            assert time.monotonic() < deadline, "the first job never started"
        assert s.task_queue.qsize() == 2  # handed over at once, waiting for the busy worker: the prefetch
        results = {r.key: r for r in s.end(timeout=0.5)}
        assert results["running"].state == FAILED  # still blocked when the deadline passed: stopped
        for key in ("held_1", "held_2"):
            assert results[key].state == FAILED and "shutting down before it started" in results[key].reason
            assert not (tmp_path / key).exists(), f"{key} ran during shutdown"
    finally:
        s.terminate()


def test_ready_budget_follows_the_pace_of_recent_tasks(tmp_path: Path) -> None:
    """Nothing is held ready until a task has been seen to end; short tasks earn the whole prefetch;
    workers all held by tasks longer than the horizon earn nothing (a task held behind them could
    wait past the scheduler's task_queued_timeout)."""
    s = LimitedParallelism(2, EngineOptions(prefetch=6))
    s.start()
    try:
        assert s.ready_budget(10.0) == 0
        keys = {f"quick{i}" for i in range(4)}
        for key in keys:
            s.submit(fork_job(key, jobfns.ok))
        wait_for_results(s, keys)
        assert s.ready_budget(10.0) == 6
        assert s.ready_budget(0.0) == 0

        fifos = []
        for i in range(2):
            fifo = tmp_path / f"gate{i}"
            os.mkfifo(fifo)
            fifos.append(fifo)
            s.submit(fork_job(f"long{i}", jobfns.wait_for_gate, str(fifo), str(tmp_path / f"long{i}"), "x"))
        wait_for_running(s, "long0", "long1")
        # Both workers are busy; once their tasks have run past the horizon, nothing is worth holding.
        horizon = 0.3
        deadline = time.monotonic() + 30
        while s.ready_budget(horizon) > 0:
            assert time.monotonic() < deadline, "the budget never dropped with every worker held by a long task"
            time.sleep(0.05)
        for fifo in fifos:
            with open(fifo, "w") as gate:
                gate.write("go")
        wait_for_results(s, {"long0", "long1"})
    finally:
        s.end(10)


def test_unlimited_holds_nothing_ready() -> None:
    s = UnlimitedParallelism()
    s.start()
    try:
        s.submit(fork_job("one", jobfns.ok))
        wait_for_results(s, {"one"})
        assert s.ready_budget(10.0) == 0
    finally:
        s.end(10)
