"""The benchmark's 50 independent no-op BashOperators."""

from __future__ import annotations

from bench_common import bench_dag

try:
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:
    from airflow.operators.bash import BashOperator  # type: ignore[no-redef]


with bench_dag("bench_bash"):
    for i in range(50):
        BashOperator(task_id=f"true_{i:02d}", bash_command="true")
