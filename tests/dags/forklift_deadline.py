"""A DAG whose deadline is always missed, so the scheduler sends forklift an ExecuteCallback workload."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pendulum

try:  # deadline alerts (and executor callbacks) exist from Airflow 3 on
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG
    from airflow.sdk.definitions.callback import SyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference
except ImportError:
    DAG = None  # type: ignore[assignment,misc]

from forklift_callbacks import deadline_missed  # importable by path: see that module

MARKER_DIR = os.environ.get("FORKLIFT_TEST_MARKER_DIR", "/nonexistent")


if DAG is not None:
    with DAG(
        dag_id="forklift_deadline",
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        deadline=DeadlineAlert(
            reference=DeadlineReference.DAGRUN_QUEUED_AT,
            interval=timedelta(seconds=1),
            callback=SyncCallback(deadline_missed, kwargs={"path": os.path.join(MARKER_DIR, "deadline.txt")}),
        ),
    ):
        PythonOperator(task_id="slow", python_callable=lambda: time.sleep(8))
