"""End-to-end benchmark: real Airflow, forklift against Airflow's own LocalExecutor, run by run.

One deployment (metadata DB, and on Airflow 3 an api-server and a dag-processor) serves every run.
Each run starts a scheduler with one executor configuration, triggers ``bench_python`` and then
``bench_bash`` (50 independent no-op tasks each), waits for both, and stops the scheduler. The
executors alternate run by run (A B A B …). Metrics come from the metadata DB, and memory from the
scheduler's process tree, sampled while the DAG runs:

- wall: the DAG run's ``queued_at`` (trigger) → ``end_date``;
- queued→running: each task instance's ``start_date - queued_dttm``; duration: ``end_date - start_date``;
- peak concurrency: most task instances between start and end at once;
- slot gap: from a task's end to the start of the task that took its slot (the i-th end frees the
  slot of the (i + p)-th start), i.e. how long a freed worker sat idle;
- the wave, from the scheduler's log: end → read (a task's ``end_date`` → the scheduler's "Received
  executor event" line for it, which frees its slot in the same loop), read → queued (the i-th read →
  the (i + p)-th ``queued_dttm``; negative when that task was already queued, held ready), and
  queued → running above;
- peak PSS: the most the scheduler and all its descendants held at once (PSS splits shared pages
  fairly between processes, so forked workers are not counted twice).
"""

from __future__ import annotations

import math
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from forklift.testing.measure import peak_overlap, percentile
from forklift.testing.stack import AirflowStack

DAGS = Path(__file__).resolve().parent / "dags"
DAG_IDS = {
    "python": "bench_python",
    "bash": "bench_bash",
    "python1000": "bench_python_1000",
    "mapped1000": "bench_mapped_1000",
}


#: forklift-idle's [forklift] idle_timeout; the footprint rows measure idle PSS after this and a margin.
IDLE_TIMEOUT = 10


@dataclass(frozen=True)
class Config:
    executor: str  # "forklift", "forklift-defaults", "forklift-idle" or "airflow"
    parallelism: int

    @property
    def label(self) -> str:
        return f"{self.executor} p={self.parallelism}"

    def env(self, major: int, extra: dict[str, str]) -> dict[str, str]:
        if self.executor == "airflow":
            return {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": str(self.parallelism)}
        if self.executor == "forklift-defaults":
            # What a user has who only names the executor: [core] parallelism, the same value Airflow's
            # own gets, and nothing in [forklift] (but what --forklift-env asks for).
            return {
                "AIRFLOW__CORE__EXECUTOR": "forklift.LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                **extra,
            }
        # forklift's workers come from [forklift] parallelism. [core] parallelism caps everything the
        # scheduler queues; it is set as forklift's README says (≥ workers × prefetch_multiplier), and
        # left at Airflow's default 32 for parallelism 0.
        env = {
            "AIRFLOW__CORE__EXECUTOR": "forklift.LocalExecutor",
            "AIRFLOW__FORKLIFT__PARALLELISM": str(self.parallelism),
        }
        if self.executor == "forklift-idle":
            # The pool shrinks when idle: every worker may leave after IDLE_TIMEOUT s without work.
            env["AIRFLOW__FORKLIFT__IDLE_TIMEOUT"] = str(IDLE_TIMEOUT)
            env["AIRFLOW__FORKLIFT__MIN_WORKERS"] = "0"
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
    slot_gap_p50_s: float
    end_to_read_p50_s: float
    read_to_queued_p50_s: float
    peak_pss_mb: float
    tasks: int
    succeeded: int
    tasks_per_s: float = float("nan")
    #: CPU seconds per task: the scheduler's whole tree (executor, workers, tasks), and the api-server's.
    sched_cpu_s_per_task: float = float("nan")
    api_cpu_s_per_task: float = float("nan")
    #: CPU seconds per task of the scheduler's own process alone (its loop: DB queries, queueing, reading
    #: events), without the executor's workers and the tasks below it.
    loop_cpu_s_per_task: float = float("nan")
    #: --footprint: the scheduler tree's PSS once the run is over and idle_timeout (+ margin) has passed.
    idle_pss_mb: float = float("nan")


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_cpu_s(pid: int | None) -> float:
    """CPU seconds a process and its live descendants used, including their reaped children's."""
    if pid is None:
        return float("nan")
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return float("nan")
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def own_cpu_s(pid: int | None) -> float:
    """CPU seconds of the process itself, not its children."""
    if pid is None:
        return float("nan")
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return t.user + t.system


def tree_pss_mb(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        pids = [pid, *(p.pid for p in root.children(recursive=True))]
    except psutil.Error:
        return float("nan")
    return sum(_pss_kb(p) for p in pids) / 1024


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


class ApiProfile:
    """``py-spy record`` of the api-server (and its workers) for one DAG run, as collapsed stacks."""

    def __init__(self, api_pid: int | None, out: Path | None) -> None:
        self.api_pid, self.out = api_pid, out
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ApiProfile:
        if self.api_pid is not None and self.out is not None:
            py_spy = Path(sys.executable).with_name("py-spy")
            self._proc = subprocess.Popen(
                [
                    str(py_spy),
                    "record",
                    "--pid",
                    str(self.api_pid),
                    "--subprocesses",
                    "--nonblocking",
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(self.out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            self._proc.wait(timeout=60)


def run_dag(
    stack: AirflowStack,
    config: Config,
    dag: str,
    run: int,
    scheduler_pid: int,
    *,
    idle_after: float = 0,
    profile_dir: Path | None = None,
) -> RunResult:
    dag_id = DAG_IDS[dag]
    run_id = f"bench_{config.executor}_p{config.parallelism}_{dag}_{run}_{time.time_ns()}"
    api_pid = stack.process("api-server").pid if stack.major >= 3 else None
    profile = profile_dir / f"api-{config.executor}-p{config.parallelism}-{dag}-{run}.txt" if profile_dir else None
    cpu0, api0, loop0 = tree_cpu_s(scheduler_pid), tree_cpu_s(api_pid), own_cpu_s(scheduler_pid)
    with TreePss(scheduler_pid) as pss, ApiProfile(api_pid, profile):
        stack.trigger(dag_id, run_id, via_api=True)
        stack.wait_for_run(dag_id, run_id, timeout=3600)
    cpu1, api1, loop1 = tree_cpu_s(scheduler_pid), tree_cpu_s(api_pid), own_cpu_s(scheduler_pid)
    idle_pss = float("nan")
    if idle_after:
        # Workers up, no tasks: as a deployment sits between runs. Every configuration waits as long.
        time.sleep(idle_after)
        samples = []
        for _ in range(6):
            samples.append(tree_pss_mb(scheduler_pid))
            time.sleep(0.5)
        idle_pss = statistics.median(samples)
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
        slot_gap_p50_s=_slot_gap_p50(spans, config.parallelism),
        **_wave(stack, rows, dag_id, run_id, config.parallelism),
        peak_pss_mb=pss.peak_kb / 1024,
        tasks=len(rows),
        succeeded=sum(r.state == "success" for r in rows),
        tasks_per_s=len(rows) / wall if (wall := (info["end"] - info["queued_at"]).total_seconds()) > 0 else math.nan,
        sched_cpu_s_per_task=(cpu1 - cpu0) / len(rows) if rows else math.nan,
        api_cpu_s_per_task=(api1 - api0) / len(rows) if rows else math.nan,
        loop_cpu_s_per_task=(loop1 - loop0) / len(rows) if rows else math.nan,
        idle_pss_mb=idle_pss,
    )


_EVENT = re.compile(
    r"^\[?(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?)\]?.*Received executor event "
    r"with state success for task instance .*?TaskInstanceKey\(dag_id='(?P<dag>[^']+)', task_id='(?P<task>[^']+)', "
    r"run_id='(?P<run>[^']+)'"
)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _wave(stack: AirflowStack, rows: list[Any], dag_id: str, run_id: str, parallelism: int) -> dict[str, float]:
    """end → read and read → queued medians (see the module docstring); NaN where they cannot be told."""
    reads: dict[str, datetime] = {}
    for line in stack.log_tail("scheduler", chars=10**8).splitlines():
        m = _EVENT.match(line)
        if m and m["dag"] == dag_id and m["run"] == run_id:
            stamp = datetime.fromisoformat(m["ts"].replace(",", ".").replace("Z", "+00:00"))
            reads[m["task"]] = stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    nan = float("nan")
    ends = [(reads[r.task_id] - _utc(r.end)).total_seconds() for r in rows if r.task_id in reads and r.end]
    read_times = sorted(reads.values())
    queued = sorted(_utc(r.queued) for r in rows if r.queued)
    later = [
        (queued[i + parallelism] - read_times[i]).total_seconds()
        for i in range(min(len(read_times), len(queued) - parallelism))
    ]
    return {
        "end_to_read_p50_s": statistics.median(ends) if ends else nan,
        "read_to_queued_p50_s": statistics.median(later) if parallelism > 0 and later else nan,
    }


def _slot_gap_p50(spans: list[tuple[Any, Any]], parallelism: int) -> float:
    """Median time from a task's end to the start of the task that took its slot (NaN at parallelism 0)."""
    if parallelism <= 0 or len(spans) <= parallelism:
        return float("nan")
    starts = sorted(start for start, _ in spans)
    ends = sorted(end for _, end in spans)
    gaps = [(starts[i + parallelism] - ends[i]).total_seconds() for i in range(len(starts) - parallelism)]
    return statistics.median(gaps)


def run_session(
    stack: AirflowStack,
    config: Config,
    run: int,
    dags: list[str],
    extra_env: dict[str, str],
    *,
    idle_after: float = 0,
    profile_dir: Path | None = None,
) -> list[RunResult]:
    before = set(stack.scheduler_jobs_running())
    stack.start_scheduler(config.env(stack.major, extra_env))
    try:
        _wait_for_scheduler(stack, before)
        pid = stack.process("scheduler").pid
        return [run_dag(stack, config, dag, run, pid, idle_after=idle_after, profile_dir=profile_dir) for dag in dags]
    finally:
        stack.stop_component("scheduler")


def run(
    stack: AirflowStack,
    configs: list[Config],
    runs: int,
    dags: list[str],
    extra_env: dict[str, str],
    progress: Callable[[str], None] = print,
    *,
    idle_after: float = 0,
    profile_dir: Path | None = None,
) -> list[dict[str, Any]]:
    for dag in dags:
        stack.wait_for_dag(DAG_IDS[dag])
    # One run that is not recorded: the api-server builds its request models (pydantic schemas) on first
    # use, several CPU seconds that would otherwise be charged to whichever executor runs first. Its
    # profile shows them (GenerateSchema, in --profile-api), and they made forklift look twice as costly
    # to the api-server as Airflow's own when forklift ran first.
    t0 = time.monotonic()
    run_session(stack, configs[0], 0, dags[:1], extra_env)
    progress(f"  warm-up run (not recorded) {configs[0].label:<18} ({time.monotonic() - t0:.0f} s)")
    results: list[dict[str, Any]] = []
    for run_no in range(1, runs + 1):
        for config in configs:  # the configs list alternates forklift and Airflow's own
            t0 = time.monotonic()
            session = run_session(
                stack, config, run_no, dags, extra_env, idle_after=idle_after, profile_dir=profile_dir
            )
            results += [asdict(r) for r in session]
            walls = ", ".join(f"{r.dag} {r.wall_s:.1f} s" for r in session)
            progress(f"  run {run_no}/{runs} {config.label:<18} {walls}  ({time.monotonic() - t0:.0f} s)")
    return results
