"""A real Airflow deployment for the integration tests: migrated once, services shared by the session.

The scheduler is restarted per test with that test's forklift settings; api-server and
dag-processor keep running. Everything started here is stopped here, by process group.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from forklift.testing.measure import peak_overlap
from forklift.testing.stack import AirflowStack

DAGS = Path(__file__).resolve().parent.parent / "dags"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def marker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where DAG-level callbacks (fixed at parse time) leave their marks."""
    return tmp_path_factory.mktemp("markers")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, marker_dir: Path) -> Iterator[AirflowStack]:
    home = tmp_path_factory.mktemp("airflow-home")
    st = AirflowStack(
        home,
        DAGS,
        env={"AIRFLOW__CORE__TEST_CONNECTION": "Enabled", "FORKLIFT_TEST_MARKER_DIR": str(marker_dir)},
    )
    try:
        st.migrate()
        st.start_services()
        st.wait_for_dag("forklift_matrix")
        yield st
    finally:
        st.stop()
    left = st.leftover_processes()
    assert not left, f"processes left behind by the stack: {[p.cmdline() for p in left]}"


def peak_concurrency(spans_dir: Path) -> int:
    """How many tasks ran at once, from the start/end times the tasks recorded themselves."""
    spans = [json.loads(path.read_text()) for path in spans_dir.glob("*.json")]
    return peak_overlap((span["start"], span["end"]) for span in spans)
