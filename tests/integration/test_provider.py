"""forklift as Airflow's CLI sees it: a provider with an executor and a [forklift] config section (both lines)."""

from __future__ import annotations

import pytest

from forklift.testing.stack import AirflowStack

pytestmark = [pytest.mark.integration, pytest.mark.smoke, pytest.mark.timeout(300)]


def test_listed_as_a_provider_with_its_executor(stack: AirflowStack) -> None:
    providers = stack.airflow("providers", "list", "--output", "plain")
    assert "airflow-forklift" in providers
    assert "forklift.LocalExecutor" in stack.airflow("providers", "executors", "--output", "plain")


def test_config_knows_forklifts_settings(stack: AirflowStack) -> None:
    assert stack.airflow("config", "get-value", "forklift", "prefetch_multiplier").strip() == "4"
    assert stack.airflow("config", "get-value", "forklift", "kill_grace").strip() == "5"
    # A value set by the deployment wins over the declared default.
    value = stack.airflow("config", "get-value", "forklift", "kill_grace", env={"AIRFLOW__FORKLIFT__KILL_GRACE": "9"})
    assert value.strip() == "9"
    listing = stack.airflow("config", "list", "--section", "forklift", "--include-descriptions", "--include-examples")
    for key in ("parallelism", "run_mode", "prefetch_multiplier", "shutdown_timeout", "wake_supervisor"):
        assert f"{key} =" in listing
    assert "worker_prefetch_multiplier" in listing  # the description, from forklift's declaration


def test_no_warning_about_forklifts_cli(stack: AirflowStack) -> None:
    """Airflow 3.2+ warns about executors whose provider declares no 'cli' section; forklift declares one."""
    import subprocess

    proc = subprocess.run(
        [stack.python, "-m", "airflow", "providers", "list"],
        env=stack.env,
        cwd=stack.home,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    output = proc.stdout + proc.stderr
    assert "missing 'cli' section" not in output and "forklift" in output


def _doctor(stack: AirflowStack, **env: str) -> tuple[int, str]:
    import subprocess
    from pathlib import Path

    proc = subprocess.run(  # noqa: PLW1510 - a FAIL line exits non-zero; the test reads both
        [str(Path(stack.python).parent / "forklift"), "doctor"],
        env={**stack.env, **env},
        cwd=stack.home,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return proc.returncode, proc.stdout


def test_doctor_passes_a_working_deployment(stack: AirflowStack) -> None:
    code, out = _doctor(stack)
    assert code == 0, out
    assert "OK    executor" in out and "OK    database" in out
    if stack.major >= 3:
        assert "OK    execution API" in out  # the stack's api-server answers


def test_doctor_names_what_is_wrong(stack: AirflowStack) -> None:
    env = {"AIRFLOW__FORKLIFT__PARALLELISM": "-1", "AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}
    if stack.major >= 3:
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = "http://127.0.0.1:1/execution/"
    code, out = _doctor(stack, **env)
    assert code == 1, out
    assert "FAIL  executor" in out and "'LocalExecutor' does not name forklift.LocalExecutor" in out
    assert "FAIL  settings" in out and "[forklift] parallelism" in out and "-1" in out
    if stack.major >= 3:
        assert "FAIL  execution API" in out and "127.0.0.1:1/execution/health" in out
