"""The Airflow 2 adapter without a scheduler: commands are validated, run, and always answered."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import pytest
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.utils.state import TaskInstanceState

import forklift
from forklift.jobs import Command, ForkCall
from forklift.lines import LINE
from forklift.lines.base import PARSING_CONTEXT_DAG_ID, PARSING_CONTEXT_TASK_ID
from forklift.lines.cli_commands import run_command_in_child
from forklift.settings import RunMode
from forklift.strategies import LimitedParallelism, UnlimitedParallelism


def key(task: str = "t") -> TaskInstanceKey:
    return TaskInstanceKey("d", task, "r", 1, -1)


def dispatch(ex: forklift.LocalExecutor, k: TaskInstanceKey, command: list) -> None:
    """What Airflow 2's BaseExecutor._process_tasks does around execute_async."""
    ex.execute_async(key=k, command=command)
    ex.running.add(k)


def wait_for_events(ex: forklift.LocalExecutor, keys: list[TaskInstanceKey], timeout: float = 120) -> dict:
    """Sync until every key has left ``running``; return their events (the buffer is read once)."""
    deadline = time.monotonic() + timeout
    while any(k in ex.running for k in keys) and time.monotonic() < deadline:
        ex.sync()
        time.sleep(0.05)
    return ex.get_event_buffer()


def wait_for_event(ex: forklift.LocalExecutor, k: TaskInstanceKey, timeout: float = 120):
    return wait_for_events(ex, [k], timeout)[k]


@pytest.mark.parametrize(
    "command",
    [
        ["bash", "-c", "touch {marker}"],
        ["airflow", "dags", "delete", "d"],
        "airflow tasks run d t r",
        [],
        ["airflow", "tasks"],
    ],
)
def test_only_airflow_tasks_run_is_accepted(tmp_path: Path, command) -> None:
    marker = tmp_path / "ran"
    if isinstance(command, list):
        command = [part.format(marker=marker) for part in command]
    ex = forklift.LocalExecutor(parallelism=1)
    ex.start()
    try:
        dispatch(ex, key(), command)
        state, info = wait_for_event(ex, key())
    finally:
        ex.end()
    assert state == TaskInstanceState.FAILED
    assert "forklift runs only ['airflow', 'tasks', 'run', …] commands" in info
    assert not marker.exists(), "a refused command must never run"
    assert not ex.running


def test_command_to_job_by_mode() -> None:
    cmd = ["airflow", "tasks", "run", "my_dag", "my_task", "run_1", "--local", "--subdir", "DAGS_FOLDER/x.py"]
    fork = LINE.to_job(key(), cmd, mode=RunMode.FORK)
    sub = LINE.to_job(key(), cmd, mode=RunMode.SUBPROCESS)
    assert isinstance(fork.runnable, ForkCall) and fork.runnable.func is run_command_in_child
    assert isinstance(sub.runnable, Command) and list(sub.runnable.argv) == cmd
    assert fork.env == {PARSING_CONTEXT_DAG_ID: "my_dag", PARSING_CONTEXT_TASK_ID: "my_task"}


def test_missing_airflow_executable_fails_the_task_not_the_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Airflow 2.11's own LocalExecutor loses every worker here and the DAG run hangs forever."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no `airflow` anywhere
    monkeypatch.setenv("AIRFLOW__FORKLIFT__RUN_MODE", "subprocess")
    ex = forklift.LocalExecutor(parallelism=2)
    ex.start()
    try:
        assert isinstance(ex.strategy, LimitedParallelism)
        workers = set(ex.strategy.worker_pids())
        for name in ("a", "b", "c"):
            dispatch(ex, key(name), ["airflow", "tasks", "run", "d", name, "r"])
        events = wait_for_events(ex, [key(n) for n in ("a", "b", "c")], timeout=30)
        assert set(ex.strategy.worker_pids()) == workers, "workers must survive"
    finally:
        ex.end()
    for state, info in events.values():
        assert state == TaskInstanceState.FAILED
        assert info == "could not start 'airflow': No such file or directory"


def test_fork_mode_runs_the_cli_in_process_and_reports_its_failure() -> None:
    ex = forklift.LocalExecutor(parallelism=1)
    ex.start()
    try:
        # A well-formed command for a DAG that does not exist: Airflow's CLI runs, and fails.
        dispatch(ex, key(), ["airflow", "tasks", "run", "no_such_dag", "t", "r", "--local"])
        state, info = wait_for_event(ex, key())
    finally:
        ex.end()
    assert state == TaskInstanceState.FAILED
    assert info.startswith("exited with code ")


def test_parallelism_zero_is_unlimited_on_airflow_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "0")
    ex = forklift.LocalExecutor()
    assert ex.parallelism == 0 and ex.settings.unlimited
    ex.start()
    try:
        assert isinstance(ex.strategy, UnlimitedParallelism)
    finally:
        ex.end()


def test_airflow_2_refuses_sqlite_for_forklift_as_for_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.exceptions import AirflowConfigException
    from airflow.executors import executor_loader
    from airflow.executors.executor_loader import ExecutorLoader

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "forklift.LocalExecutor")
    for name, value in vars(executor_loader).items():
        if name.startswith("_") and not name.startswith("__") and isinstance(value, (dict, list)):
            value.clear()
    ExecutorLoader.validate_database_executor_compatibility.cache_clear()
    with pytest.raises(AirflowConfigException, match="cannot use SQLite with the LocalExecutor"):
        ExecutorLoader.load_executor("forklift.LocalExecutor")


def test_revoke_task_on_airflow_2(tmp_path: Path) -> None:
    """task_queued_timeout on Airflow 2: revoke_task and cleanup_stuck_queued_tasks withdraw the work."""
    from types import SimpleNamespace

    ex = forklift.LocalExecutor(parallelism=1)
    ex.start()
    try:
        gate = tmp_path / "gate"
        gate.touch()
        blocker = ["airflow", "tasks", "run", "d", "blocker", "r"]
        waiting = ["airflow", "tasks", "run", "d", "waiting", "r"]
        # Both commands are valid; neither gets to run its DAG: the blocker holds the only worker
        # (its process waits on the gate), the second waits in forklift until it is revoked.
        ex.strategy.submit(
            dataclasses.replace(
                LINE.to_job(key("blocker"), blocker, mode=RunMode.SUBPROCESS),
                runnable=Command(
                    [sys.executable, "-c", f"import os, time\nwhile os.path.exists({str(gate)!r}): time.sleep(0.01)"]
                ),
            )
        )
        ex.running.add(key("blocker"))
        dispatch(ex, key("waiting"), waiting)
        # Held ready for the busy worker (prefetch_multiplier 4), not started by any worker.
        held = ex.strategy._dispatched.get(key("waiting"))
        assert key("waiting") in ex.strategy.pending_keys or (held is not None and held.worker_pid is None)
        assert (
            len(ex.cleanup_stuck_queued_tasks([SimpleNamespace(key=key("waiting"))])) == 1
        )  # one line per task, for Airflow's log
        assert key("waiting") not in ex.running and key("waiting") not in ex.strategy.pending_keys
        assert not ex.strategy.waiting(key("waiting")) and ex.strategy.counters["revokes"] == 1
        ex.revoke_task(ti=SimpleNamespace(key=key("blocker")))
        assert not ex.running and ex.strategy.running_keys == set() and ex.strategy.counters["revokes"] == 2
    finally:
        gate.unlink(missing_ok=True)
        ex.end()
    assert ex.get_event_buffer() == {}  # revoked work reports nothing


def test_executor_config_memory_limit_reaches_the_job_and_a_bad_one_fails_only_that_task(tmp_path: Path) -> None:
    cmd = ["airflow", "tasks", "run", "d", "t", "r", "--local"]
    job = LINE.to_job(key(), cmd, mode=RunMode.FORK, memory_limit=2048)
    assert job.memory_limit_mib == 2048
    ex = forklift.LocalExecutor(parallelism=1)
    ex.start()
    try:
        ex.execute_async(key=key(), command=cmd, executor_config={"forklift": {"memory_limit_mb": "lots"}})
        ex.running.add(key())
        state, info = wait_for_event(ex, key())
    finally:
        ex.end()
    assert state == TaskInstanceState.FAILED
    assert "executor_config['forklift']['memory_limit_mb'] = 'lots' is invalid" in info
    assert not ex.running


def test_a_key_that_is_not_a_task_instance_key_is_dispatched_not_refused(tmp_path: Path) -> None:
    """The execution_timeout lookup reads key.dag_id; a plain tuple has none. That only means "no
    deadline": the command runs (it fails here, with no DAG to run, but by running)."""
    assert LINE.execution_timeout(("d", "t", "r", 1, -1)) is None
    plain = ("d", "t", "r", 1, -1)
    ex = forklift.LocalExecutor(parallelism=1)
    ex.start()
    try:
        dispatch(ex, plain, ["airflow", "tasks", "run", "d", "t", "r"])  # type: ignore[arg-type]
        assert not ex._refused, "dispatched, not refused"
        state, info = wait_for_event(ex, plain)  # type: ignore[arg-type]
    finally:
        ex.end()
    assert state == TaskInstanceState.FAILED and "dag_id" not in str(info), info


def test_work_refused_just_before_end_leaves_no_key_in_running() -> None:
    """Airflow 2's trigger_tasks adds the key to running after execute_async returns; when end() comes
    before the next sync(), the refusal must still be reported and the key freed."""
    ex = forklift.LocalExecutor(parallelism=1)
    ex.start()
    dispatch(ex, key("refused"), ["bash", "-c", "true"])
    assert key("refused") in ex.running
    ex.end()
    state, info = ex.get_event_buffer()[key("refused")]
    assert state == TaskInstanceState.FAILED and "commands" in info
    assert not ex.running
