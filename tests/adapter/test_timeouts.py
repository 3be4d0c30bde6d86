"""forklift reads each task's execution_timeout from the DAG as this Airflow line serializes it."""

from __future__ import annotations

from datetime import timedelta

import pendulum

from forklift.timeouts import hard_deadline, timeouts_by_task

try:
    from airflow.sdk import DAG
except ImportError:
    from airflow import DAG  # type: ignore[no-redef]
try:
    from airflow.providers.standard.operators.empty import EmptyOperator
except ImportError:
    from airflow.operators.empty import EmptyOperator  # type: ignore[no-redef]


def _serialize(dag: object) -> dict:
    from airflow.serialization import serialized_objects as so

    serializer = getattr(so, "DagSerialization", None) or so.SerializedDAG  # Airflow 3 / Airflow 2
    return serializer.to_dict(dag)


def test_execution_timeouts_from_the_serialized_dag() -> None:
    with DAG("t", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")) as dag:
        EmptyOperator(task_id="bounded", execution_timeout=timedelta(minutes=2))
        EmptyOperator(task_id="unbounded")
    assert timeouts_by_task(_serialize(dag)) == {"bounded": 120.0, "unbounded": None}


def test_hard_deadline() -> None:
    assert hard_deadline(120.0, 30.0) == 150.0
    assert hard_deadline(None, 30.0) is None
    assert hard_deadline(120.0, -1.0) is None  # [forklift] timeout_grace = -1 turns it off
