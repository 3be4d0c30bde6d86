"""Light work on forklift (the default executor), heavy work on Celery: each task records its ancestry."""

from __future__ import annotations

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG  # type: ignore[no-redef]
try:
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:
    from airflow.operators.python import PythonOperator  # type: ignore[no-redef]

from forklift.testing.ancestry import record_ancestry

with DAG(
    dag_id="forklift_celery",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 0},
):
    light = PythonOperator(task_id="light", python_callable=record_ancestry)
    heavy = PythonOperator(task_id="heavy", python_callable=record_ancestry, executor="CeleryExecutor")
    light >> heavy
