"""The one seam between forklift and Airflow's release lines: one module per line.

::

    forklift.executor ─┐                      ┌─ airflow_3_4 ─► airflow_3_3 ─┐
    forklift.doctor   ─┼─► lines.LINE ────────┤  airflow_3_2, airflow_3_1  ──┼─► task_sdk.TaskSdkLine ─┐
    pytest plugin     ─┘   (picked once from  └─ airflow_2_11, airflow_2_10 ─┴─► cli_commands.CommandLine┴─► base.AirflowLine
                            airflow.__version__)

Every difference between lines (which workloads exist and how they are keyed and queued, the states
they report, how one is run, which capability flags the executor declares, where the metrics facade
lives) is answered by the line's module; nothing else in forklift tests a version. Supporting the next
line means adding its module here (usually a subclass of the line before it) and its pinned test
environment (``requirements/airflow-<line>.txt``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from packaging.version import Version

if TYPE_CHECKING:
    from forklift.lines.base import AirflowLine

#: (major, minor) → the module that serves it.
MODULES: dict[tuple[int, int], str] = {
    (3, 4): "forklift.lines.airflow_3_4",
    (3, 3): "forklift.lines.airflow_3_3",
    (3, 2): "forklift.lines.airflow_3_2",
    (3, 1): "forklift.lines.airflow_3_1",
    (2, 11): "forklift.lines.airflow_2_11",
    (2, 10): "forklift.lines.airflow_2_10",
}


class UnsupportedAirflow(ImportError):
    """The installed Airflow is not a line forklift serves."""


def line_for(version: str) -> AirflowLine:
    """The line serving Airflow ``version`` (pre-releases of a line count as that line)."""
    release = Version(version).release
    module = MODULES.get((release[0], release[1]) if len(release) > 1 else (release[0], 0))
    if module is None:
        served = ", ".join(f"{major}.{minor}" for major, minor in sorted(MODULES))
        raise UnsupportedAirflow(
            f"forklift does not support Airflow {version}; it serves the Airflow lines {served}. "
            "Install one of those, or a forklift release that serves yours."
        )
    line: AirflowLine = importlib.import_module(module).LINE
    return line


def _installed() -> AirflowLine:
    from airflow import __version__

    return line_for(__version__)


#: The line of the Airflow installed next to forklift.
LINE: AirflowLine = _installed()

__all__ = ["LINE", "MODULES", "UnsupportedAirflow", "line_for"]
