"""Two tasks, two executors: the default one (Airflow's LocalExecutor) and forklift, chosen by alias.

Each task records the command lines of its ancestor processes, so the test can tell which executor
really ran it.
"""

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
    dag_id="forklift_routing",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
):
    PythonOperator(task_id="on_default", python_callable=record_ancestry)
    PythonOperator(task_id="on_forklift", python_callable=record_ancestry, executor="forklift")
