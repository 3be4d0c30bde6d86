"""End-to-end benchmark: real Airflow, forklift against Airflow's own LocalExecutor, run by run.

One deployment (metadata DB, and on Airflow 3 an api-server and a dag-processor) serves every run.
Each run starts a scheduler with one executor configuration, triggers ``bench_python`` and then
``bench_bash`` (50 independent no-op tasks each), waits for both, and stops the scheduler. The
executors alternate run by run (A B A B …). Metrics come from the metadata DB, and memory from the
scheduler's process tree, sampled while the DAG runs:

- wall: the DAG run's ``queued_at`` (trigger) → ``end_date``;
- queued→running: each task instance's ``start_date - queued_dttm``; duration: ``end_date - start_date``;
- peak concurrency: most task instances between start and end at once;
- peak PSS: the most the scheduler and all its descendants held at once (PSS splits shared pages
  fairly between processes, so forked workers are not counted twice).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from forklift.testing.measure import peak_overlap, percentile
from forklift.testing.stack import AirflowStack

DAGS = Path(__file__).resolve().parent / "dags"
DAG_IDS = {"python": "bench_python", "bash": "bench_bash"}


@dataclass(frozen=True)
class Config:
    executor: str  # "forklift" or "airflow"
    parallelism: int

    @property
    def label(self) -> str:
        return f"{self.executor} p={self.parallelism}"

    def env(self, major: int, extra: dict[str, str]) -> dict[str, str]:
        if self.executor == "airflow":
            return {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": str(self.parallelism)}
        # forklift's workers come from [forklift] parallelism. [core] parallelism caps everything the
        # scheduler queues; it is set as forklift's README says (≥ workers × prefetch_multiplier), and
        # left at Airflow's default 32 for parallelism 0.
        env = {"AIRFLOW__CORE__EXECUTOR": "forklift.LocalExecutor", "AIRFLOW__FORKLIFT__PARALLELISM": str(self.parallelism)}
        env.update(extra)
        if self.parallelism:
            multiplier = int(env.get("AIRFLOW__FORKLIFT__PREFETCH_MULTIPLIER", "4"))
            env["AIRFLOW__CORE__PARALLELISM"] = str(max(32, self.parallelism * multiplier))
        return env


@dataclass
class RunResult:
    config: str
    executor: str
    parallelism: int
    dag: str
    run: int
    state: str
    wall_s: float
    q2r_p50_s: float
    q2r_p95_s: float
    duration_p50_s: float
    peak_concurrency: int
    peak_pss_mb: float
    tasks: int
    succeeded: int


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreePss:
    """Samples the PSS of a process and its descendants in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                pids = [self.pid, *(p.pid for p in root.children(recursive=True))]
            except psutil.Error:
                pids = []
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(pid) for pid in pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> TreePss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _wait_for_scheduler(stack: AirflowStack, before: set[int], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(stack.scheduler_jobs_running()) - before:
            return
        if not stack.is_running("scheduler"):
            raise RuntimeError(f"scheduler exited while starting:\n{stack.log_tail('scheduler')}")
        time.sleep(0.2)
    raise RuntimeError(f"scheduler did not start its loop within {timeout:.0f} s:\n{stack.log_tail('scheduler')}")


def run_dag(stack: AirflowStack, config: Config, dag: str, run: int, scheduler_pid: int) -> RunResult:
    dag_id = DAG_IDS[dag]
    run_id = f"bench_{config.executor}_p{config.parallelism}_{dag}_{run}_{time.time_ns()}"
    with TreePss(scheduler_pid) as pss:
        stack.trigger(dag_id, run_id, via_api=True)
        stack.wait_for_run(dag_id, run_id, timeout=600)
    info = stack.dag_run_info(dag_id, run_id)
    rows = stack.task_instances(dag_id, run_id)
    waits = [r.queued_to_start for r in rows if r.queued_to_start is not None]
    durations = [r.duration for r in rows if r.duration is not None]
    spans = [(r.start, r.end) for r in rows if r.start and r.end]
    return RunResult(
        config=config.label,
        executor=config.executor,
        parallelism=config.parallelism,
        dag=dag,
        run=run,
        state=info["state"],
        wall_s=(info["end"] - info["queued_at"]).total_seconds(),
        q2r_p50_s=statistics.median(waits) if waits else float("nan"),
        q2r_p95_s=percentile(waits, 0.95),
        duration_p50_s=statistics.median(durations) if durations else float("nan"),
        peak_concurrency=peak_overlap(spans) if spans else 0,
        peak_pss_mb=pss.peak_kb / 1024,
        tasks=len(rows),
        succeeded=sum(r.state == "success" for r in rows),
    )


def run_session(stack: AirflowStack, config: Config, run: int, dags: list[str], extra_env: dict[str, str]) -> list[RunResult]:
    before = set(stack.scheduler_jobs_running())
    stack.start_scheduler(config.env(stack.major, extra_env))
    try:
        _wait_for_scheduler(stack, before)
        pid = stack._components["scheduler"].proc.pid
        return [run_dag(stack, config, dag, run, pid) for dag in dags]
    finally:
        stack.stop_component("scheduler")


def run(
    stack: AirflowStack,
    configs: list[Config],
    runs: int,
    dags: list[str],
    extra_env: dict[str, str],
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    for dag_id in DAG_IDS.values():
        stack.wait_for_dag(dag_id)
    results: list[dict[str, Any]] = []
    for run_no in range(1, runs + 1):
        for config in configs:  # the configs list alternates forklift and Airflow's own
            t0 = time.monotonic()
            session = run_session(stack, config, run_no, dags, extra_env)
            results += [asdict(r) for r in session]
            walls = ", ".join(f"{r.dag} {r.wall_s:.1f} s" for r in session)
            progress(f"  run {run_no}/{runs} {config.label:<18} {walls}  ({time.monotonic() - t0:.0f} s)")
    return results
