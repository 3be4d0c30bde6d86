"""Airflow 2.11: ``airflow tasks run …`` commands, as on 2.10 (see :mod:`forklift.lines.cli_commands`)."""

from __future__ import annotations

from forklift.lines.cli_commands import CommandLine


class Airflow211(CommandLine):
    name = "2.11"


LINE = Airflow211()
