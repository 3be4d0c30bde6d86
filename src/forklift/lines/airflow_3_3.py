"""Airflow 3.3: tasks, callbacks and connection tests, each keyed and stated by its own workload,
run by ``BaseExecutor.run_workload``."""

from __future__ import annotations

from typing import Any

from forklift.lines.base import ExecutorTraits
from forklift.lines.task_sdk import TaskSdkLine, WorkloadStates


class Traits(ExecutorTraits):
    supports_callbacks: bool = True
    supports_connection_test: bool = True
    supports_multi_team: bool = True


class Airflow33(TaskSdkLine):
    name = "3.3"
    traits: type[ExecutorTraits] = Traits
    queue_names = ("queued_callbacks", "queued_connection_tests", "queued_tasks")
    workload_kinds = frozenset({"task", "callback", "connection test"})

    def stats(self) -> Any:
        from airflow._shared.observability.metrics import stats

        return stats

    def workload_key(self, workload: Any) -> Any:
        return workload.key

    def states(self, workload: Any) -> WorkloadStates:
        # A task's running_state is None: its supervisor reports RUNNING to the API server itself.
        return WorkloadStates(workload.running_state, workload.success_state, workload.failure_state)

    def metric_tags(self, executor_class: str, team_name: str | None) -> dict[str, str]:
        """From 3.3 Airflow's executor metrics say ``executor_class_name``, and ``team_name`` for a team's."""
        tags = {"executor_class_name": executor_class}
        if team_name:
            tags["team_name"] = team_name
        return tags

    def execution_api_url(self, executor_conf: Any) -> str:
        from airflow.configuration import conf
        from airflow.executors.base_executor import get_execution_api_server_url

        return str(get_execution_api_server_url(conf if executor_conf is None else executor_conf))

    def decode_workload(self, data: bytes) -> Any:
        from airflow.executors import workloads
        from pydantic import TypeAdapter

        return TypeAdapter(workloads.All).validate_json(data)

    def run_workload(self, workload: Any, server: str, proctitle: str) -> int:
        from airflow.executors.base_executor import BaseExecutor

        return int(
            BaseExecutor.run_workload(workload, server=server, proctitle=proctitle, subprocess_logs_to_stdout=True)
        )


LINE = Airflow33()
