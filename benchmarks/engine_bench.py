"""Engine benchmarks: forklift's process engine and executor, without a scheduler or a DB.

- dispatch latency: work handed to forklift → the task's process is running (it stamps
  ``time.monotonic()``, which is one clock for all processes on Linux);
- subprocess dispatch against the bare cost of starting the same interpreter with the same imports;
- throughput of trivial work items through each strategy;
- ``LocalExecutor.sync()`` reading 1,000 results;
- CPU per no-op task of the whole engine (caller, Manager, workers, per-task leaders), which is what
  forklift adds to each task's own cost (Airflow's LocalExecutor runs the supervisor in its worker);
- USS of an idle worker forked from a process that has Airflow loaded, as a scheduler has.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from forklift.jobs import RUNNING, SUCCESS, Command, Finished, ForkCall, Job
from forklift.ledger import Dispatch
from forklift.strategies import EngineOptions, make_strategy
from forklift.testing.measure import percentile

#: What a task process needs before the task can run, per Airflow line (its Task SDK or CLI entry).
TASK_IMPORTS = {3: "airflow.sdk.execution_time.supervisor", 2: "airflow.cli.commands.task_command"}


#: Airflow 2 prints deprecation warnings on import; the same for both sides of the comparison.
QUIET = {"PYTHONWARNINGS": "ignore"}


def stamp(path: str) -> int:
    Path(path).write_text(repr(time.monotonic()))
    return 0


def noop() -> int:
    return 0


def _wait_done(strategy: Any, keys: set[Any], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while keys:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(keys)} job(s) did not finish within {timeout:.0f} s")
        for result in strategy.poll(timeout=0.05):
            if result.state != RUNNING:
                if result.state != "success":
                    raise RuntimeError(f"benchmark job {result.key} failed: {result.info}")
                keys.discard(result.key)


def dispatch_latency(mode: str, samples: int, task_import: str) -> list[float]:
    """Seconds from submit() to the task's first instruction, one job at a time (no queueing)."""
    latencies = []
    with tempfile.TemporaryDirectory() as tmp:
        strategy = make_strategy(2, EngineOptions(prefetch=0))
        strategy.start()
        try:
            for i in range(samples):
                out = os.path.join(tmp, f"stamp-{i}")
                if mode == "fork":
                    runnable: Any = ForkCall(stamp, (out,))
                else:
                    code = f"import {task_import}, sys, time; open(sys.argv[1], 'w').write(repr(time.monotonic()))"
                    runnable = Command([sys.executable, "-c", code, out])
                t0 = time.monotonic()
                strategy.submit(Job(key=i, runnable=runnable, title=f"bench {i}", env=QUIET))
                _wait_done(strategy, {i})
                latencies.append(float(Path(out).read_text()) - t0)
        finally:
            strategy.end(timeout=10)
    return latencies


def bare_interpreter_start(samples: int, task_import: str) -> list[float]:
    """Seconds from Popen to the same first instruction, with nothing of forklift's in between."""
    code = f"import {task_import}, sys, time; open(sys.argv[1], 'w').write(repr(time.monotonic()))"
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(samples):
            path = os.path.join(tmp, f"bare-{i}")
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-c", code, path], check=True, env={**os.environ, **QUIET})
            out.append(float(Path(path).read_text()) - t0)
    return out


def throughput(parallelism: int, mode: str, items: int) -> float:
    """Trivial work items per second, all submitted at once."""
    strategy = make_strategy(parallelism, EngineOptions(prefetch=parallelism))
    strategy.start()
    try:
        t0 = time.monotonic()
        for i in range(items):
            runnable: Any = ForkCall(noop, ()) if mode == "fork" else Command(["true"])
            strategy.submit(Job(key=i, runnable=runnable, title=f"bench {i}"))
        _wait_done(strategy, set(range(items)), timeout=600)
        return items / (time.monotonic() - t0)
    finally:
        strategy.end(timeout=10)


def _tree_cpu_seconds() -> float:
    """User + system CPU of this process and of every child it has reaped (with theirs)."""
    import resource

    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime


def engine_cpu_per_task(items: int) -> float:
    """CPU seconds per no-op fork-mode task, counted over the whole engine: this process, the result
    queue's Manager, the workers and each task's leader (forked from its worker, in a session of its
    own). end() reaps them all, so RUSAGE_CHILDREN holds their CPU once it returns."""
    before = _tree_cpu_seconds()
    strategy = make_strategy(4, EngineOptions(prefetch=4))
    strategy.start()
    try:
        for i in range(items):
            strategy.submit(Job(key=i, runnable=ForkCall(noop, ()), title=f"bench {i}"))
        _wait_done(strategy, set(range(items)), timeout=600)
    finally:
        strategy.end(timeout=10)
    return (_tree_cpu_seconds() - before) / items


def sync_drain(results: int, repeats: int) -> list[float]:
    """Seconds ``LocalExecutor.sync()`` takes to read ``results`` finished tasks and report them."""
    from airflow.models.taskinstancekey import TaskInstanceKey

    import forklift

    times = []
    for _ in range(repeats):
        executor = forklift.LocalExecutor(parallelism=1)
        executor.start()
        try:
            strategy = executor.strategy
            assert strategy is not None
            raws = []
            for i in range(results):
                key = TaskInstanceKey("bench", f"task_{i}", "run", 1, -1)
                dispatch = Dispatch(Job(key=key, runnable=ForkCall(noop, ()), title="bench"))
                strategy._dispatched[key] = dispatch
                executor.running.add(key)
                raws.append(Finished(key, SUCCESS, "", 0, dispatch.seq))
            for raw in raws:  # as the workers would have put them
                strategy.result_queue.put(raw)
            t0 = time.perf_counter()
            executor.sync()
            took = time.perf_counter() - t0
            reported = len(executor.get_event_buffer())
            if reported != results:
                raise RuntimeError(f"sync() reported {reported} of {results} results")
            times.append(took)
        finally:
            executor.end()
    return times


def idle_worker_uss(parallelism: int) -> list[float]:
    """MB of memory unique to each idle QueuedLocalWorker (what forking it really cost)."""
    import airflow.models  # noqa: F401 - load what a scheduler has loaded before it forks workers

    strategy = make_strategy(parallelism, EngineOptions(prefetch=0))
    strategy.start()
    try:
        # A worker is idle once it waits on the task queue: let each settle, then read it.
        time.sleep(1.0)
        return [psutil.Process(pid).memory_full_info().uss / 2**20 for pid in strategy.worker_pids()]
    finally:
        strategy.end(timeout=10)


def run(major: int, quick: bool = False) -> dict[str, Any]:
    import airflow.models  # noqa: F401 - fork from a process as big as a scheduler, as forklift does

    task_import = TASK_IMPORTS[3 if major >= 3 else 2]
    n_fork, n_sub = (30, 3) if quick else (200, 10)
    fork = dispatch_latency("fork", n_fork, task_import)
    # Interleave bare and forklift subprocess samples so load changes hit both alike.
    sub: list[float] = []
    bare: list[float] = []
    for _ in range(n_sub):
        bare += bare_interpreter_start(1, task_import)
        sub += dispatch_latency("subprocess", 1, task_import)
    items = 100 if quick else 400
    tput = {
        "limited_4_fork": throughput(4, "fork", items),
        "unlimited_fork": throughput(0, "fork", items // 2),
        "limited_4_subprocess": throughput(4, "subprocess", items // 2),
        "unlimited_subprocess": throughput(0, "subprocess", items // 4),
    }
    drains = sync_drain(1000, 3 if quick else 5)
    cpu_per_task = engine_cpu_per_task(items)
    uss = idle_worker_uss(4)
    return {
        "task_import": task_import,
        "fork_dispatch_s": {"p50": statistics.median(fork), "p95": percentile(fork, 0.95), "n": len(fork)},
        "subprocess_dispatch_s": {"p50": statistics.median(sub), "p95": percentile(sub, 0.95), "n": len(sub)},
        "bare_interpreter_s": {"p50": statistics.median(bare), "p95": percentile(bare, 0.95), "n": len(bare)},
        "subprocess_over_bare": statistics.median(sub) / statistics.median(bare),
        "throughput_per_s": tput,
        "sync_drain_1000_s": {"median": statistics.median(drains), "min": min(drains), "max": max(drains)},
        "engine_cpu_per_task_s": cpu_per_task,
        "idle_worker_uss_mb": {"median": statistics.median(uss), "max": max(uss), "n": len(uss)},
    }
