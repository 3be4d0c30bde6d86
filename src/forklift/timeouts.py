"""Each task's ``execution_timeout``, read from its serialized DAG, and the hard deadline forklift sets.

forklift enforces ``execution_timeout + [forklift] timeout_grace`` from outside the task, where
Airflow's in-task alarm cannot reach (a blocking C call, SIGALRM ignored). Where the serialized DAG
is found differs by line (``forklift.lines``); reading it, caching it and failing safely do not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger(__name__)


class TimeoutCache:
    """``execution_timeout`` by task, per serialized DAG version; a lookup that fails is "no deadline".

    A failed lookup never blocks a dispatch: the task runs without forklift's outer limit, as it
    would under Airflow's own executor.
    """

    def __init__(self) -> None:
        self._by_version: dict[Hashable, dict[str, float | None]] = {}

    def get(self, what: str, find: Callable[[], tuple[Hashable, Callable[[], Any], str]]) -> float | None:
        """``find()`` returns (the DAG version's cache key, a loader of its serialized data, the task id)."""
        try:
            version, load, task_id = find()
            if version not in self._by_version:
                self._by_version[version] = timeouts_by_task(load())
            return self._by_version[version].get(task_id)
        except Exception as exc:  # noqa: BLE001 - never let the lookup stop a task from running
            log.debug("forklift: no execution_timeout for %s: %s", what, exc)
            return None


def timeouts_by_task(data: Any) -> dict[str, float | None]:
    """``{task_id: execution_timeout seconds or None}`` from a serialized DAG (dict or JSON text)."""
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
