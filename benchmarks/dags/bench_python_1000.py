"""The scale rows (``--scale``): 1,000 independent no-op PythonOperators."""

from __future__ import annotations

from bench_common import bench_dag

try:
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:
    from airflow.operators.python import PythonOperator  # type: ignore[no-redef]


def noop() -> None:
    return None


with bench_dag("bench_python_1000"):
    for i in range(1000):
        PythonOperator(task_id=f"noop_{i:04d}", python_callable=noop)
