"""Which of a stopping scheduler's children the test stack may release: Airflow's own idle workers only."""

from __future__ import annotations

import pytest

from forklift.testing.stack import _is_airflows_own_idle_worker


@pytest.mark.parametrize(
    ("title", "released"),
    [
        ("airflow worker -- LocalExecutor: <idle>", True),  # Airflow 3, waiting for work
        ("airflow worker -- LocalExecutor [team_a]: <idle>", True),  # Airflow 3.4, a team's executor
        ("airflow worker -- LocalExecutor", True),  # Airflow 2, waiting for work
        ("airflow worker -- LocalExecutor: 01a2346c-87ca-7ab0-a371-f7dfbb1fc568", False),  # Airflow 3, busy
        ("airflow worker -- LocalExecutor: ['airflow', 'tasks', 'run', 'd', 't']", False),  # Airflow 2, busy
        ("airflow worker -- forklift: <idle>", False),  # forklift's own worker
        ("airflow serve-logs", False),
    ],
)
def test_only_airflows_own_idle_workers_are_released(title: str, released: bool) -> None:
    assert _is_airflows_own_idle_worker(title) is released
