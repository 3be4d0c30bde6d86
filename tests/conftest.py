"""Shared test set-up.

Every test runs away from the user's own Airflow: a private AIRFLOW_HOME, set before Airflow loads.
Integration tests share one real Airflow deployment per session (SQLite on Airflow 3; a private
PostgreSQL on Airflow 2, which refuses SQLite with a parallel executor).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

for _name in [n for n in os.environ if n.startswith("AIRFLOW__")]:
    del os.environ[_name]
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="forklift-tests-airflow-home-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"

from forklift.testing.stack import AirflowStack, airflow_major  # noqa: E402

TESTS = Path(__file__).resolve().parent

# One Airflow line per environment: `pytest` (even `pytest tests`) never collects the other line's tests,
# which could not import there. Integration tests that only one line can run say so in their name.
if airflow_major() >= 3:
    collect_ignore_glob = ["airflow2/*", "integration/*_airflow2.py"]
else:
    collect_ignore_glob = ["airflow3/*", "integration/*_airflow3.py"]


# No test edits a DAG file while its deployment runs, so re-parsing every file every 30 s (Airflow's
# default) only spends CPU that two deployments at once on 2 cores need for their tasks. A file is
# still parsed when its deployment starts, and for every callback request.
QUIET_PARSING = {
    (
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"
        if airflow_major() >= 3
        else "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL"
    ): "600"
}


@pytest.fixture(scope="session")
def marker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where DAG-level callbacks (fixed at parse time) leave their marks."""
    return tmp_path_factory.mktemp("markers")


def start_stack(home: Path, dags: Path, env: dict[str, str], postgres: bool = False) -> tuple[AirflowStack, object]:
    """Migrate and start a deployment; on a PostgreSQL of its own on Airflow 2 (which refuses SQLite
    with a parallel executor) or when ``postgres`` (several schedulers). Returns (stack, db server)."""
    server = None
    conn = None
    if postgres or airflow_major() < 3:
        from forklift.testing.postgres import PostgresServer

        server = PostgresServer()
        server.start()
        conn = server.url
    st = AirflowStack(home, dags, sql_alchemy_conn=conn, env={**QUIET_PARSING, **env})
    try:
        st.migrate()
        st.start_services()
    except BaseException:
        st.stop()
        if server is not None:
            server.stop()
        raise
    return st, server


def stop_stack(st: AirflowStack, server: object) -> None:
    try:
        st.stop()
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
    left = st.leftover_processes()
    assert not left, f"processes left behind by the stack: {[p.cmdline() for p in left]}"


@pytest.fixture(scope="module")
def stack_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Start further deployments (e.g. with other [core] executor lists); each is stopped when the module
    that started it ends, so an idle deployment does not take CPU from the tests after it."""
    started: list[tuple[AirflowStack, object]] = []

    def make(dags: Path, env: dict[str, str], postgres: bool = False) -> AirflowStack:
        st, server = start_stack(tmp_path_factory.mktemp("airflow-home"), dags, env, postgres)
        started.append((st, server))
        return st

    try:
        yield make
    finally:
        for st, server in reversed(started):
            stop_stack(st, server)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, marker_dir: Path) -> Iterator[AirflowStack]:
    env = {"FORKLIFT_TEST_MARKER_DIR": str(marker_dir)}
    if airflow_major() >= 3:
        env["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"
    st, server = start_stack(tmp_path_factory.mktemp("airflow-home"), TESTS / "dags", env)
    try:
        st.wait_for_dag("forklift_matrix")
        yield st
    finally:
        stop_stack(st, server)
