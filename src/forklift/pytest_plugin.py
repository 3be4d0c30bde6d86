"""forklift's pytest plugin (``pytest11`` entry point ``forklift``): fixtures for executor and DAG tests.

Nothing happens unless a test asks for a fixture; importing this module imports neither Airflow nor
forklift's executor.

- ``forklift_executor``: a started ``forklift.LocalExecutor``, ended after the test with nothing left
  running. Settings come from ``@pytest.mark.forklift(parallelism=2, run_mode="subprocess", ...)``
  (any ``[forklift]`` key) or from indirect parametrization with the same dict.
  ``forklift_executor.run(work, timeout=60)`` hands work to it and returns its events.
- ``airflow_home``: an isolated ``AIRFLOW_HOME`` with a migrated metadata DB, for the whole session
  (SQLite on Airflow 3; a private PostgreSQL on Airflow 2, which refuses SQLite with a parallel
  executor). Its DAGs folder is the ``forklift_dags_folder`` ini option (default ``dags``).
- ``airflow_stack``: a real scheduler (and on Airflow 3 an api-server and a dag-processor) running
  forklift on that home, for the session. ``airflow_stack.run_dag(dag_id, conf=None, timeout=300)``
  triggers a run and returns each task instance's final state. It stops exactly what it started.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("forklift_dags_folder", "DAGs folder for the airflow_home/airflow_stack fixtures", default="dags")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "forklift(**settings): [forklift] settings for the forklift_executor fixture, e.g. parallelism=2, run_mode='subprocess'",
    )


class ExecutorUnderTest:
    """A started ``forklift.LocalExecutor`` and a way to hand it work and wait for what it reports."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    def run(self, work: Iterable[Any], timeout: float = 60) -> dict[Any, tuple[Any, Any]]:
        """Queue ``work`` the way the scheduler does, heartbeat until each item has an event, and return them.

        Items are Airflow 3 workloads (``ExecuteTask``, callbacks, connection tests), or on Airflow 2
        ``(key, command)`` pairs. Raises ``TimeoutError`` naming the keys with no event after ``timeout`` s.
        """
        from forklift.lines import LINE

        keys = []
        for item in work:
            if LINE.runs_workloads:
                self.executor.queue_workload(item, session=None)
                keys.append(LINE.workload_key(item))  # type: ignore[attr-defined]
            else:
                # What Airflow 2's trigger_tasks does with a queued task, without a DB-backed TaskInstance.
                key, command = item
                self.executor.execute_async(key=key, command=command)
                self.executor.running.add(key)
                keys.append(key)
        events: dict[Any, tuple[Any, Any]] = {}
        deadline = time.monotonic() + timeout
        while True:
            self.executor.heartbeat()
            events.update(self.executor.get_event_buffer())
            missing = [k for k in keys if k not in events]
            if not missing:
                return {k: events[k] for k in keys}
            if time.monotonic() > deadline:
                raise TimeoutError(f"no event within {timeout:g} s for {missing}")
            time.sleep(0.05)


@pytest.fixture
def forklift_executor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ExecutorUnderTest]:
    """A started forklift.LocalExecutor (settings from @pytest.mark.forklift(...) or indirect params;
    parallelism 2 by default); .run(work, timeout) returns its events. Ended after the test, and the
    test fails if any process it started is still alive."""
    import psutil

    import forklift

    settings: dict[str, Any] = {}
    marker = request.node.get_closest_marker("forklift")
    if marker is not None:
        settings.update(marker.kwargs)
    if isinstance(getattr(request, "param", None), Mapping):
        settings.update(request.param)
    parallelism = settings.pop("parallelism", 2)
    for key, value in settings.items():
        monkeypatch.setenv(f"AIRFLOW__FORKLIFT__{key.upper()}", str(value))
    executor = forklift.LocalExecutor(parallelism=int(parallelism))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    executor.start()
    try:
        yield ExecutorUnderTest(executor)
    finally:
        executor.end()
        # Nothing the executor started may outlive it.
        _, alive = psutil.wait_procs(
            [p for p in psutil.Process().children(recursive=True) if p.pid not in before], timeout=10
        )
        for proc in alive:
            proc.kill()
        assert not alive, f"forklift left processes running: {[p.pid for p in alive]}"


class AirflowHome:
    """An isolated ``AIRFLOW_HOME`` with a migrated metadata DB."""

    def __init__(self, path: Path, dags_folder: Path, stack: Any, database: Any) -> None:
        self.path = path
        self.dags_folder = dags_folder
        self.stack = stack  # forklift.testing.stack.AirflowStack, not started
        self.database = database

    @property
    def env(self) -> dict[str, str]:
        """The environment for running ``airflow`` commands against this home."""
        return dict(self.stack.env)

    def __fspath__(self) -> str:
        return str(self.path)


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[AirflowHome]:
    """An isolated AIRFLOW_HOME with a migrated metadata DB (SQLite; PostgreSQL on Airflow 2), per session."""
    from forklift.testing.postgres import PostgresServer
    from forklift.testing.stack import AirflowStack, airflow_major

    dags = Path(pytestconfig.getini("forklift_dags_folder"))
    if not dags.is_absolute():
        dags = Path(pytestconfig.rootpath) / dags
    home = tmp_path_factory.mktemp("airflow_home")
    database = None
    if airflow_major() < 3:
        database = PostgresServer()
        database.start()
    try:
        stack = AirflowStack(home, dags, sql_alchemy_conn=database.url if database else None)
        stack.migrate()
        yield AirflowHome(home, dags, stack, database)
    finally:
        if database is not None:
            database.stop()


class RunningAirflow:
    """A running deployment with forklift as its executor."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack

    def run_dag(
        self, dag_id: str, conf: Mapping[str, Any] | None = None, timeout: float = 300
    ) -> dict[str, str | None]:
        """Trigger ``dag_id``, wait for the run to finish, and return ``{task_id: state}`` (mapped: ``task_id[i]``)."""
        self.stack.wait_for_dag(dag_id, timeout=timeout)
        run_id = f"pytest_{dag_id}_{time.time_ns()}"
        self.stack.trigger(dag_id, run_id, conf, via_api=True)
        self.stack.wait_for_run(dag_id, run_id, timeout=timeout)
        return {
            (row.task_id if row.map_index < 0 else f"{row.task_id}[{row.map_index}]"): row.state
            for row in self.stack.task_instances(dag_id, run_id)
        }


@pytest.fixture(scope="session")
def airflow_stack(airflow_home: AirflowHome) -> Iterator[RunningAirflow]:
    """A real scheduler (plus api-server and dag-processor on Airflow 3) running forklift on airflow_home;
    .run_dag(dag_id, conf=None, timeout=300) returns {task_id: final state}. Stops what it started."""
    stack = airflow_home.stack
    parallelism = os.environ.get("AIRFLOW__FORKLIFT__PARALLELISM", "4")
    try:
        stack.start_services()
        stack.start_scheduler({"AIRFLOW__FORKLIFT__PARALLELISM": parallelism})
        yield RunningAirflow(stack)
    finally:
        stack.stop()
