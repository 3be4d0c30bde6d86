"""The DAG forklift's integration tests run: many independent tasks of every common kind.

Each task records when it ran (``<out_dir>/spans/<task_id>.json``), so a test can check from the
tasks' own clocks how many ran at once. ``out_dir`` comes from the DAG run's conf.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG  # type: ignore[no-redef]
try:
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:  # Airflow 2 without the standard provider
    from airflow.operators.bash import BashOperator  # type: ignore[no-redef]
    from airflow.operators.python import PythonOperator  # type: ignore[no-redef]

SPAN_TASKS = 20
SPAN_SECONDS = 2.0


def _out_dir(context: dict) -> Path:
    return Path(context["dag_run"].conf["out_dir"])


def record_span(seconds: float, **context: object) -> None:
    start = time.time()
    time.sleep(seconds)
    spans = _out_dir(context) / "spans"
    spans.mkdir(parents=True, exist_ok=True)
    ti = context["ti"]
    (spans / f"{ti.task_id}.json").write_text(json.dumps({"start": start, "end": time.time(), "pid": os.getpid()}))


def write_file(**context: object) -> None:
    (_out_dir(context) / "written.txt").write_text(f"written by {context['ti'].task_id}\n")


def fail(**context: object) -> None:
    raise RuntimeError("this task fails on purpose")


with DAG(
    dag_id="forklift_matrix",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_tasks=64,
    default_args={"retries": 0},
    tags=["forklift-test"],
):
    for i in range(SPAN_TASKS):
        PythonOperator(task_id=f"span_{i:02d}", python_callable=record_span, op_kwargs={"seconds": SPAN_SECONDS})
    PythonOperator(task_id="writes_file", python_callable=write_file)
    PythonOperator(task_id="fails", python_callable=fail)
    BashOperator(task_id="bash", bash_command='echo "bash ran in $$" > "{{ dag_run.conf["out_dir"] }}/bash.txt"')
