"""Scaling out: forklift for light tasks, Airflow's CeleryExecutor (real Redis, real worker) for heavy ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from forklift.testing.ancestry import read_ancestry, under_forklift_worker
from forklift.testing.redis import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

DAGS = Path(__file__).resolve().parent.parent / "dags_celery"


def test_light_on_forklift_heavy_on_celery(stack_factory, tmp_path: Path) -> None:
    with RedisServer() as redis:
        env = {
            "AIRFLOW__CORE__EXECUTOR": "forklift.LocalExecutor,CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": redis.url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__FORKLIFT__PARALLELISM": "2",
        }
        stack = stack_factory(DAGS, env)
        # Celery keeps task results next to Airflow's own metadata.
        backend = "db+" + stack.sql_alchemy_conn
        stack.env["AIRFLOW__CELERY__RESULT_BACKEND"] = backend
        stack.wait_for_dag("forklift_celery")
        stack.start_component("celery-worker", "celery", "worker", "--concurrency", "2")
        stack.start_scheduler()
        try:
            stack.trigger("forklift_celery", "handoff_1", {"out_dir": str(tmp_path)})
            state = stack.wait_for_run("forklift_celery", "handoff_1", timeout=400)
        finally:
            code = stack.stop_component("scheduler")
            stack.stop_component("celery-worker")
        assert stack.stopped_cleanly("scheduler", code), stack.log_tail("scheduler")
        assert state == "success", stack.log_tail("celery-worker")
        assert {r.task_id: r.state for r in stack.task_instances("forklift_celery", "handoff_1")} == {
            "light": "success",
            "heavy": "success",
        }
        light = read_ancestry(tmp_path, "light")
        heavy = read_ancestry(tmp_path, "heavy")
        assert under_forklift_worker(light), light
        assert not under_forklift_worker(heavy), heavy
        # Under the Celery worker's process tree (its pool processes are titled "[celeryd: …]").
        assert any("celery worker" in line or line.startswith("[celeryd") for line in heavy), heavy
