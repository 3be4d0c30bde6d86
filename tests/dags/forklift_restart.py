"""The DAG the restart tests run: three long tasks and ten quick ones.

Each task process records its own run in ``conf["out_dir"]``: ``<task>.<pid>.start`` when it begins
(with its try number and the pids above it) and ``<task>.<pid>.end`` when it finishes, so a test
can see from the tasks themselves whether any task instance ever ran twice, or twice at once.
"""

from __future__ import annotations

import json
import os
import time
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


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name("." + path.name)
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def run(seconds_key: str, **context: object) -> None:
    conf = context["dag_run"].conf  # type: ignore[attr-defined]
    out = Path(conf["out_dir"])
    ti = context["ti"]
    me = psutil.Process()
    name = f"{ti.task_id}.{os.getpid()}"  # type: ignore[attr-defined]
    _write(
        out / f"{name}.start",
        {"try": ti.try_number, "start": time.time(), "parents": [p.pid for p in me.parents()]},  # type: ignore[attr-defined]
    )
    # With a "release" file named, a long task runs until the test creates it (at most its seconds): the
    # test decides when it ends, however slowly a loaded machine brings the next scheduler up.
    release = conf.get("release") if seconds_key == "long_seconds" else None
    deadline = time.monotonic() + float(conf.get(seconds_key, 0))
    while time.monotonic() < deadline and not (release and Path(release).exists()):
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    _write(out / f"{name}.end", {"end": time.time()})


def _dag(dag_id: str, retries: int) -> DAG:
    return DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        default_args={"retries": retries},  # 1 for forklift_restart: a reset would show as try 2
        max_active_tasks=64,
    )


with _dag("forklift_restart", retries=1):
    for i in range(3):
        PythonOperator(task_id=f"long_{i}", python_callable=run, op_kwargs={"seconds_key": "long_seconds"})
    for i in range(10):
        PythonOperator(task_id=f"quick_{i}", python_callable=run, op_kwargs={"seconds_key": "quick_seconds"})

with _dag("forklift_spread", retries=0):
    for i in range(40):
        PythonOperator(task_id=f"quick_{i:02d}", python_callable=run, op_kwargs={"seconds_key": "quick_seconds"})
