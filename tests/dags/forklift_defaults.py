"""Sixteen short independent tasks: the defaults test ([core] parallelism only) reads from the DB how
many ran at once and how many were held ready."""

from __future__ import annotations

import time

import pendulum

try:  # Airflow 3
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG  # type: ignore[no-redef]
    from airflow.operators.python import PythonOperator  # type: ignore[no-redef]


def short() -> None:
    time.sleep(0.5)  # long enough that two overlapping on one worker would show in the DB


with DAG(
    dag_id="forklift_defaults",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 0},
    max_active_tasks=64,
):
    for i in range(16):
        PythonOperator(task_id=f"short_{i:02d}", python_callable=short)
