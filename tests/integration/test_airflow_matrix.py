"""The DAG matrix on a real scheduler: {parallelism 0, 4} × {fork, subprocess}.

Final task states come from the metadata DB; concurrency comes from the tasks' own clocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from forklift.testing.measure import peak_overlap
from forklift.testing.stack import AirflowStack, StackError

pytestmark = [pytest.mark.integration, pytest.mark.smoke]

DAG_ID = "forklift_matrix"
SPAN_TASKS = 20


@pytest.mark.timeout(420)
@pytest.mark.parametrize("mode", ["fork", "subprocess"])
@pytest.mark.parametrize("parallelism", [0, 4])
def test_dag_matrix(stack: AirflowStack, tmp_path, parallelism: int, mode: str) -> None:
    run_id = f"matrix_p{parallelism}_{mode}"
    out = tmp_path / "out"
    out.mkdir()
    stack.start_scheduler({"AIRFLOW__FORKLIFT__PARALLELISM": str(parallelism), "AIRFLOW__FORKLIFT__RUN_MODE": mode})
    try:
        stack.trigger(DAG_ID, run_id, {"out_dir": str(out)})
        # While tasks run, no process's command line or title may carry a task token (a JWT, "eyJ…").
        exposed: set[str] = set()
        while stack.dag_run_state(DAG_ID, run_id) not in ("success", "failed"):
            exposed |= {line for line in _cmdlines(stack) if "eyJ" in line}
            if not stack.is_running("scheduler"):
                break
        state = stack.wait_for_run(DAG_ID, run_id, timeout=360)
        assert not exposed, f"task tokens visible in the process list: {sorted(exposed)[:3]}"
        workers = _forklift_workers(stack)  # idle now, and still there until the scheduler stops
    finally:
        scheduler_tree = _scheduler_tree(stack)
        exit_code = stack.stop_component("scheduler")

    log = stack.log_tail("scheduler", chars=10**7)
    assert not [line for line in log.splitlines() if "forklift" in line and "eyJ" in line], "a token in forklift's log"
    strategy = "UnlimitedParallelism" if parallelism == 0 else "LimitedParallelism"
    assert f"forklift started: {strategy}, parallelism {parallelism}, run mode {mode}" in log

    tis = {ti.task_id: ti.state for ti in stack.task_instances(DAG_ID, run_id)}
    expected = {f"span_{i:02d}": "success" for i in range(SPAN_TASKS)}
    expected.update({"writes_file": "success", "bash": "success", "fails": "failed"})
    assert tis == expected
    assert state == "failed"  # because one task fails on purpose, and only because of it
    assert (out / "written.txt").read_text() == "written by writes_file\n"
    assert (out / "bash.txt").read_text().startswith("bash ran in ")

    peak = peak_concurrency(out / "spans")
    if parallelism == 4:
        assert peak <= 4, f"{peak} tasks ran at once with parallelism 4"
        # Backpressure, from the scheduler's own records: a task is queued only when one of forklift's
        # slots is free (4 workers × the default prefetch_multiplier 4), so never more than 16 of the 23
        # were queued-or-running at once; Airflow's own LocalExecutor queues all of them.
        rows = stack.task_instances(DAG_ID, run_id)
        held = peak_overlap([(r.queued, r.end) for r in rows])
        assert held <= 16, f"{held} tasks were queued or running at once with 16 slots"
        assert workers == 4, f"expected exactly 4 QueuedLocalWorker processes, saw {workers}"
    else:
        # No limit of forklift's own: the scheduler could queue (and forklift start) far more than 4 at
        # once. (Read from the scheduler's records: how many overlapped on the tasks' own clocks
        # depends on how fast 2 cores start 23 interpreters.)
        rows = stack.task_instances(DAG_ID, run_id)
        held = peak_overlap([(r.queued, r.end) for r in rows])
        assert held > 4, f"parallelism 0 should not limit concurrency, but at most {held} were queued or running"

    # The scheduler shut down cleanly (SIGTERM → executor.end()) and left nothing of forklift's behind.
    assert stack.stopped_cleanly("scheduler", exit_code), stack.log_tail("scheduler")
    alive = [p for p in scheduler_tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline() for p in alive]


def peak_concurrency(spans_dir: Path) -> int:
    """How many tasks ran at once, from the start/end times the tasks recorded themselves."""
    spans = [json.loads(path.read_text()) for path in spans_dir.glob("*.json")]
    return peak_overlap((span["start"], span["end"]) for span in spans)


def _scheduler_tree(stack: AirflowStack) -> list[psutil.Process]:
    try:
        return psutil.Process(stack.process("scheduler").pid).children(recursive=True)
    except (StackError, psutil.NoSuchProcess):
        return []


def _cmdlines(stack: AirflowStack) -> list[str]:
    lines = []
    for proc in _scheduler_tree(stack):
        try:
            lines.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
    return lines


def _forklift_workers(stack: AirflowStack) -> int:
    """Count QueuedLocalWorker/LocalWorker processes under the scheduler by their process title."""
    count = 0
    for proc in _scheduler_tree(stack):
        try:
            if " ".join(proc.cmdline()).startswith("airflow worker -- forklift"):
                count += 1
        except psutil.Error:
            continue
    return count
