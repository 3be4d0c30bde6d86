"""forklift's demo DAG: 24 independent short tasks, half Python, half Bash."""

from __future__ import annotations

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG  # type: ignore[no-redef]
try:
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:
    from airflow.operators.bash import BashOperator  # type: ignore[no-redef]
    from airflow.operators.python import PythonOperator  # type: ignore[no-redef]


def crunch(n: int) -> int:
    return sum(i * i for i in range(n))


with DAG(
    dag_id="forklift_demo",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_tasks=64,
    tags=["forklift"],
):
    for i in range(12):
        PythonOperator(task_id=f"python_{i:02d}", python_callable=crunch, op_args=[200_000])
        BashOperator(task_id=f"bash_{i:02d}", bash_command=f"echo hello from bash task {i}")
