"""forklift's pytest plugin, tested the way its users see it: in a separate pytest run (``pytester``)."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

EXECUTOR_TEST = textwrap.dedent(
    """
    import sys
    import uuid

    import pytest
    from forklift.lines import LINE

    def work(task_id):
        if not LINE.runs_workloads:
            from airflow.models.taskinstancekey import TaskInstanceKey
            return TaskInstanceKey("d", task_id, "r", 1, -1), ["airflow", "tasks", "run", "d", task_id, "r"]
        return LINE.task_workload("d", task_id)

    @pytest.mark.forklift(parallelism=1, run_mode="fork", prefetch_multiplier=1)
    def test_runs_work_and_reports(forklift_executor):
        ex = forklift_executor.executor
        assert ex.settings.parallelism == 1 and ex.settings.prefetch_multiplier == 1
        assert len(ex.strategy.worker_pids()) == 1
        # Neither task can succeed here (no DAG, no API server): each still gets exactly one event.
        events = forklift_executor.run([work("a"), work("b")], timeout=120)
        assert [str(state) for state, _ in events.values()] == ["failed", "failed"]

    @pytest.mark.parametrize("forklift_executor", [{"parallelism": 0}], indirect=True)
    def test_settings_by_parametrize(forklift_executor):
        assert forklift_executor.executor.settings.unlimited

    def test_plain_tests_do_not_load_airflow():
        pass
    """
)


def test_forklift_executor_fixture(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(EXECUTOR_TEST)
    # No API server: make the Task SDK give up at once instead of retrying for a minute.
    monkeypatch.setenv("AIRFLOW__WORKERS__EXECUTION_API_RETRIES", "0")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "http://127.0.0.1:9/execution/")
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::DeprecationWarning",
        "-o",
        "addopts=",
    )
    result.assert_outcomes(passed=3)


def test_fixtures_are_inert_until_requested(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys
        def test_nothing_imported():
            assert "airflow" not in sys.modules and "forklift.executor" not in sys.modules
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    markers = pytester.runpytest_subprocess("--markers").stdout.str()
    assert "@pytest.mark.forklift(**settings)" in markers
