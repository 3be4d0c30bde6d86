"""What Airflow 3 lines share: Task SDK *workloads*, run by a supervisor that talks to the API server.

Each 3.x module (``airflow_3_1`` … ``airflow_3_4``) subclasses :class:`TaskSdkLine` and answers only
what its release does differently: which workload kinds it has and how they are keyed and queued,
what states they report, how a workload is run, where the metrics facade lives.
"""

from __future__ import annotations

import logging
import os
import sys
from abc import abstractmethod
from typing import Any, NamedTuple, cast

from forklift.jobs import Command, ForkCall, Job
from forklift.lines.base import (
    PARSING_CONTEXT_DAG_ID,
    PARSING_CONTEXT_TASK_ID,
    AirflowLine,
    import_modules,
)
from forklift.settings import ConfigError, Lookup, RunMode
from forklift.timeouts import TimeoutCache

log = logging.getLogger(__name__)

#: Callbacks finish work already under way, so they go before tasks (as Airflow's own ordering does).
CALLBACK_PRIORITY = sys.maxsize

#: Imported once in the scheduler before workers fork, so no task pays for them: the Task SDK's
#: supervisor and runner, and the operators most DAG files import (the standard provider's pull in
#: ``packaging``, whose regexes alone cost a parse ~50 ms per task when compiled afresh).
TASK_MODULES = (
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.providers.standard.operators.python",
    "airflow.providers.standard.operators.bash",
    "airflow.providers.standard.operators.empty",
    # Imported lazily by every supervisor (logging set-up, connections) and task process (the DAG
    # bundle, sensors' base, jinja's extensions), seen as new in each forked task on 3.3: ~6 ms of CPU a
    # task together. A line without one of them just skips it.
    "airflow.sdk._shared.logging.remote",
    "airflow.sdk._shared.logging.factory",
    "airflow.sdk.definitions.connection",
    "airflow.sdk.definitions.asset.metadata",
    "airflow.sdk.bases.sensor",
    "airflow.dag_processing.bundles.local",
    "airflow.version",
    "jinja2.ext",
)


class WorkloadStates(NamedTuple):
    """The states a workload reports; None means the executor's plain ``success()``/``fail()`` (tasks)
    or, for ``running``, no running event at all."""

    running: Any = None
    success: Any = None
    failure: Any = None


class TaskSdkLine(AirflowLine):
    major = 3
    runs_workloads = True

    def __init__(self) -> None:
        self._timeouts = TimeoutCache()

    # -- configuration ------------------------------------------------------------------------
    def config_lookup(self, team_name: str | None = None) -> Lookup:
        """For a team's executor, the team's own value comes first, then the deployment's.

        Airflow 3 takes team values only from ``AIRFLOW__<TEAM>___<SECTION>__<KEY>`` environment
        variables, and its team-aware ``conf.get`` would answer a built-in default rather than the
        deployment's value.
        """
        from airflow.configuration import conf

        def lookup(section: str, key: str) -> str | None:
            if team_name:
                team_value = os.environ.get(f"AIRFLOW__{team_name.upper()}___{section.upper()}__{key.upper()}")
                if team_value is not None:
                    return team_value
            value = conf.get(section, key, fallback=None)
            return None if value is None else str(value)

        return lookup

    def base_parallelism(self, forklift_parallelism: int, lookup: Lookup) -> int:
        """Airflow 3's ``BaseExecutor`` refuses 0, so for forklift's "unlimited" the executor offers as
        many slots as ``[core] parallelism``: the scheduler never queues more than that in total, so
        forklift adds no limit of its own."""
        if forklift_parallelism > 0:
            return forklift_parallelism
        raw = lookup("core", "parallelism") or "32"
        try:
            core = int(raw)
        except ValueError:
            raise ConfigError(
                f"[core] parallelism = {raw!r} is not a whole number; set it to a positive number."
            ) from None
        if core <= 0:
            raise ConfigError(
                f"[core] parallelism = {core} would let Airflow {self.name}'s scheduler queue no task; set "
                "[core] parallelism to the most tasks Airflow may run at once, and [forklift] parallelism = 0 "
                "for one process per task."
            )
        return core

    def execution_api_url(self, executor_conf: Any) -> str:
        """``[core] execution_api_server_url``, else ``[api] base_url`` + ``/execution/`` (as 3.1–3.3's
        own executors derive it)."""
        from airflow.configuration import conf

        source = conf if executor_conf is None else executor_conf
        base_url = source.get("api", "base_url", fallback="/") or "/"
        if base_url.startswith("/"):
            base_url = f"http://localhost:8080{base_url}"
        default = f"{base_url.rstrip('/')}/execution/"
        return str(source.get("core", "execution_api_server_url", fallback=default) or default)

    # -- before workers fork ------------------------------------------------------------------
    def warm_task_caches(self, extra_modules: tuple[str, ...] = ()) -> list[str]:
        """Do, once in the scheduler, what each forked task would otherwise do for itself.

        Airflow's own LocalExecutor runs every supervisor inside one long-lived worker, so first-use
        costs are paid once per worker. forklift forks a fresh process per task, so whatever is not
        loaded before the workers fork is paid by every task: imports, an OpenSSL context with its CA
        bundle (tens of ms of CPU), a DNS lookup of this host's name.
        """
        missing = import_modules((*TASK_MODULES, *extra_modules), warn=extra_modules)
        try:
            from airflow.sdk.api import client

            client.Client._get_ssl_context_cached(client.API_SSL_CA_FILE_PATH, client.API_SSL_CERT_PATH)
            client.get_hostname()
            client.getuser()
        except Exception as exc:  # noqa: BLE001 - only a speed-up: each task fills them itself otherwise
            log.debug("forklift: could not pre-fill the Task SDK's caches: %s", exc)
        return missing

    # -- what a line's workloads are ----------------------------------------------------------
    def is_task(self, workload: Any) -> bool:
        from airflow.executors.workloads import ExecuteTask

        return isinstance(workload, ExecuteTask)

    def workload_key(self, workload: Any) -> Any:
        """The key the scheduler queued ``workload`` under, and reads its events by."""
        return workload.ti.key if self.is_task(workload) else workload.key

    def states(self, workload: Any) -> WorkloadStates:
        """What ``workload`` reports when it starts, succeeds, fails (tasks: the defaults)."""
        return WorkloadStates()

    def describe(self, workload: Any) -> str:
        """A task's ``dag.task run try N [map M]``; other workloads their own display name."""
        if not self.is_task(workload):
            return str(workload.display_name)
        ti = workload.ti
        title = f"{ti.dag_id}.{ti.task_id} {ti.run_id} try {ti.try_number}"
        if ti.map_index is not None and ti.map_index >= 0:
            title += f" map {ti.map_index}"
        return title

    @abstractmethod
    def decode_workload(self, data: bytes) -> Any:
        """A workload from the JSON the subprocess run mode hands a fresh interpreter."""

    @abstractmethod
    def run_workload(self, workload: Any, server: str, proctitle: str) -> int:
        """Run ``workload`` to its end in this process (a forked child, or a fresh interpreter); its exit code."""

    # -- into an engine job -------------------------------------------------------------------
    def to_job(
        self,
        workload: Any,
        *,
        mode: RunMode,
        server: str,
        timeout: float | None = None,
        wake_supervisor: bool = True,
        memory_limit: int = 0,
    ) -> Job:
        """A workload (task, callback or connection test) as an engine job."""
        title = self.describe(workload)
        env: dict[str, str] = {}
        if self.is_task(workload):
            ti = workload.ti
            priority = int(ti.priority_weight or 0)
            env = {PARSING_CONTEXT_DAG_ID: ti.dag_id, PARSING_CONTEXT_TASK_ID: ti.task_id}
        else:
            priority = CALLBACK_PRIORITY

        runnable: ForkCall | Command
        if mode is RunMode.FORK:
            runnable = ForkCall(run_workload_in_child, (workload, server, title, wake_supervisor))
        else:
            # The workload carries the task's token: it goes through stdin, never argv or a file.
            runnable = Command(
                [sys.executable, "-m", "forklift.execute_workload", "--json-path", "/dev/stdin"],
                secret_input=workload.model_dump_json().encode(),
            )
            # The fresh interpreter reads these: the (team-aware) API server we use, and whether to
            # wake its supervisor when its task exits.
            env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = server
            env["FORKLIFT_WAKE_SUPERVISOR"] = "1" if wake_supervisor else "0"
        return Job(
            key=self.workload_key(workload),
            runnable=runnable,
            title=title,
            priority=priority,
            env=env,
            timeout=timeout,
            memory_limit_mib=memory_limit,
        )

    def executor_config(self, workload: Any) -> Any:
        """A task's ``executor_config`` (kept on the TaskInstance the workload carries, out of the JSON
        the task process gets); None for callbacks and connection tests."""
        return getattr(getattr(workload, "ti", None), "executor_config", None)

    def execution_timeout(self, workload: Any) -> float | None:
        """The task's ``execution_timeout`` in seconds, read once per DAG version (None: none, or not a task)."""
        if not self.is_task(workload):
            return None
        ti = workload.ti

        def find() -> tuple[Any, Any, str]:
            def load() -> Any:
                from airflow.models.serialized_dag import SerializedDagModel
                from airflow.utils.session import create_session
                from sqlalchemy import select

                with create_session() as session:
                    row = session.scalar(
                        select(SerializedDagModel).where(SerializedDagModel.dag_version_id == ti.dag_version_id)
                    )
                    return row.data if row is not None else None

            return str(ti.dag_version_id), load, ti.task_id

        return self._timeouts.get(f"{ti.dag_id}.{ti.task_id}", find)

    # -- building workloads (tests, the pytest plugin's users) ------------------------------------
    def task_instance_model(self) -> Any:
        """The pydantic model a task workload carries its task instance in."""
        from airflow.executors.workloads.task import TaskInstanceDTO

        return TaskInstanceDTO

    def bundle_info_model(self) -> Any:
        from airflow.executors.workloads.base import BundleInfo

        return BundleInfo

    def task_workload(
        self,
        dag_id: str,
        task_id: str,
        *,
        run_id: str = "r",
        try_number: int = 1,
        map_index: int = -1,
        priority_weight: int = 1,
        token: str = "t",
        executor_config: dict[str, Any] | None = None,
        dag_rel_path: str = "d.py",
    ) -> Any:
        """An ``ExecuteTask`` as this line's scheduler would build it, without a DB (for tests)."""
        import uuid

        from airflow.executors.workloads import ExecuteTask

        ti = self.task_instance_model()(
            id=uuid.uuid4(),
            dag_version_id=uuid.uuid4(),
            task_id=task_id,
            dag_id=dag_id,
            run_id=run_id,
            try_number=try_number,
            map_index=map_index,
            pool_slots=1,
            queue="default",
            priority_weight=priority_weight,
            executor_config=executor_config,
        )
        return ExecuteTask(
            token=token,
            ti=ti,
            dag_rel_path=dag_rel_path,
            bundle_info=self.bundle_info_model()(name="dags-folder"),
            log_path=None,
        )

    # -- the executor's queues ----------------------------------------------------------------
    #: The executor attributes (dicts by key) this line queues workloads in before dispatch.
    queue_names: tuple[str, ...] = ("queued_tasks",)

    def unqueue(self, executor: Any, key: Any) -> None:
        for name in self.queue_names:
            if getattr(executor, name).pop(key, None) is not None:
                return


def supervise_task(workload: Any, server: str) -> int:
    """A task workload through the Task SDK's ``supervise()`` (3.1 and 3.2, before ``run_workload``)."""
    from airflow.sdk.execution_time.supervisor import supervise

    return int(
        supervise(
            ti=workload.ti,
            dag_rel_path=workload.dag_rel_path,
            bundle_info=workload.bundle_info,
            token=workload.token,
            server=server,
            log_path=workload.log_path,
            subprocess_logs_to_stdout=True,
        )
    )


def run_workload_in_child(workload: Any, server: str, title: str, wake_supervisor: bool = True) -> int:
    """Entry point of a forked task process: the line's own supervisor runs the workload."""
    from forklift.lines import LINE
    from forklift.supervisor_wake import wake_on_child_exit

    LINE.dispose_inherited_db_pool()
    if wake_supervisor:
        wake_on_child_exit()
    return cast(TaskSdkLine, LINE).run_workload(workload, server, f"airflow supervisor -- forklift: {title}")
