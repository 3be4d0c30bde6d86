"""The plugin's airflow_home and airflow_stack fixtures, used as a DAG author would, in a separate pytest run."""

from __future__ import annotations

import textwrap

import psutil
import pytest

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

DAG = textwrap.dedent(
    """
    import pendulum
    try:
        from airflow.sdk import DAG
    except ImportError:
        from airflow import DAG
    try:
        from airflow.providers.standard.operators.python import PythonOperator
    except ImportError:
        from airflow.operators.python import PythonOperator

    def ok():
        return None

    def boom():
        raise RuntimeError("on purpose")

    with DAG(dag_id="authors_dag", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
             catchup=False, default_args={"retries": 0}):
        PythonOperator(task_id="ok", python_callable=ok) >> PythonOperator(task_id="after", python_callable=ok)
        PythonOperator(task_id="boom", python_callable=boom)
    """
)

TEST = textwrap.dedent(
    """
    def test_my_dag(airflow_home, airflow_stack):
        assert (airflow_home.path / "airflow.db").exists() or airflow_home.database is not None
        states = airflow_stack.run_dag("authors_dag", timeout=300)
        assert states == {"after": "success", "boom": "failed", "ok": "success"}
    """
)


def test_a_dag_author_tests_a_dag_in_a_real_scheduler(pytester: pytest.Pytester) -> None:
    pytester.mkdir("dags").joinpath("authors_dag.py").write_text(DAG)
    pytester.makepyfile(test_authors=TEST)
    pytester.makeini("[pytest]\nforklift_dags_folder = dags\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1)
    # The fixtures stopped everything they started.
    left = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if str(pytester.path) in proc.environ().get("AIRFLOW_HOME", "") and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc.cmdline())
        except psutil.Error:
            continue
    assert not left, left
