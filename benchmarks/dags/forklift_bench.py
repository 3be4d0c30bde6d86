"""The benchmark's DAGs: 50 independent no-op tasks each, one of PythonOperators, one of BashOperators;
and for the scale rows (``--scale``) 1,000 independent no-op PythonOperators, and one task mapped over
1,000 indices.

``max_active_tasks`` is raised so that only the executor's parallelism limits concurrency.
"""

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

TASKS = 50
SCALE = 1000


def noop() -> None:
    return None


def noop_arg(index: int) -> None:
    return None


def _dag(dag_id: str) -> DAG:
    return DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        max_active_tasks=256,
        tags=["forklift-bench"],
    )


with _dag("bench_python"):
    for i in range(TASKS):
        PythonOperator(task_id=f"noop_{i:02d}", python_callable=noop)

with _dag("bench_bash"):
    for i in range(TASKS):
        BashOperator(task_id=f"true_{i:02d}", bash_command="true")

with _dag("bench_python_1000"):
    for i in range(SCALE):
        PythonOperator(task_id=f"noop_{i:04d}", python_callable=noop)

with _dag("bench_mapped_1000"):
    PythonOperator.partial(task_id="mapped", python_callable=noop_arg).expand(op_args=[[i] for i in range(SCALE)])
