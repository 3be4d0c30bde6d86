"""Airflow 3.1: task workloads only (no callbacks, no connection tests), run by ``supervise()``."""

from __future__ import annotations

from typing import Any

from forklift.lines.base import ExecutorTraits
from forklift.lines.task_sdk import TaskSdkLine, supervise_task


class Traits(ExecutorTraits):
    """3.1's ``BaseExecutor`` has no capability flags; team executors are built without a check."""


class Airflow31(TaskSdkLine):
    name = "3.1"
    traits: type[ExecutorTraits] = Traits

    def stats(self) -> Any:
        from airflow.stats import Stats

        return Stats

    def task_instance_model(self) -> Any:
        from airflow.executors.workloads import TaskInstance

        return TaskInstance

    def bundle_info_model(self) -> Any:
        from airflow.executors.workloads import BundleInfo

        return BundleInfo

    def decode_workload(self, data: bytes) -> Any:
        from airflow.executors.workloads import ExecuteTask

        return ExecuteTask.model_validate_json(data)

    def run_workload(self, workload: Any, server: str, proctitle: str) -> int:
        from forklift.proctitle import set_title

        set_title(proctitle)
        return supervise_task(workload, server)


LINE = Airflow31()
