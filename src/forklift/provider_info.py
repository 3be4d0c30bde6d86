"""forklift as an Airflow provider: what ``airflow providers list`` / ``executors`` and ``airflow config`` know.

Registered through the ``apache_airflow_provider`` entry point. :data:`CONFIG_OPTIONS` is the one
declaration of forklift's ``[forklift]`` settings: Airflow's ``airflow config list`` /
``get-value`` read it from here, the configuration reference is generated from it, and a test keeps
it equal to :class:`forklift.settings.Settings`' defaults. This module imports nothing from Airflow,
so providers discovery stays cheap.
"""

from __future__ import annotations

from typing import Any

from forklift import __version__

PACKAGE_NAME = "airflow-forklift"

#: ``[forklift]`` options in Airflow's provider-config format. A ``None`` default means "unset":
#: forklift then falls back as the description says.
CONFIG_OPTIONS: dict[str, dict[str, Any]] = {
    "parallelism": {
        "description": (
            "0: one LocalWorker process per task, no limit of forklift's own (UnlimitedParallelism). "
            "N > 0: exactly N QueuedLocalWorker processes started with the scheduler (LimitedParallelism). "
            "Unset, [core] parallelism is used; Airflow 3 refuses [core] parallelism = 0, hence this key."
        ),
        "type": "integer",
        "example": "8",
        "default": None,
    },
    "run_mode": {
        "description": (
            "fork: each task is forked from the worker's warm process (fast). subprocess: each task runs in "
            "a fresh interpreter (slower, picks up code changes). Unset, it follows "
            "[core] execute_tasks_new_python_interpreter."
        ),
        "type": "string",
        "example": "subprocess",
        "default": None,
    },
    "prefetch_multiplier": {
        "description": (
            "As Celery's worker_prefetch_multiplier: with N workers forklift accepts N times this many tasks; "
            "those beyond N wait on its task queue and start the moment a worker frees. 1: a task is queued "
            "only when a worker is free. As the scheduler's only executor, forklift does not count the held "
            "tasks against [core] parallelism (they do not run); beside other executors, keep [core] "
            "parallelism at least N times this."
        ),
        "type": "integer",
        "example": "1",
        "default": "4",
    },
    "shutdown_timeout": {
        "description": (
            "Seconds the executor's end() waits for running tasks when the scheduler stops; then they are "
            "stopped (SIGTERM, SIGKILL after kill_grace). A second SIGTERM/SIGINT stops the wait at once."
        ),
        "type": "float",
        "example": "120",
        "default": "30",
    },
    "on_shutdown": {
        "description": (
            "What happens to tasks still running when the scheduler stops and shutdown_timeout has passed. "
            "adopt: they run on, and the next scheduler on this machine adopts them (nothing reruns); a "
            "scheduler that dies (SIGKILL, crash, OOM) leaves them running the same way. stop: they are "
            "stopped (SIGTERM, SIGKILL after kill_grace), and Airflow resets and reruns them."
        ),
        "type": "string",
        "example": "stop",
        "default": "adopt",
    },
    "orphan_timeout": {
        "description": (
            "Seconds a task whose scheduler is gone runs on before forklift stops it (with its whole "
            "session), unless a scheduler adopts it first. 0: stop such tasks at once. Unset: "
            "[scheduler] scheduler_health_check_threshold + 2 x [scheduler] orphaned_tasks_check_interval, "
            "at least 120 (630 at Airflow's defaults)."
        ),
        "type": "float",
        "example": "900",
        "default": None,
    },
    "records_dir": {
        "description": (
            "Directory (made 0700) where running tasks leave their records (0600, no secrets) for the next "
            "scheduler to adopt them. Every scheduler of one deployment on a machine must share it. "
            "Unset: $AIRFLOW_HOME/forklift/tasks."
        ),
        "type": "string",
        "example": "/var/lib/airflow/forklift-tasks",
        "default": None,
    },
    "task_memory_limit": {
        "description": (
            "Memory limit in MiB for each task's whole process tree (its PSS: pages shared with other "
            "processes are split between them), sampled every 0.05-1 s (more often the nearer the limit); over it, forklift stops the task "
            "(SIGTERM, SIGKILL after kill_grace) and fails it with 'exceeded its memory limit'. 0: no limit. "
            "A task may set its own: executor_config={'forklift': {'memory_limit_mb': 2048}}."
        ),
        "type": "integer",
        "example": "4096",
        "default": "0",
    },
    "task_oom_score_adj": {
        "description": (
            "oom_score_adj each task process raises itself to, so that when the machine runs out of memory "
            "the kernel's OOM killer takes a task before the scheduler or forklift's workers. 500: a task "
            "goes before a scheduler using up to half the machine's memory, and among tasks the biggest "
            "still goes first. 0: leave it alone."
        ),
        "type": "integer",
        "example": "1000",
        "default": "500",
    },
    "kill_grace": {
        "description": "Seconds between SIGTERM and SIGKILL when forklift stops a task's process group.",
        "type": "float",
        "example": "10",
        "default": "5",
    },
    "timeout_grace": {
        "description": (
            "Seconds past a task's execution_timeout before forklift stops it from outside, for tasks the "
            "in-task alarm cannot reach (a blocking C call, SIGALRM ignored). -1 turns this off."
        ),
        "type": "float",
        "example": "-1",
        "default": "30",
    },
    "max_tasks_per_child": {
        "description": "Replace a QueuedLocalWorker after it has run this many tasks. 0: never.",
        "type": "integer",
        "example": "1000",
        "default": "0",
    },
    "max_memory_per_child": {
        "description": "Replace a QueuedLocalWorker whose RSS is over this many MiB, checked between tasks. 0: never.",
        "type": "integer",
        "example": "2048",
        "default": "0",
    },
    "max_memory_growth_per_child": {
        "description": (
            "Replace a QueuedLocalWorker whose RSS has grown more than this many MiB over its size just after "
            "it started, checked between tasks: a guard against leaks relative to the scheduler's own size, "
            "beside max_memory_per_child's absolute one. 0: never."
        ),
        "type": "integer",
        "example": "512",
        "default": "0",
    },
    "idle_timeout": {
        "description": (
            "Seconds a QueuedLocalWorker may sit idle before it leaves the pool (LimitedParallelism), down to "
            "min_workers; a new one is forked from the scheduler as soon as work needs it. 0: never, the pool "
            "stays at parallelism workers from start (the default)."
        ),
        "type": "float",
        "example": "300",
        "default": "0",
    },
    "min_workers": {
        "description": (
            "With idle_timeout set: how many QueuedLocalWorkers stay however idle the pool is (0 to parallelism)."
        ),
        "type": "integer",
        "example": "2",
        "default": "0",
    },
    "preload_modules": {
        "description": (
            "Comma-separated modules imported once in the scheduler before workers fork (fork mode), so that "
            "every task inherits them instead of importing them itself. The Task SDK and the standard "
            "provider's operators are always preloaded on Airflow 3."
        ),
        "type": "string",
        "example": "pandas, my_company.operators",
        "default": "",
    },
    "wake_supervisor": {
        "description": (
            "Airflow 3: wake the Task SDK supervisor as soon as its task process exits, instead of after up "
            "to [workers] min_heartbeat_interval."
        ),
        "type": "boolean",
        "example": "False",
        "default": "True",
    },
}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": PACKAGE_NAME,
        "name": "forklift",
        "description": "A drop-in, Airflow-compatible LocalExecutor: `forklift.LocalExecutor`.",
        "versions": [__version__],
        "executors": ["forklift.LocalExecutor"],
        # Airflow 3.2+ expects a provider that ships an executor to say where its CLI commands are
        # (otherwise it warns and imports the executor to ask it); forklift adds none to `airflow`.
        "cli": ["forklift.provider_info.get_cli_commands"],
        "config": {
            "forklift": {
                "description": "forklift.LocalExecutor: workers, run mode, prefetch, shutdown and fault handling.",
                "options": {key: {**option, "version_added": "0.1.0"} for key, option in CONFIG_OPTIONS.items()},
            }
        },
    }


def get_cli_commands() -> list[Any]:
    """forklift's commands for the ``airflow`` CLI: none (its own CLI is the ``forklift`` command)."""
    return []
