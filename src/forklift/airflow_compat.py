"""Everything that differs between Airflow lines lives here, and only here.

The executor asks this module three things: how to read configuration, what parallelism to hand
to Airflow's ``BaseExecutor``, and how to turn what the scheduler gives it (a Task SDK *workload* on
Airflow 3) into an engine :class:`~forklift.jobs.Job`.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from airflow import __version__ as AIRFLOW_VERSION
from airflow.configuration import conf
from packaging.version import Version

from forklift.jobs import Command, ForkCall, Job
from forklift.settings import ConfigError, Lookup, RunMode

if TYPE_CHECKING:
    from airflow.executors.workloads import ExecutorWorkload

AIRFLOW_V3 = Version(Version(AIRFLOW_VERSION).base_version) >= Version("3.0")

#: Environment Airflow uses to tell a task process which DAG/task it is parsing for
#: (``get_parsing_context()``), so dynamic DAG files can load just that part.
PARSING_CONTEXT_DAG_ID = "_AIRFLOW_PARSING_CONTEXT_DAG_ID"
PARSING_CONTEXT_TASK_ID = "_AIRFLOW_PARSING_CONTEXT_TASK_ID"

#: Callbacks finish work already under way, so they go before tasks (as Airflow's own ordering does).
CALLBACK_PRIORITY = sys.maxsize


def config_lookup(team_name: str | None = None) -> Lookup:
    """A ``lookup(section, key)`` over Airflow's configuration.

    For a team's executor, the team's own value comes first, then the deployment's. Airflow 3 takes
    team values only from ``AIRFLOW__<TEAM>___<SECTION>__<KEY>`` environment variables, and its
    team-aware ``conf.get`` would answer a built-in default rather than the deployment's value.
    """

    def lookup(section: str, key: str) -> str | None:
        if team_name:
            team_value = os.environ.get(f"AIRFLOW__{team_name.upper()}___{section.upper()}__{key.upper()}")
            if team_value is not None:
                return team_value
        value = conf.get(section, key, fallback=None)
        return None if value is None else str(value)

    return lookup


def base_parallelism(forklift_parallelism: int, lookup: Lookup) -> int:
    """The parallelism ``BaseExecutor`` gets, which sets the slots the scheduler sees.

    Airflow 3's ``BaseExecutor`` refuses 0, so for forklift's "unlimited" (0) the executor offers
    as many slots as ``[core] parallelism``: the scheduler never queues more than that in total,
    so forklift adds no limit of its own.
    """
    if forklift_parallelism > 0:
        return forklift_parallelism
    raw = lookup("core", "parallelism") or "32"
    try:
        core = int(raw)
    except ValueError:
        raise ConfigError(f"[core] parallelism = {raw!r} is not a whole number; set it to a positive number.") from None
    if core <= 0:
        raise ConfigError(
            f"[core] parallelism = {core} would let Airflow {AIRFLOW_VERSION}'s scheduler queue no task; set "
            "[core] parallelism to the most tasks Airflow may run at once, and [forklift] parallelism = 0 "
            "for one process per task."
        )
    return core


def execution_api_url(executor_conf: Any) -> str:
    from airflow.executors.base_executor import get_execution_api_server_url

    return get_execution_api_server_url(executor_conf)


def workload_to_job(workload: ExecutorWorkload, *, mode: RunMode, server: str) -> Job:
    """An Airflow 3 workload (task, callback or connection test) as an engine job."""
    from airflow.executors.workloads import ExecuteTask

    env: dict[str, str] = {}
    if isinstance(workload, ExecuteTask):
        ti = workload.ti
        title = f"{ti.dag_id}.{ti.task_id} {ti.run_id} try {ti.try_number}"
        if ti.map_index is not None and ti.map_index >= 0:
            title += f" map {ti.map_index}"
        priority = int(ti.priority_weight or 0)
        env = {PARSING_CONTEXT_DAG_ID: ti.dag_id, PARSING_CONTEXT_TASK_ID: ti.task_id}
    else:
        title = workload.display_name
        priority = CALLBACK_PRIORITY

    if mode is RunMode.FORK:
        runnable: ForkCall | Command = ForkCall(run_workload_in_child, (workload, server, title))
    else:
        # The workload carries the task's token: it goes through stdin, never argv or a file.
        runnable = Command(
            [sys.executable, "-m", "airflow.sdk.execution_time.execute_workload", "--json-path", "/dev/stdin"],
            secret_input=workload.model_dump_json().encode(),
        )
        # execute_workload resolves the API server from config; hand it the (team-aware) one we use.
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = server
    return Job(key=workload.key, runnable=runnable, title=title, priority=priority, env=env)


def dispose_inherited_db_pool() -> None:
    """Forget the DB connections inherited through fork without closing them.

    They belong to the scheduler: closing them here would close its sockets (Airflow #47678). Airflow
    registers the same at-fork hook itself; doing it here too keeps that true whatever the version.
    """
    from airflow import settings

    for engine in (getattr(settings, "engine", None), getattr(getattr(settings, "async_engine", None), "sync_engine", None)):
        if engine is not None:
            engine.dispose(close=False)


def run_workload_in_child(workload: ExecutorWorkload, server: str, title: str) -> int:
    """Entry point of a forked task process: Airflow's own Task SDK supervisor runs the workload."""
    from airflow.executors.base_executor import BaseExecutor

    dispose_inherited_db_pool()

    return BaseExecutor.run_workload(
        workload,
        server=server,
        proctitle=f"airflow supervisor -- forklift: {title}",
        subprocess_logs_to_stdout=True,
    )
