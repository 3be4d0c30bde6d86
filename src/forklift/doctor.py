"""``forklift doctor``: check a deployment line by line, and say what is wrong and what to do.

Each check returns a :class:`Check`. ``FAIL`` means the scheduler will refuse to start or tasks will
fail; ``WARN`` means it works but not as well as it could. The checks read configuration through a
``lookup(section, key)`` like the executor does, so they see what the scheduler would see.
"""

from __future__ import annotations

import multiprocessing
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from forklift.settings import (
    READY_HORIZON,
    ConfigError,
    Lookup,
    RunMode,
    Settings,
    executor_names,
    holds_ready_beyond_cap,
    load_settings,
)

OK, WARN, FAIL = "OK", "WARN", "FAIL"
EXECUTOR_PATH = "forklift.LocalExecutor"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    message: str

    def line(self) -> str:
        return f"{self.status:<5} {self.name:<16} {self.message}"


def check_executor(lookup: Lookup) -> Check:
    raw = lookup("core", "executor") or ""
    names = executor_names(raw)
    if EXECUTOR_PATH in names:
        where = "the default executor" if names and names[0] == EXECUTOR_PATH else "one of the executors"
        return Check("executor", OK, f"[core] executor = {raw!r}: forklift is {where}")
    return Check(
        "executor",
        FAIL,
        f"[core] executor = {raw!r} does not name {EXECUTOR_PATH}; set [core] executor = {EXECUTOR_PATH} "
        f"(or AIRFLOW__CORE__EXECUTOR), or add it to the list",
    )


def check_settings(lookup: Lookup, base_parallelism: Callable[[int, Lookup], int]) -> tuple[Check, Settings | None]:
    try:
        settings = load_settings(lookup)
        base_parallelism(settings.parallelism, lookup)
    except ConfigError as exc:
        return Check("settings", FAIL, str(exc)), None
    if settings.unlimited:
        shape = "UnlimitedParallelism (one process per task)"
    else:
        shape = f"LimitedParallelism, {settings.parallelism} workers, {settings.slots} slots (prefetch_multiplier {settings.prefetch_multiplier})"
    return Check("settings", OK, f"{shape}, run mode {settings.run_mode.value}"), settings


def check_scheduler_cap(settings: Settings, cap: int | None, held_beyond_cap: bool = False) -> Check:
    """What ``[core] parallelism`` gives forklift, in one line (the executor logs the same at start)."""
    if settings.unlimited or cap is None or cap >= settings.slots:
        return Check(
            "scheduler cap",
            OK,
            f"[core] parallelism = {cap if cap is not None else 'unlimited'} leaves forklift its slots",
        )
    if held_beyond_cap:
        return Check(
            "scheduler cap",
            OK,
            f"[core] parallelism = {cap}: {settings.parallelism} workers run at most {settings.parallelism} tasks at "
            f"once; up to {settings.prefetch} more are held ready (prefetch_multiplier {settings.prefetch_multiplier}) "
            f"while a worker should take them within {READY_HORIZON:g} s, uncounted against the cap since they do "
            "not run (forklift is the scheduler's only executor)",
        )
    if settings.parallelism_from_core:
        return Check(
            "scheduler cap",
            OK,
            f"[core] parallelism = {cap} sets both forklift's workers and the cap the scheduler shares among its "
            "executors, so no task is held ready (no prefetch); set [forklift] parallelism below it to have some",
        )
    return Check(
        "scheduler cap",
        WARN,
        f"[core] parallelism = {cap} caps what the scheduler queues below forklift's {settings.slots} slots; "
        f"raise it to {settings.slots} for the prefetch to take effect",
    )


def check_start_method(lookup: Lookup) -> Check:
    if "fork" not in multiprocessing.get_all_start_methods():
        return Check("start method", FAIL, f"this platform ({sys.platform}) cannot fork; forklift's workers are forked")
    configured = lookup("core", "mp_start_method")
    note = f"; [core] mp_start_method = {configured!r} governs Airflow's own processes only" if configured else ""
    return Check("start method", OK, f"fork is available (forklift always forks its workers){note}")


def check_database(lookup: Lookup, airflow_major: int) -> Check:
    url = lookup("database", "sql_alchemy_conn") or lookup("core", "sql_alchemy_conn") or ""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower() or "(not set)"
    if scheme == "sqlite" and airflow_major < 3:
        return Check(
            "database",
            FAIL,
            f"SQLite with Airflow {airflow_major}: its scheduler refuses SQLite with any parallel executor; "
            "use PostgreSQL or MySQL ([database] sql_alchemy_conn)",
        )
    if scheme == "sqlite":
        return Check("database", OK, "SQLite: Airflow 3 allows it on one machine; use PostgreSQL for more")
    return Check("database", OK, f"{scheme}")


def check_execution_api(url: str, timeout: float = 5.0) -> Check:
    health = url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as resp:
            return Check("execution API", OK, f"{health} answered HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        return Check(
            "execution API",
            FAIL,
            f"{health} answered HTTP {exc.code}; is [core] execution_api_server_url the api-server?",
        )
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check(
            "execution API",
            FAIL,
            f"{health} is not reachable ({reason}); tasks cannot start without it: run `airflow api-server`, "
            "or set [core] execution_api_server_url to where it runs",
        )


def check_subprocess_mode(settings: Settings, airflow_major: int) -> Check:
    if settings.run_mode is RunMode.FORK:
        return Check("subprocess mode", OK, "not used (run mode fork)")
    if airflow_major >= 3:
        return Check("subprocess mode", OK, f"tasks start as `{sys.executable} -m forklift.execute_workload`")
    found = shutil.which("airflow")
    if found is None:
        return Check(
            "subprocess mode",
            FAIL,
            "`airflow` is not on PATH, and Airflow 2 runs each task as an `airflow tasks run` command; put the "
            "scheduler's environment on PATH, or use [forklift] run_mode = fork",
        )
    return Check("subprocess mode", OK, f"`airflow` is {found}")


def check_handover(settings: Settings, default_records_dir: str) -> Check:
    """Running tasks outlive the scheduler only if their records directory is usable."""
    from forklift.handover import RecordsDir

    path = settings.records_dir or default_records_dir
    try:
        RecordsDir(path).ensure()
    except OSError as exc:
        return Check("handover", FAIL, f"{exc}; set [forklift] records_dir to a directory this user can write")
    if settings.on_shutdown.value == "stop" and settings.orphan_timeout == 0:
        return Check("handover", OK, f"off: tasks stop with their scheduler (records in {path})")
    return Check(
        "handover",
        OK,
        f"tasks outlive their scheduler (on_shutdown = {settings.on_shutdown.value}); unadopted after "
        f"{settings.orphan_timeout:g} s they are stopped; records in {path}",
    )


def check_line(name: str) -> Check:
    """Which Airflow line forklift serves here (the one adapter module it uses)."""
    from airflow import __version__

    return Check("airflow", OK, f"Airflow {__version__}: forklift's Airflow {name} line (forklift.lines)")


def run_checks() -> list[Check]:
    """Every check, against this process's Airflow configuration."""
    from forklift.lines import LINE

    lookup = LINE.config_lookup()
    checks = [check_line(LINE.name), check_executor(lookup)]
    settings_check, settings = check_settings(lookup, LINE.base_parallelism)
    checks.append(settings_check)
    if settings is not None:
        checks.append(
            check_scheduler_cap(settings, LINE.scheduler_cap(lookup), holds_ready_beyond_cap(settings, lookup))
        )
    checks += [check_start_method(lookup), check_database(lookup, LINE.major)]
    if LINE.runs_workloads:
        checks.append(check_execution_api(LINE.execution_api_url(None)))
    if settings is not None:
        checks.append(check_subprocess_mode(settings, LINE.major))
        checks.append(check_handover(settings, LINE.default_records_dir()))
    return checks
