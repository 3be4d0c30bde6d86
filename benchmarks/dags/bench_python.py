"""The benchmark's 50 independent no-op PythonOperators."""

from __future__ import annotations

from bench_common import bench_dag

try:
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:
    from airflow.operators.python import PythonOperator  # type: ignore[no-redef]


def noop() -> None:
    return None


with bench_dag("bench_python"):
    for i in range(50):
        PythonOperator(task_id=f"noop_{i:02d}", python_callable=noop)
