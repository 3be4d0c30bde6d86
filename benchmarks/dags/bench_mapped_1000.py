"""The scale rows (``--scale``): one no-op task mapped over 1,000 indices."""

from __future__ import annotations

from bench_common import bench_dag

try:
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:
    from airflow.operators.python import PythonOperator  # type: ignore[no-redef]


def noop_arg(index: int) -> None:
    return None


with bench_dag("bench_mapped_1000"):
    PythonOperator.partial(task_id="mapped", python_callable=noop_arg).expand(op_args=[[i] for i in range(1000)])
