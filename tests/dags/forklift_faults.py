"""DAGs the fault tests break on purpose. Each task records its pid and ancestry first."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pendulum
import psutil

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG  # type: ignore[no-redef]
try:
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:
    from airflow.operators.python import PythonOperator  # type: ignore[no-redef]


def _record(context: dict, name: str) -> Path:
    out = Path(context["dag_run"].conf["out_dir"])
    me = psutil.Process()
    ancestry = []
    for proc in [me, *me.parents()]:
        try:
            ancestry.append({"pid": proc.pid, "cmdline": " ".join(proc.cmdline())})
        except psutil.Error:
            continue
    tmp = out / f".{name}.json"
    tmp.write_text(json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0), "ancestry": ancestry}))
    tmp.replace(out / f"{name}.json")
    return out


def sleep_long(**context: object) -> None:
    _record(context, "started")
    time.sleep(600)


def ignore_the_alarm(**context: object) -> None:
    # Airflow's execution_timeout is an in-task SIGALRM; this task is deaf to it, as a task blocked
    # in a C call would be. Only forklift, from outside, can stop it.
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    _record(context, "started")
    time.sleep(600)


def slow_then_mark(**context: object) -> None:
    out = _record(context, "started")
    time.sleep(5)
    (out / "ran_to_the_end").write_text("yes")


def _dag(dag_id: str) -> DAG:
    return DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        default_args={"retries": 0},
    )


with _dag("forklift_fault_sleeper"):
    PythonOperator(task_id="sleeper", python_callable=sleep_long)

with _dag("forklift_fault_timeout"):
    PythonOperator(task_id="deaf", python_callable=ignore_the_alarm, execution_timeout=timedelta(seconds=2))

with _dag("forklift_fault_marker"):
    PythonOperator(task_id="marker", python_callable=slow_then_mark)
