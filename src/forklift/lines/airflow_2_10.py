"""Airflow 2.10: ``airflow tasks run …`` commands (see :mod:`forklift.lines.cli_commands`)."""

from __future__ import annotations

from forklift.lines.cli_commands import CommandLine


class Airflow210(CommandLine):
    name = "2.10"


LINE = Airflow210()
