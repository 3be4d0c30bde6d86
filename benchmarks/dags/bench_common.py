"""What the benchmark's DAG files share. Each DAG has a file of its own, as in a deployment: a task parses
its DAG's file, and a file holding every benchmark DAG would make each task build all of them (1,100
operators for a 50-task DAG)."""

from __future__ import annotations

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG  # type: ignore[no-redef]


def bench_dag(dag_id: str) -> DAG:
    """``max_active_tasks`` is raised so that only the executor's parallelism limits concurrency."""
    return DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        max_active_tasks=256,
        tags=["forklift-bench"],
    )
