"""Multi-executor configuration: a task routed to forklift with ``executor=`` runs through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from forklift.testing.ancestry import read_ancestry, under_forklift_worker

pytestmark = [pytest.mark.integration, pytest.mark.smoke]

DAGS = Path(__file__).resolve().parent.parent / "dags_routing"


@pytest.mark.timeout(420)
def test_operator_executor_argument_routes_to_forklift(stack_factory, tmp_path: Path) -> None:
    # Airflow's own LocalExecutor is the default; forklift is second, under an alias. Every component
    # gets the list, because the DAG is checked against it when it is parsed.
    stack = stack_factory(
        DAGS,
        {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor,forklift:forklift.LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "4"},
    )
    stack.wait_for_dag("forklift_routing")
    stack.start_scheduler({"AIRFLOW__FORKLIFT__PARALLELISM": "2"})
    try:
        stack.trigger("forklift_routing", "routing_1", {"out_dir": str(tmp_path)})
        state = stack.wait_for_run("forklift_routing", "routing_1", timeout=300)
    finally:
        code = stack.stop_component("scheduler")
        assert stack.stopped_cleanly("scheduler", code), stack.log_tail("scheduler")
    states = {r.task_id: r.state for r in stack.task_instances("forklift_routing", "routing_1")}
    assert state == "success", f"{states}\n{stack.log_tail('scheduler')}"
    assert {r.task_id: r.state for r in stack.task_instances("forklift_routing", "routing_1")} == {
        "on_default": "success",
        "on_forklift": "success",
    }
    forklift_ancestry = read_ancestry(tmp_path, "on_forklift")
    default_ancestry = read_ancestry(tmp_path, "on_default")
    # Process titles name the executor whose worker the task ran under.
    assert under_forklift_worker(forklift_ancestry), forklift_ancestry
    assert not under_forklift_worker(default_ancestry), default_ancestry
    assert any(line.startswith("airflow worker -- LocalExecutor") for line in default_ancestry), default_ancestry
    log = stack.log_tail("scheduler", chars=10**7)
    assert "forklift started: LimitedParallelism, parallelism 2" in log
