"""Which executor really ran a task: the task records its ancestors' command lines, the test reads them.

Process titles name the executor whose worker a task ran under (forklift's: ``airflow worker --
forklift…``; Airflow's LocalExecutor: ``airflow worker -- LocalExecutor``; Celery: ``[celeryd: …]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil

from forklift.workers import TITLE_PREFIX


def record_ancestry(**context: Any) -> None:
    """A PythonOperator callable: writes ``<conf.out_dir>/<task_id>.json`` with its ancestors' command lines."""
    lines = []
    for proc in psutil.Process().parents():
        try:
            lines.append(" ".join(proc.cmdline()))
        except psutil.Error:  # an ancestor that went away, or is not ours to read
            continue
    out = Path(context["dag_run"].conf["out_dir"])
    (out / f"{context['ti'].task_id}.json").write_text(json.dumps(lines))


def read_ancestry(out_dir: Path, task_id: str) -> list[str]:
    return list(json.loads((Path(out_dir) / f"{task_id}.json").read_text()))


def under_forklift_worker(ancestry: list[str]) -> bool:
    return any(line.startswith(TITLE_PREFIX) for line in ancestry)
