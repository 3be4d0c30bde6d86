"""forklift: a drop-in, Airflow-compatible LocalExecutor.

Set ``[core] executor = forklift.LocalExecutor`` and the scheduler runs its tasks through it.

Data flow (LimitedParallelism, ``[forklift] parallelism = N``)::

    scheduler loop (one thread)              Manager process        worker processes (forked at start)
    ─────────────────────────────            ───────────────        ──────────────────────────────────
    heartbeat()
      trigger_tasks(open slots)
        LocalExecutor._process_workloads ─┐
          running.add(key)   (slot held)  │  lines.LINE.to_job (the Airflow line's adapter)
          strategy.submit(Job)            │
            pending heap (by priority) ───┼──► task_queue ───────► QueuedLocalWorker × N
            ≤ N × prefetch_multiplier on the  (held-ready tasks:        │ runners.run_job(job)
            queue or running at once           the next free worker     │   fork: os.fork() → task process
                                               takes one at once)       │     (Task SDK supervisor, woken
                                                                        │      on its task's exit)
                                                                        │   subprocess: fresh interpreter,
                                                                        │     workload JSON on stdin
                                                                        │ (own process group per task)
      sync()                                                          ▼
        strategy.poll() ◄─── result_queue ◄── Started(key, task_pid)
          reads without blocking          ◄── Finished(key, SUCCESS | FAILED, reason, cause)
          dead worker? → FAILED + replacement
        success()/fail()/change_state()  → event buffer → scheduler (slot released)

    slots_occupied (what the scheduler counts against [core] parallelism): as the scheduler's only
    executor, forklift leaves out the held-ready tasks a worker should take within READY_HORIZON,
    so N workers keep at most N running and a freed worker never waits for the scheduler's loop.

    start(): Task SDK caches and preload_modules filled once, gc.freeze(), N workers forked
    end(): pending and held-ready withdrawn → poison pill per worker → wait ≤ shutdown_timeout
           → on_shutdown=adopt: leave running tasks to their workers (below) → Manager shutdown
           → on_shutdown=stop: terminate(): TERM, then KILL, each task's session and worker

Handover (``handover``): work outlives its scheduler::

    worker ── task started / ended ──► records_dir/<key>.json ◄── read ── next scheduler's
      │  scheduler gone (SIGHUP from the kernel):                           try_adopt_task_instances
      │  no new work; task runs on       records_dir/<key>.owner ◄── claim ─┘  (slot held; its end
      │  unclaimed after orphan_timeout → stop the task                          read via the worker's pidfd)
      └─ outcome written → exit

UnlimitedParallelism (``parallelism = 0``) is the same, but ``submit`` forks one ``LocalWorker`` per
job at once, which runs that job, reports, and exits; there is no task queue.

Modules, engine first (no Airflow import below ``executor``):

- ``strategies``: the engine (UnlimitedParallelism, LimitedParallelism), put together from
  ``pools`` (OneProcessPerJob | QueuedPool: how jobs reach workers), ``channel`` (the Manager and its
  queues), ``ledger`` (each dispatch and what became of it), ``adoption`` (tasks another engine left
  running) and ``lifeline`` (stopping process groups and sessions; dying with the parent);
- ``workers`` (LocalWorker, QueuedLocalWorker), ``runners`` (fork / subprocess, a task's own session),
  ``containment`` (memory limits, OOM score), ``supervisor_wake``, ``handover`` (task records);
- ``jobs`` (Job in; Started, Finished and its Cause out), ``settings`` (configuration rules);
- ``lines`` (the one seam between forklift and Airflow: one module per Airflow line, 3.1 – 3.4 and
  2.10, 2.11), ``timeouts`` (execution_timeout → hard deadline), ``executor`` (the adapter), ``doctor``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["LocalExecutor", "__version__"]

if TYPE_CHECKING:
    from forklift.executor import LocalExecutor


def __getattr__(name: str) -> Any:
    # Imported on first use, so the engine (and its tests) work without Airflow installed.
    if name == "LocalExecutor":
        from forklift.executor import LocalExecutor

        return LocalExecutor
    raise AttributeError(f"module 'forklift' has no attribute {name!r}")
