"""Airflow 3.2: tasks and callbacks (keyed by the callback's id; run in-process, without a supervisor)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from forklift.lines.base import ExecutorTraits
from forklift.lines.task_sdk import TaskSdkLine, WorkloadStates, supervise_task

log = logging.getLogger(__name__)


class Traits(ExecutorTraits):
    supports_callbacks: bool = True
    supports_multi_team: bool = True


class Airflow32(TaskSdkLine):
    name = "3.2"
    traits: type[ExecutorTraits] = Traits
    queue_names = ("queued_callbacks", "queued_tasks")
    workload_kinds = frozenset({"task", "callback"})

    def stats(self) -> Any:
        from airflow._shared.observability.metrics.stats import Stats

        return Stats

    def workload_key(self, workload: Any) -> Any:
        """A callback's events are keyed by its id as a UUID: 3.2's scheduler looks the callback up with
        the event's key, and on SQLite a string id fails that lookup (``'str' object has no attribute
        'hex'``) and stops the scheduler. 3.2 queues it under the string, which ``unqueue`` also takes."""
        return workload.ti.key if self.is_task(workload) else uuid.UUID(str(workload.callback.id))

    def unqueue(self, executor: Any, key: Any) -> None:
        if isinstance(key, uuid.UUID):
            executor.queued_callbacks.pop(str(key), None)
        super().unqueue(executor, key)

    def states(self, workload: Any) -> WorkloadStates:
        if self.is_task(workload):
            return WorkloadStates()
        from airflow.utils.state import CallbackState

        return WorkloadStates(CallbackState.RUNNING, CallbackState.SUCCESS, CallbackState.FAILED)

    def describe(self, workload: Any) -> str:
        return super().describe(workload) if self.is_task(workload) else f"callback {workload.callback.id}"

    def decode_workload(self, data: bytes) -> Any:
        from airflow.executors import workloads
        from pydantic import TypeAdapter

        return TypeAdapter(workloads.All).validate_json(data)

    def run_workload(self, workload: Any, server: str, proctitle: str) -> int:
        from forklift.proctitle import set_title

        set_title(proctitle)
        if not self.is_task(workload):
            # As 3.2's own executor runs a callback: imported and called here, its outcome returned.
            from airflow.executors.workloads.callback import execute_callback_workload

            success, error = execute_callback_workload(workload.callback, log)
            if not success:
                log.error("forklift: callback %s failed: %s", workload.callback.id, error)
            return 0 if success else 1
        return supervise_task(workload, server)


LINE = Airflow32()
