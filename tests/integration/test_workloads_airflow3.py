"""Callback and connection-test workloads run through forklift on a real Airflow 3 deployment
(on the lines that have them)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from forklift.lines import LINE
from forklift.testing.stack import AirflowStack

pytestmark = pytest.mark.integration


@pytest.fixture
def scheduler(stack: AirflowStack) -> Iterator[AirflowStack]:
    # A callback runs by import path: its module must be importable by the scheduler (3.2 imports it
    # in the executor's process; later lines in a supervisor that loads the bundle), as a user's would be.
    dags = Path(__file__).resolve().parents[1] / "dags"
    stack.start_scheduler({"AIRFLOW__FORKLIFT__PARALLELISM": "2", "PYTHONPATH": str(dags)})
    try:
        yield stack
    finally:
        code = stack.stop_component("scheduler")
        assert stack.stopped_cleanly("scheduler", code), stack.log_tail("scheduler")


def _connection_test(stack: AirflowStack, conn_id: str, path: str, timeout: float = 120) -> dict:
    status, queued = stack.api(
        "POST",
        "/api/v2/connections/enqueue-test",
        {"connection_id": conn_id, "conn_type": "fs", "extra": json.dumps({"path": path})},
    )
    assert status == 202, queued
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, result = stack.api(
            "GET", "/api/v2/connections/enqueue-test", headers={"Airflow-Connection-Test-Token": queued["token"]}
        )
        assert status == 200, result
        if result["state"] in ("success", "failed"):
            return result
        time.sleep(0.5)
    raise AssertionError(f"connection test {conn_id} still {result['state']} after {timeout} s")


# Each line runs the kinds it has: callbacks from 3.2, connection tests from 3.3.
if "connection test" in LINE.workload_kinds:

    @pytest.mark.timeout(300)
    def test_connection_tests_run_through_forklift(scheduler: AirflowStack) -> None:
        ok = _connection_test(scheduler, "fl_fs_ok", "/tmp")
        bad = _connection_test(scheduler, "fl_fs_bad", "/nonexistent/forklift")
        assert (ok["state"], ok["result_message"]) == ("success", "Path /tmp is existing.")
        assert bad["state"] == "failed" and "/nonexistent/forklift" in bad["result_message"]
        log = scheduler.log_tail("scheduler", chars=10**7)
        assert "forklift started: LimitedParallelism" in log
        assert "Connection test finished" in log


if "callback" in LINE.workload_kinds:

    @pytest.mark.smoke
    @pytest.mark.timeout(300)
    def test_deadline_callback_runs_through_forklift(scheduler: AirflowStack, marker_dir: Path) -> None:
        scheduler.wait_for_dag("forklift_deadline")
        scheduler.trigger("forklift_deadline", "deadline_1")
        assert scheduler.wait_for_run("forklift_deadline", "deadline_1", timeout=180) == "success"
        marker = marker_dir / "deadline.txt"
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert marker.read_text().startswith("deadline callback ran in pid ")
        deadline = time.monotonic() + 60
        log = ""
        while "completed successfully" not in log and time.monotonic() < deadline:
            log = scheduler.log_tail("scheduler", chars=10**7)
            time.sleep(0.5)
        assert "Received executor event with state success for callback" in log
