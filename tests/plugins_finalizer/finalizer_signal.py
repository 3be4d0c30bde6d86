"""A scheduler plugin for one test: it makes SIGTERM land inside a finalizer in the scheduler's main thread.

When a ``forklift_quick`` run whose id starts with ``finalizer`` succeeds, the listener drops an
object whose ``__del__`` marks a file and then sleeps: the test's SIGTERM arrives there, and Python
swallows the handler's ``SystemExit`` ("Exception ignored in ...").
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin

try:
    from airflow.listeners import hookimpl
except ImportError:  # pragma: no cover - where Airflow 3 moved it
    from airflow.sdk.listener import hookimpl  # type: ignore[no-redef]


class _SleepsWhenFinalized:
    def __del__(self) -> None:
        Path(os.environ["FORKLIFT_TEST_FINALIZER_MARK"]).write_text(str(os.getpid()))
        time.sleep(120)  # the SIGTERM lands here


class _Listener:
    @hookimpl
    def on_dag_run_success(self, dag_run, msg):  # Airflow's hook signature
        if dag_run.dag_id == "forklift_quick" and dag_run.run_id.startswith("finalizer"):
            _SleepsWhenFinalized()  # finalized at once, in the scheduler's main thread


class FinalizerSignalPlugin(AirflowPlugin):
    name = "forklift_test_finalizer_signal"
    listeners = [_Listener()]  # noqa: RUF012 - the shape AirflowPlugin declares
