"""``forklift doctor``'s checks, each fed a configuration that is right and one that is wrong (both lines)."""

from __future__ import annotations

import socket

import pytest

from forklift.doctor import (
    FAIL,
    OK,
    WARN,
    check_database,
    check_execution_api,
    check_executor,
    check_handover,
    check_scheduler_cap,
    check_settings,
    check_subprocess_mode,
)
from forklift.lines import LINE
from forklift.settings import load_settings

from support import lookup_from


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("forklift.LocalExecutor", OK),
        ("LocalExecutor,fl:forklift.LocalExecutor", OK),
        ("forklift.LocalExecutor,CeleryExecutor", OK),
        ("LocalExecutor", FAIL),
        ("", FAIL),
    ],
)
def test_executor(raw: str, status: str) -> None:
    check = check_executor(lookup_from({("core", "executor"): raw}))
    assert check.status == status and repr(raw) in check.message


def test_settings_refusal_is_passed_on_with_the_settings_name() -> None:
    check, settings = check_settings(lookup_from({("forklift", "parallelism"): "-2"}), LINE.base_parallelism)
    assert (
        check.status == FAIL
        and settings is None
        and "[forklift] parallelism" in check.message
        and "-2" in check.message
    )
    check, settings = check_settings(lookup_from({("forklift", "parallelism"): "4"}), LINE.base_parallelism)
    assert check.status == OK and settings is not None and "16 slots" in check.message


def test_scheduler_cap() -> None:
    fits = load_settings(lookup_from({("forklift", "parallelism"): "8"}))  # 8 workers × 4 = 32 slots
    assert check_scheduler_cap(fits, 32).status == OK
    from_core = load_settings(lookup_from({("core", "parallelism"): "32"}))  # workers and cap are one setting
    check = check_scheduler_cap(from_core, 32)
    assert check.status == OK and "no prefetch" in check.message
    check = check_scheduler_cap(from_core, 32, held_beyond_cap=True)  # forklift is the only executor
    assert (
        check.status == OK and "32 workers run at most 32 tasks at once; up to 96 more are held ready" in check.message
    )
    too_many = load_settings(lookup_from({("forklift", "parallelism"): "16"}))
    check = check_scheduler_cap(too_many, 32)
    assert check.status == WARN and "raise it to 64" in check.message


def test_database_by_line() -> None:
    sqlite = lookup_from({("database", "sql_alchemy_conn"): "sqlite:////tmp/a.db"})
    postgres = lookup_from({("database", "sql_alchemy_conn"): "postgresql+psycopg2://u@h/db"})
    assert check_database(sqlite, 2).status == FAIL
    assert check_database(sqlite, 3).status == OK
    assert check_database(postgres, 2).status == OK and check_database(postgres, 2).message == "postgresql"


def test_execution_api_unreachable_names_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    check = check_execution_api(f"http://127.0.0.1:{port}/execution/", timeout=2)
    assert check.status == FAIL and f"127.0.0.1:{port}/execution/health" in check.message


def test_subprocess_mode_on_airflow_2_needs_airflow_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(lookup_from({("forklift", "run_mode"): "subprocess"}), parallelism=1)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert check_subprocess_mode(settings, 2).status == FAIL
    assert check_subprocess_mode(settings, 3).status == OK
    assert check_subprocess_mode(load_settings(lookup_from({}), parallelism=1), 2).status == OK  # fork mode


def test_handover(tmp_path) -> None:
    settings = load_settings(lookup_from({}), parallelism=2)
    check = check_handover(settings, str(tmp_path / "records"))
    assert check.status == OK and "outlive" in check.message and str(tmp_path / "records") in check.message
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    check = check_handover(settings, str(blocker / "records"))  # under a file: cannot be created
    assert check.status == FAIL and "[forklift] records_dir" in check.message
