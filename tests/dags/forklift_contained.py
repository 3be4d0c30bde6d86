"""DAGs for the containment tests: a task that resumes after deferral at once (many copies), a task that
detaches a `sleep 600` from its session, and a memory hog beside a neighbour. Each records what it saw in
``conf["out_dir"]``."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pendulum

try:  # Airflow 3
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
    from airflow.sdk import DAG, BaseOperator
except ImportError:  # Airflow 2
    from airflow import DAG  # type: ignore[no-redef]
    from airflow.models.baseoperator import BaseOperator  # type: ignore[no-redef]
    from airflow.operators.python import PythonOperator  # type: ignore[no-redef]
    from airflow.triggers.temporal import TimeDeltaTrigger  # type: ignore[no-redef]


def _out(context: dict) -> Path:
    return Path(context["dag_run"].conf["out_dir"])


class DeferAtOnce(BaseOperator):
    """Defers to a trigger that fires at once, so the scheduler queues the same key again while the
    run that deferred may still be finishing."""

    def execute(self, context: dict) -> None:
        # Its process lingers 3 s after deferring (as one uploading its logs would): the trigger fires
        # and the scheduler queues the task again while this run is still live.
        threading.Thread(target=time.sleep, args=(3,), daemon=False).start()
        self.defer(trigger=TimeDeltaTrigger(timedelta(0)), method_name="resume")

    def resume(self, context: dict, event: object = None) -> None:
        (_out(context) / f"{self.task_id}.resumed.{os.getpid()}").write_text("")


def detach_a_sleeper(**context: object) -> None:
    """A daemon-style double fork: `sleep 600` in a session of its own, then this task ends."""
    pidfile = _out(context) / "sleeper.pid"
    if os.fork() == 0:
        os.setsid()
        sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True, close_fds=True)
        pidfile.with_suffix(".tmp").write_text(str(sleeper.pid))
        pidfile.with_suffix(".tmp").replace(pidfile)
        os._exit(0)
    os.wait()


def hog(**context: object) -> None:
    held = []
    for step in range(60):  # 600 MiB in 10 MiB steps, every page touched
        held.append(bytearray(10 * 2**20))
        # Replaced, not rewritten: the stop can land mid-write, and a truncated file reads as ''.
        (_out(context) / "hog.mib.tmp").write_text(str((step + 1) * 10))
        (_out(context) / "hog.mib.tmp").replace(_out(context) / "hog.mib")
        time.sleep(0.02)
    time.sleep(600)


def neighbour(**context: object) -> None:
    (_out(context) / "oom_score_adj").write_text(Path("/proc/self/oom_score_adj").read_text().strip())


def _dag(dag_id: str) -> DAG:
    return DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        default_args={"retries": 0},
        max_active_tasks=64,
    )


with _dag("forklift_resume"):
    for i in range(20):
        DeferAtOnce(task_id=f"resume_{i:02d}")

with _dag("forklift_detach"):
    PythonOperator(task_id="detacher", python_callable=detach_a_sleeper)

with _dag("forklift_memory"):
    PythonOperator(task_id="hog", python_callable=hog, executor_config={"forklift": {"memory_limit_mb": 300}})
    PythonOperator(task_id="neighbour", python_callable=neighbour)
