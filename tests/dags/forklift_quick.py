"""Three no-op tasks: the smallest real DAG run (metrics tests)."""

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


def noop() -> None:
    return None


with DAG(
    dag_id="forklift_quick",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 0},
):
    for i in range(3):
        PythonOperator(task_id=f"noop_{i}", python_callable=noop)
