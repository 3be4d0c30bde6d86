"""The Airflow adapter without a metadata DB: flags, config refusal, workload translation, slots."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from airflow.utils.state import TaskInstanceState

import forklift
from forklift.jobs import Command, ForkCall, Job
from forklift.lines import LINE
from forklift.lines.base import PARSING_CONTEXT_DAG_ID, PARSING_CONTEXT_TASK_ID
from forklift.lines.task_sdk import TaskSdkLine, run_workload_in_child
from forklift.settings import ConfigError, RunMode
from forklift.strategies import LimitedParallelism, UnlimitedParallelism

from support import wait_for_path

TOKEN = "jwt-secret-token-value"


assert isinstance(LINE, TaskSdkLine)


def key_of(workload: Any) -> Any:
    return LINE.workload_key(workload)


def make_workload(task_id: str = "t1", priority: int = 1, executor_config: dict | None = None) -> Any:
    return LINE.task_workload("d", task_id, priority_weight=priority, token=TOKEN, executor_config=executor_config)


#: What each line's scheduler may hand forklift besides tasks (callbacks from 3.2, connection tests from 3.3),
#: by the name of its workload class.
KINDS = {"3.1": set(), "3.2": {"ExecuteCallback"}, "3.3": {"ExecuteCallback", "TestConnection"}}
KINDS["3.4"] = KINDS["3.3"]
NAMES = {"callback": "ExecuteCallback", "connection test": "TestConnection"}


def test_the_line_declares_the_kinds_its_scheduler_hands_out() -> None:
    assert {NAMES[k] for k in LINE.workload_kinds - {"task"}} == KINDS[LINE.name]


def test_every_workload_kind_the_line_has_is_accepted_and_no_flag_is_deprecated() -> None:
    """Asked through the line's own BaseExecutor, in a fresh interpreter so the class is built under the
    warnings filter: forklift declares what the line has, and nothing the line deprecated."""
    code = textwrap.dedent(
        """
        import json, logging, warnings
        warnings.simplefilter("always")
        records = []
        logging.getLogger("airflow.executors.base_executor").addHandler(
            type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import forklift
            from airflow.executors.base_executor import BaseExecutor
            cls = forklift.LocalExecutor
            accepted = []
            import airflow.executors.workloads as w
            for name in ("ExecuteCallback", "TestConnection"):
                if hasattr(w, name):
                    types = getattr(cls, "supported_workload_types", None)
                    if types is not None:
                        ok = any(t.value == name for t in types)
                    else:
                        ok = getattr(cls, {"ExecuteCallback": "supports_callbacks", "TestConnection": "supports_connection_test"}[name], False)
                    if ok:
                        accepted.append(name)
            ex = cls(parallelism=1)
        said = [str(x.message) for x in caught if "deprecat" in str(x.message).lower()] + [
            m for m in records if "deprecat" in m.lower()]
        print(json.dumps({"accepted": sorted(accepted), "local": cls.is_local and cls.serve_logs,
                          "deprecations": [m for m in said if "LocalExecutor" in m or "supports_" in m
                                           or "queued_" in m or "trigger_tasks" in m]}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"accepted": sorted(KINDS[LINE.name]), "local": True, "deprecations": []}, got


def test_importable_the_way_airflow_loads_it() -> None:
    from airflow.executors.executor_loader import ExecutorLoader

    cls, _ = ExecutorLoader.import_executor_cls(
        __import__("airflow.executors.executor_utils", fromlist=["ExecutorName"]).ExecutorName("forklift.LocalExecutor")
    )
    assert cls is forklift.LocalExecutor


@pytest.mark.parametrize(
    ("raw", "said"), [("-1", "= -1 is out of range"), ("lots", "= 'lots' is not a whole number"), ("", "is empty")]
)
def test_bad_parallelism_refused_at_construction(monkeypatch: pytest.MonkeyPatch, raw: str, said: str) -> None:
    monkeypatch.setenv("AIRFLOW__FORKLIFT__PARALLELISM", raw)
    with pytest.raises(ConfigError, match=r"\[forklift\] parallelism") as err:
        forklift.LocalExecutor()
    assert said in str(err.value), str(err.value)


def test_constructed_the_way_a_team_executor_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__FORKLIFT__PARALLELISM", "2")
    monkeypatch.setenv("AIRFLOW__TEAM_A___FORKLIFT__PARALLELISM", "3")
    team_a = forklift.LocalExecutor(team_name="team_a")
    assert team_a.team_name == "team_a" and team_a.settings.parallelism == 3  # the team's own value
    assert forklift.LocalExecutor(team_name="team_b").settings.parallelism == 2  # the deployment's


def test_unlimited_offers_core_parallelism_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__FORKLIFT__PARALLELISM", "0")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "7")
    ex = forklift.LocalExecutor()
    assert ex.settings.parallelism == 0 and ex.parallelism == 7
    ex.start()
    try:
        assert isinstance(ex.strategy, UnlimitedParallelism)
        assert ex.result_queue is not None
    finally:
        ex.end()
    assert ex.strategy is None


def test_core_parallelism_zero_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__FORKLIFT__PARALLELISM", "0")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "0")
    with pytest.raises(ConfigError, match=r"\[core\] parallelism = 0 .*\[forklift\] parallelism = 0"):
        forklift.LocalExecutor()


def test_limited_from_config_and_run_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__FORKLIFT__PARALLELISM", "3")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTE_TASKS_NEW_PYTHON_INTERPRETER", "True")
    ex = forklift.LocalExecutor()
    assert (ex.settings.parallelism, ex.settings.run_mode) == (3, RunMode.SUBPROCESS)
    assert ex.parallelism == 3 * 4  # the slots the scheduler sees: [forklift] prefetch_multiplier 4 by default
    ex.start()
    try:
        assert isinstance(ex.strategy, LimitedParallelism) and len(ex.strategy.worker_pids()) == 3
    finally:
        ex.end()


class TestWorkloadToJob:
    def test_subprocess_keeps_the_token_off_the_command_line(self) -> None:
        job = LINE.to_job(make_workload(), mode=RunMode.SUBPROCESS, server="http://127.0.0.1:1/execution/")
        assert isinstance(job.runnable, Command)
        assert job.runnable.argv[:3] == [sys.executable, "-m", "forklift.execute_workload"]
        assert not any(TOKEN in arg for arg in job.runnable.argv)
        assert TOKEN not in repr(job) and TOKEN not in job.title and not any(TOKEN in v for v in job.env.values())
        assert job.runnable.secret_input is not None and TOKEN.encode() in job.runnable.secret_input
        assert job.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:1/execution/"

    def test_fork_runs_airflows_supervisor(self) -> None:
        job = LINE.to_job(make_workload(priority=9), mode=RunMode.FORK, server="http://x/execution/")
        assert isinstance(job.runnable, ForkCall) and job.runnable.func is run_workload_in_child
        assert job.priority == 9 and job.title == "d.t1 r try 1"
        assert job.env == {PARSING_CONTEXT_DAG_ID: "d", PARSING_CONTEXT_TASK_ID: "t1"}


def _gated_job(workload, **_: object) -> Job:
    """A job that runs until its gate file is removed: lets the test hold a slot as long as it likes."""
    gate = GATES[workload.ti.task_id]
    code = "import os, sys, time\nopen(sys.argv[1] + '.started', 'w').close()\nwhile os.path.exists(sys.argv[1]): time.sleep(0.01)"
    return Job(key_of(workload), Command([sys.executable, "-c", code, gate]), title=workload.ti.task_id)


GATES: dict[str, str] = {}


def queue_gated(ex: forklift.LocalExecutor, tmp_path: Path, workloads: list[Any]) -> None:
    """Queue each workload as a job that runs until its gate file (named after its task) is removed."""
    for w in workloads:
        (tmp_path / w.ti.task_id).touch()
        GATES[w.ti.task_id] = str(tmp_path / w.ti.task_id)
        ex.queue_workload(w, session=None)


def test_slot_held_until_result(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A dispatched workload counts in ``running`` until its result is read: the scheduler's backpressure."""
    monkeypatch.setattr(type(LINE), "to_job", lambda self, workload, **kw: _gated_job(workload, **kw))
    monkeypatch.setenv("AIRFLOW__FORKLIFT__PREFETCH_MULTIPLIER", "1")  # strict: a slot is a running task
    ex = forklift.LocalExecutor(parallelism=2)
    ex.start()
    try:
        workloads = [make_workload(f"t{i}") for i in range(3)]
        queue_gated(ex, tmp_path, workloads)
        ex.heartbeat()
        assert len(ex.running) == 2 and len(ex.queued_tasks) == 1
        assert ex.slots_available <= 0  # the scheduler will queue nothing more here
        ex.heartbeat()  # nothing finished: nothing more is dispatched
        assert len(ex.running) == 2 and len(ex.queued_tasks) == 1
        first = next(iter(ex.running))
        (tmp_path / first.task_id).unlink()
        deadline = time.monotonic() + 30
        while first in ex.running and time.monotonic() < deadline:
            ex.sync()
            time.sleep(0.02)
        assert ex.get_event_buffer()[first][0] == TaskInstanceState.SUCCESS
        ex.heartbeat()
        assert len(ex.running) == 2 and not ex.queued_tasks
    finally:
        for gate in tmp_path.iterdir():
            gate.unlink()
        ex.end()
    assert not ex.running


@pytest.mark.forklift(parallelism=2, prefetch_multiplier=2)
def test_prefetched_work_starts_without_waiting_for_the_scheduler(
    forklift_executor, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """With prefetch_multiplier 2 and 2 workers the scheduler sees 4 slots; the 2 tasks held ready start
    the moment a worker frees, with no heartbeat in between, and one still waiting can be revoked unrun.
    (Uses forklift's own pytest fixture, which also fails the test if a process outlives the executor.)"""
    monkeypatch.setattr(type(LINE), "to_job", lambda self, workload, **kw: _gated_job(workload, **kw))
    ex = forklift_executor.executor
    assert ex.parallelism == 4
    try:
        workloads = [make_workload(f"t{i}") for i in range(5)]
        queue_gated(ex, tmp_path, workloads)
        ex.heartbeat()
        assert len(ex.running) == 4 and len(ex.queued_tasks) == 1 and ex.slots_available <= 0
        started = [tmp_path / f"t{i}.started" for i in range(4)]
        wait_for_path(started[0])
        wait_for_path(started[1])
        assert not started[2].exists() and not started[3].exists()  # only 2 workers
        # A task held ready is withdrawn without ever starting.
        ex.revoke_task(ti=workloads[3].ti)
        assert key_of(workloads[3]) not in ex.running
        (tmp_path / "t0").unlink()  # t0 ends; no heartbeat, no sync: t2 must start on its own
        wait_for_path(started[2])
        (tmp_path / "t1").unlink()
        deadline = time.monotonic() + 30
        while len(ex.running) > 1 and time.monotonic() < deadline:
            ex.sync()
            time.sleep(0.02)
        assert not started[3].exists(), "a revoked task ran"
    finally:
        for gate in tmp_path.iterdir():
            gate.unlink()


def test_a_key_queued_again_while_its_run_is_live_is_held_not_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """As when a deferred task resumes before its first run's result is read: the second dispatch waits
    for the first to end, the key keeps its slot in between (Airflow reads that as "re-queued", and does
    not fail the task), and each run gets its own event."""
    monkeypatch.setattr(type(LINE), "to_job", lambda self, workload, **kw: _gated_job(workload, **kw))
    ex = forklift.LocalExecutor(parallelism=2)
    ex.start()
    try:
        first = make_workload("resumed")
        gate = tmp_path / "resumed"
        gate.touch()
        GATES["resumed"] = str(gate)
        ex.queue_workload(first, session=None)
        ex.heartbeat()
        wait_for_path(tmp_path / "resumed.started")
        again = first.model_copy()  # same TaskInstanceKey
        second_gate = tmp_path / "resumed-again"
        second_gate.touch()
        GATES["resumed"] = str(second_gate)  # the job is built when the second copy is dispatched
        ex.queue_workload(again, session=None)
        ex.heartbeat()
        assert key_of(first) in ex.running and not ex.get_event_buffer(), "no refusal, no FAILED event"
        gate.unlink()  # the first run ends; the held one starts and waits on its own gate
        events: list = []
        deadline = time.monotonic() + 30
        while not events and time.monotonic() < deadline:
            ex.sync()
            events = list(ex.get_event_buffer().values())
            time.sleep(0.02)
        assert [state for state, _ in events] == [TaskInstanceState.SUCCESS]
        assert key_of(first) in ex.running, "the held run holds the key's slot once the first is reported"
        wait_for_path(tmp_path / "resumed-again.started")
        second_gate.unlink()
        deadline = time.monotonic() + 30
        while key_of(first) in ex.running and time.monotonic() < deadline:
            ex.sync()
            time.sleep(0.02)
        assert key_of(first) not in ex.running and ex.get_event_buffer()[key_of(first)][0] == TaskInstanceState.SUCCESS
    finally:
        for path in (gate, tmp_path / "resumed-again"):
            path.unlink(missing_ok=True)
        ex.end()


def test_executor_config_memory_limit_reaches_the_job_and_a_bad_one_fails_only_that_task() -> None:
    good = make_workload("limited")
    good.ti.executor_config = {"forklift": {"memory_limit_mb": 1024}}
    job = LINE.to_job(good, mode=RunMode.FORK, server="http://x/", memory_limit=1024)
    assert job.memory_limit_mib == 1024 and LINE.executor_config(good) == {"forklift": {"memory_limit_mb": 1024}}
    assert "executor_config" not in good.model_dump_json(), "it never reaches the task's JSON"
    bad = make_workload("bad")
    bad.ti.executor_config = {"forklift": {"memory_limit_mb": -5}}
    ex = forklift.LocalExecutor(parallelism=1)
    ex.start()
    try:
        ex.queue_workload(bad, session=None)
        ex.heartbeat()
        deadline = time.monotonic() + 30
        while key_of(bad) in ex.running and time.monotonic() < deadline:
            ex.sync()
            time.sleep(0.02)
        state, info = ex.get_event_buffer()[key_of(bad)]
    finally:
        ex.end()
    assert state == TaskInstanceState.FAILED and "memory_limit_mb'] = -5 is invalid" in info


@pytest.mark.parametrize(
    ("executors", "held_uncounted"),
    [("forklift.LocalExecutor", True), ("LocalExecutor,forklift.LocalExecutor", False)],
)
def test_defaults_hold_tasks_ready_without_counting_them_against_core_parallelism(
    monkeypatch: pytest.MonkeyPatch, tmp_path, executors: str, held_uncounted: bool
) -> None:
    """``[core] parallelism = 2`` alone: 2 workers, and (as the scheduler's only executor, once tasks are
    seen to be short) up to 6 more held ready that the scheduler does not count against its cap of 2.
    Beside another executor, everything counts. Either way only 2 tasks run at once."""
    monkeypatch.setattr(type(LINE), "to_job", lambda self, workload, **kw: _gated_job(workload, **kw))
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "2")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executors)
    ex = forklift.LocalExecutor()
    assert ex.settings.parallelism == 2 and ex.parallelism == 8  # 2 workers × prefetch_multiplier 4
    ex.start()
    try:
        # Nothing is held ready before a task has been seen to end: it could be a long one.
        first = [make_workload(f"warm{i}") for i in range(2)]
        queue_gated(ex, tmp_path, first)
        ex.heartbeat()
        assert ex.slots_occupied == 2, "held ready before any task was seen to end"
        for w in first:
            wait_for_path(tmp_path / f"{w.ti.task_id}.started")
            (tmp_path / w.ti.task_id).unlink()
        deadline = time.monotonic() + 30
        while ex.running and time.monotonic() < deadline:
            ex.sync()
            time.sleep(0.02)
        assert not ex.running

        workloads = [make_workload(f"t{i}") for i in range(8)]
        queue_gated(ex, tmp_path, workloads)
        ex.heartbeat()
        assert len(ex.running) == 8
        # What the scheduler subtracts from [core] parallelism: 2 (the cap is reached) when the 6 held
        # ready are uncounted, 8 when everything counts.
        assert ex.slots_occupied == (2 if held_uncounted else 8)
        assert ex.slots_available == 0, "the executor's own 8 slots are full whatever the scheduler's cap counts"
        started = [tmp_path / f"t{i}.started" for i in range(8)]
        wait_for_path(started[0])
        wait_for_path(started[1])
        ex.sync()
        assert sum(p.exists() for p in started) == 2, "more tasks ran than [core] parallelism"
    finally:
        for gate in tmp_path.iterdir():
            gate.unlink()
        ex.end()


def make_callback() -> Any:
    from airflow.executors.workloads.base import BundleInfo
    from airflow.executors.workloads.callback import CallbackDTO, ExecuteCallback

    dto = CallbackDTO(id=str(uuid.uuid4()), fetch_method="import_path", data={"path": "os.getcwd", "kwargs": {}})
    return ExecuteCallback(
        callback=dto, dag_rel_path="d.py", token=TOKEN, log_path=None, bundle_info=BundleInfo(name="dags-folder")
    )


if "ExecuteCallback" in KINDS[LINE.name]:  # 3.1 has no callbacks: nothing to report for them there

    def test_a_callback_reports_running_then_its_end_and_holds_its_slot_throughout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """As Airflow's own executor does: RUNNING when it starts (the scheduler moves the callback on),
        then success; the key stays in running, its slot held, until the end is read."""
        from airflow.utils.state import CallbackState

        gate = tmp_path / "callback-gate"
        gate.touch()
        code = "import os, time\nwhile os.path.exists(os.environ['GATE']): time.sleep(0.01)"

        def gated(self: object, workload: Any, **_: object) -> Job:
            return Job(key_of(workload), Command([sys.executable, "-c", code]), title="cb", env={"GATE": str(gate)})

        monkeypatch.setattr(type(LINE), "to_job", gated)
        callback = make_callback()
        key = key_of(callback)
        ex = forklift.LocalExecutor(parallelism=1)
        ex.start()
        try:
            ex.queue_workload(callback, session=None)
            ex.heartbeat()
            deadline = time.monotonic() + 30
            while key not in ex.event_buffer and time.monotonic() < deadline:
                ex.sync()
                time.sleep(0.02)
            state, _ = ex.get_event_buffer()[key]
            assert state == CallbackState.RUNNING
            assert key in ex.running, "a running callback keeps its slot"
            gate.unlink()
            while key in ex.running and time.monotonic() < deadline:
                ex.sync()
                time.sleep(0.02)
            assert ex.get_event_buffer()[key][0] == CallbackState.SUCCESS
        finally:
            gate.unlink(missing_ok=True)
            ex.end()
