"""Everything that differs between Airflow lines lives here, and only here.

The executor asks this module how to read configuration, what parallelism to hand to Airflow's
``BaseExecutor``, and how to turn what the scheduler gives it into an engine :class:`~forklift.jobs.Job`:

* Airflow 3: a Task SDK *workload* (``_process_workloads``) → :func:`workload_to_job`;
* Airflow 2: an ``airflow tasks run …`` *command* (``execute_async``) → :func:`command_to_job`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from airflow import __version__ as AIRFLOW_VERSION
from airflow.configuration import conf
from packaging.version import Version

from forklift.jobs import Command, ForkCall, Job
from forklift.settings import ConfigError, Lookup, RunMode
from forklift.supervisor_wake import wake_on_child_exit

if TYPE_CHECKING:
    from airflow.executors.workloads import ExecutorWorkload

log = logging.getLogger(__name__)

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

    Airflow 2 reads 0 as "unlimited" itself. Airflow 3's ``BaseExecutor`` refuses 0, so for forklift's
    "unlimited" the executor offers as many slots as ``[core] parallelism``: the scheduler never
    queues more than that in total, so forklift adds no limit of its own.
    """
    if forklift_parallelism > 0 or not AIRFLOW_V3:
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


def scheduler_cap(lookup: Lookup) -> int | None:
    """The scheduler never queues more than ``[core] parallelism`` across all executors (None: no cap)."""
    try:
        cap = int(lookup("core", "parallelism") or "32")
    except ValueError:
        return None
    return cap if cap > 0 else None


def default_records_dir() -> str:
    """``$AIRFLOW_HOME/forklift/tasks``: shared by every scheduler of the deployment on this machine."""
    from airflow.configuration import AIRFLOW_HOME

    return os.path.join(AIRFLOW_HOME, "forklift", "tasks")


def stats() -> Any:
    """Airflow's metrics facade: ``incr(stat, count)``, ``gauge(stat, value)``, ``timing(stat, dt)`` on both lines."""
    if AIRFLOW_V3:
        from airflow._shared.observability.metrics import stats as stats_module

        return stats_module
    from airflow.stats import Stats

    return Stats


def execution_api_url(executor_conf: Any) -> str:
    """Where Airflow 3 tasks reach the Execution API (Airflow 2 tasks talk to the DB instead)."""
    if not AIRFLOW_V3:
        return ""
    from airflow.executors.base_executor import get_execution_api_server_url

    return str(get_execution_api_server_url(conf if executor_conf is None else executor_conf))


def workload_to_job(
    workload: ExecutorWorkload,
    *,
    mode: RunMode,
    server: str,
    timeout: float | None = None,
    wake_supervisor: bool = True,
    memory_limit: int = 0,
) -> Job:
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
        runnable: ForkCall | Command = ForkCall(run_workload_in_child, (workload, server, title, wake_supervisor))
    else:
        # The workload carries the task's token: it goes through stdin, never argv or a file.
        # forklift.execute_workload is Airflow's own execute_workload plus the supervisor wake.
        runnable = Command(
            [sys.executable, "-m", "forklift.execute_workload", "--json-path", "/dev/stdin"],
            secret_input=workload.model_dump_json().encode(),
        )
        # execute_workload resolves the API server from config; hand it the (team-aware) one we use.
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = server
        env["FORKLIFT_WAKE_SUPERVISOR"] = "1" if wake_supervisor else "0"
    return Job(
        key=workload.key,
        runnable=runnable,
        title=title,
        priority=priority,
        env=env,
        timeout=timeout,
        memory_limit_mib=memory_limit,
    )


def executor_config_of(workload: Any) -> Any:
    """A task workload's ``executor_config`` (Airflow 3 keeps it on the TaskInstance it carries, out of
    the JSON the task process gets); None for callbacks and connection tests."""
    ti = getattr(workload, "ti", None)
    return getattr(ti, "executor_config", None)


#: Imported once in the scheduler before workers fork, so no task pays for them: the Task SDK's
#: supervisor and runner, and the operators most DAG files import (the standard provider's pull in
#: ``packaging``, whose regexes alone cost a parse ~50 ms per task when compiled afresh).
TASK_MODULES = (
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.providers.standard.operators.python",
    "airflow.providers.standard.operators.bash",
    "airflow.providers.standard.operators.empty",
)


def warm_task_caches(extra_modules: tuple[str, ...] = ()) -> list[str]:
    """Do, once in the scheduler, what each forked task would otherwise do for itself.

    Airflow's own LocalExecutor runs every supervisor inside one long-lived worker, so first-use
    costs are paid once per worker. forklift forks a fresh process per task, so whatever is not
    loaded before the workers fork is paid by every task: imports, an OpenSSL context with its CA
    bundle (tens of ms of CPU), a DNS lookup of this host's name. Returns the modules that could
    not be imported (a warning for the ones the user asked for; the defaults may be absent).
    """
    import importlib

    missing = []
    modules = (*TASK_MODULES, *extra_modules) if AIRFLOW_V3 else extra_modules
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - only a speed-up; the task imports it itself
            missing.append(name)
            if name in extra_modules:
                log.warning("forklift: [forklift] preload_modules: could not import %s: %s", name, exc)
    if AIRFLOW_V3:
        try:
            from airflow.sdk.api import client

            client.Client._get_ssl_context_cached(client.API_SSL_CA_FILE_PATH, client.API_SSL_CERT_PATH)
            client.get_hostname()
            client.getuser()
        except Exception as exc:  # noqa: BLE001 - only a speed-up: each task fills them itself otherwise
            log.debug("forklift: could not pre-fill the Task SDK's caches: %s", exc)
    return missing


def dispose_inherited_db_pool() -> None:
    """Forget the DB connections inherited through fork without closing them.

    They belong to the scheduler: closing them here would close its sockets (Airflow #47678). Airflow
    registers the same at-fork hook itself; doing it here too keeps that true whatever the version.
    """
    from airflow import settings

    for engine in (
        getattr(settings, "engine", None),
        getattr(getattr(settings, "async_engine", None), "sync_engine", None),
    ):
        if engine is not None:
            engine.dispose(close=False)


class ExecutionTimeouts:
    """Each task's ``execution_timeout`` (seconds, or None), read from its serialized DAG.

    forklift enforces ``execution_timeout + [forklift] timeout_grace`` from outside the task, where
    Airflow's in-task alarm cannot reach (a blocking C call, SIGALRM ignored). The serialized DAG is
    read once per DAG version (Airflow 3) or DAG hash (Airflow 2); a lookup that fails never blocks
    a dispatch, the task just runs without forklift's outer limit.
    """

    def __init__(self) -> None:
        self._cache: dict[Any, dict[str, float | None]] = {}

    def for_workload(self, workload: Any) -> float | None:
        from airflow.executors.workloads import ExecuteTask

        if not isinstance(workload, ExecuteTask):
            return None
        ti = workload.ti
        return self._lookup(("v3", str(ti.dag_version_id)), ti.dag_id, ti.task_id, dag_version_id=ti.dag_version_id)

    def for_command(self, key: Any) -> float | None:
        return self._lookup(None, key.dag_id, key.task_id)

    def _lookup(self, cache_key: Any, dag_id: str, task_id: str, dag_version_id: Any = None) -> float | None:
        try:
            from airflow.models.serialized_dag import SerializedDagModel
            from airflow.utils.session import create_session
            from sqlalchemy import select

            with create_session() as session:
                if cache_key is None:  # Airflow 2: one DAG per dag_id, versioned by its hash
                    dag_hash = SerializedDagModel.get_latest_version_hash(dag_id, session=session)
                    cache_key = ("v2", dag_id, dag_hash)
                if cache_key not in self._cache:
                    if dag_version_id is not None:
                        row = session.scalar(
                            select(SerializedDagModel).where(SerializedDagModel.dag_version_id == dag_version_id)
                        )
                    else:
                        row = SerializedDagModel.get(dag_id, session=session)
                    self._cache[cache_key] = _timeouts_by_task(row.data if row is not None else None)
            return self._cache[cache_key].get(task_id)
        except Exception as exc:  # noqa: BLE001 - never let the lookup stop a task from running
            log.debug("forklift: no execution_timeout for %s.%s: %s", dag_id, task_id, exc)
            return None


def _timeouts_by_task(data: Any) -> dict[str, float | None]:
    if isinstance(data, str):
        data = json.loads(data)
    tasks = ((data or {}).get("dag") or {}).get("tasks") or []
    out: dict[str, float | None] = {}
    for item in tasks:
        task = item.get("__var", item) if isinstance(item, dict) else {}
        if not isinstance(task, dict) or "task_id" not in task:
            continue
        value = task.get("execution_timeout")
        if isinstance(value, dict):  # {"__type": "timedelta", "__var": seconds}
            value = value.get("__var")
        out[task["task_id"]] = float(value) if isinstance(value, (int, float)) else None
    return out


def hard_deadline(execution_timeout: float | None, grace: float) -> float | None:
    """When forklift stops a task from outside: its execution_timeout plus the grace (-1: never)."""
    if execution_timeout is None or grace < 0:
        return None
    return execution_timeout + grace


def run_workload_in_child(workload: ExecutorWorkload, server: str, title: str, wake_supervisor: bool = True) -> int:
    """Entry point of a forked task process: Airflow's own Task SDK supervisor runs the workload."""
    from airflow.executors.base_executor import BaseExecutor

    dispose_inherited_db_pool()
    if wake_supervisor:
        wake_on_child_exit()

    return int(
        BaseExecutor.run_workload(
            workload,
            server=server,
            proctitle=f"airflow supervisor -- forklift: {title}",
            subprocess_logs_to_stdout=True,
        )
    )


# -- Airflow 2: commands ---------------------------------------------------------------------------


class CommandRejected(ValueError):
    """A command forklift will not run: only ``airflow tasks run …`` is accepted."""


def command_to_job(
    key: Any, command: Any, *, mode: RunMode, timeout: float | None = None, memory_limit: int = 0
) -> Job:
    """An Airflow 2 ``airflow tasks run …`` command as an engine job; anything else is refused unrun."""
    if (
        not isinstance(command, (list, tuple))
        or not all(isinstance(part, str) for part in command)
        or list(command[:3]) != ["airflow", "tasks", "run"]
    ):
        shown = repr(command)
        if len(shown) > 200:
            shown = shown[:200] + "…"
        raise CommandRejected(
            f"forklift runs only ['airflow', 'tasks', 'run', …] commands (a list of strings); refused {shown}"
        )
    command = list(command)
    dag_id, task_id = _dag_and_task(command)
    env = {PARSING_CONTEXT_DAG_ID: dag_id or "", PARSING_CONTEXT_TASK_ID: task_id or ""}
    env = {k: v for k, v in env.items() if v}
    title = f"{getattr(key, 'dag_id', dag_id)}.{getattr(key, 'task_id', task_id)} {getattr(key, 'run_id', '')} try {getattr(key, 'try_number', '')}"
    runnable: ForkCall | Command
    if mode is RunMode.FORK:
        runnable = ForkCall(run_command_in_child, (command, title))
    else:
        runnable = Command(command)
    return Job(key=key, runnable=runnable, title=title.strip(), env=env, timeout=timeout, memory_limit_mib=memory_limit)


def _dag_and_task(command: list[str]) -> tuple[str | None, str | None]:
    """The first two positional arguments after ``run``, as Airflow 2's own validator reads them."""
    if "--help" in command:
        return None, None
    positional = [arg for arg in command[3:] if not arg.startswith("--")]
    return (positional[0] if positional else None), (positional[1] if len(positional) > 1 else None)


def run_command_in_child(command: list[str], title: str) -> int:
    """Entry point of a forked task process on Airflow 2: the CLI, parsed and run in-process."""
    from airflow.cli.cli_parser import get_parser

    from forklift.proctitle import set_title

    dispose_inherited_db_pool()
    args = get_parser().parse_args(command[1:])
    args.shut_down_logging = False
    set_title(f"airflow task supervisor -- forklift: {title}")
    try:
        args.func(args)
    finally:
        try:
            from airflow.sentry import Sentry

            Sentry.flush()
        except Exception:  # noqa: BLE001, S110 - flushing is best effort; the task's outcome stands
            pass
    return 0
