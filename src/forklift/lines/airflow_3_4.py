"""Airflow 3.4: every queued workload lives in ``executor_queues[type]``; capabilities are
``supported_workload_types``.

Task keys stay ``TaskInstanceKey`` (``supports_task_instance_uuid`` is left False): see
docs/airflow-lines.md for why.
"""

from __future__ import annotations

from typing import Any

from forklift.lines.airflow_3_3 import Airflow33
from forklift.lines.base import ExecutorTraits


def _workload_types() -> frozenset[Any]:
    from airflow.executors.workloads import WorkloadType

    return frozenset({WorkloadType.EXECUTE_TASK, WorkloadType.EXECUTE_CALLBACK, WorkloadType.TEST_CONNECTION})


class Traits(ExecutorTraits):
    supported_workload_types: frozenset[Any] = _workload_types()
    supports_multi_team: bool = True
    # Coordinates (dag, task, run, try, map) already name one attempt in everything forklift keys:
    # its handover records, the hold on a key queued again while its run is live, revoke. Keeping
    # them keeps one key type on every 3.x line and records readable across a 3.3 → 3.4 upgrade.
    supports_task_instance_uuid: bool = False


class Airflow34(Airflow33):
    name = "3.4"
    traits: type[ExecutorTraits] = Traits
    map_index_column = "region_index"

    def workload_key(self, workload: Any) -> Any:
        return workload.ti.key if self.is_task(workload) else workload.key

    def unqueue(self, executor: Any, key: Any) -> None:
        for queue in executor.executor_queues.values():
            if queue.pop(key, None) is not None:
                return


LINE = Airflow34()
