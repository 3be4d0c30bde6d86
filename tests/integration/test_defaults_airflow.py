"""At the defaults (``[core] parallelism`` only) on a real scheduler: forklift holds tasks ready beyond
the running ones, and never more than ``[core] parallelism`` run at once. Both are read from the
scheduler's own records (queued, start and end times in the metadata DB)."""

from __future__ import annotations

import time

import pytest

from forklift.testing.measure import peak_overlap
from forklift.testing.stack import AirflowStack

pytestmark = pytest.mark.integration

DAG_ID = "forklift_defaults"
CAP = 2


@pytest.mark.timeout(360)
def test_defaults_hold_work_ready_and_keep_core_parallelism(stack: AirflowStack) -> None:
    run_id = f"defaults_{time.monotonic_ns()}"
    stack.start_scheduler({"AIRFLOW__CORE__PARALLELISM": str(CAP)})
    try:
        stack.wait_for_dag(DAG_ID)
        stack.trigger(DAG_ID, run_id)
        state = stack.wait_for_run(DAG_ID, run_id, timeout=300)
    finally:
        exit_code = stack.stop_component("scheduler")
    assert stack.stopped_cleanly("scheduler", exit_code), stack.log_tail("scheduler")
    log = stack.log_tail("scheduler", chars=10**7)
    said = f"forklift: [core] parallelism = {CAP}: {CAP} workers run at most {CAP} tasks at once; up to {CAP * 3} more are held ready"
    assert said in log, "the start-up log does not say what the defaults gave"

    rows = stack.task_instances(DAG_ID, run_id)
    assert state == "success" and {r.state for r in rows} == {"success"} and len(rows) == 16
    running = peak_overlap([(r.start, r.end) for r in rows])
    in_flight = peak_overlap([(r.queued, r.end) for r in rows])
    print(f"\nat most {running} ran at once; at most {in_flight} were queued or running at once")
    assert running <= CAP, f"{running} tasks ran at once with [core] parallelism = {CAP}"
    assert in_flight > CAP, f"no task was held ready: at most {in_flight} were queued or running at once"
