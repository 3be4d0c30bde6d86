"""Airflow loads forklift the ways operators configure it, single or in a multi-executor list (both lines)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from airflow.executors import executor_loader
from airflow.executors.executor_loader import ExecutorLoader

import forklift


@pytest.fixture
def fresh_loader(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """ExecutorLoader caches what it parsed in module globals; start and end each test with none.

    The unit-test DB is SQLite, which Airflow 2 refuses for any parallel executor; these tests are
    about parsing and loading, so they use Airflow's own switch for that check (tested on its own
    in tests/airflow2).
    """
    monkeypatch.setenv("_AIRFLOW__SKIP_DATABASE_EXECUTOR_COMPATIBILITY_CHECK", "1")

    def clear() -> None:
        for name, value in vars(executor_loader).items():
            if name.startswith("_") and not name.startswith("__") and isinstance(value, (dict, list)):
                value.clear()

    clear()
    yield
    clear()


def _names() -> list[tuple[str | None, str]]:
    return [(n.alias, n.module_path) for n in ExecutorLoader.get_executor_names()]


def test_single(monkeypatch: pytest.MonkeyPatch, fresh_loader: None) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "forklift.LocalExecutor")
    assert _names() == [(None, "forklift.LocalExecutor")]
    assert isinstance(ExecutorLoader.get_default_executor(), forklift.LocalExecutor)


def test_first_of_a_list_is_the_default(monkeypatch: pytest.MonkeyPatch, fresh_loader: None) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "forklift.LocalExecutor,CeleryExecutor")
    names = _names()
    assert names[0] == (None, "forklift.LocalExecutor")
    assert names[1][0] == "CeleryExecutor"
    assert isinstance(ExecutorLoader.get_default_executor(), forklift.LocalExecutor)


def test_alias_next_to_airflows_own(monkeypatch: pytest.MonkeyPatch, fresh_loader: None) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor,fl:forklift.LocalExecutor")
    assert _names() == [
        ("LocalExecutor", "airflow.executors.local_executor.LocalExecutor"),
        ("fl", "forklift.LocalExecutor"),
    ]
    by_alias = ExecutorLoader.load_executor("fl")
    assert type(by_alias) is forklift.LocalExecutor
    assert type(ExecutorLoader.load_executor("forklift.LocalExecutor")) is forklift.LocalExecutor
    assert type(ExecutorLoader.get_default_executor()) is not forklift.LocalExecutor
