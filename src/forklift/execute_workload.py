"""``python -m forklift.execute_workload --json-path /dev/stdin``: one workload in a fresh interpreter.

forklift's subprocess run mode starts this instead of Airflow's own ``execute_workload`` (which
not every 3.x line has for every workload kind). The workload's JSON (it carries the task's token)
comes on stdin; the line's own supervisor runs it, as in fork mode, and its exit code is this
process's. The supervisor is woken as soon as its task process exits (:mod:`forklift.supervisor_wake`)
unless ``FORKLIFT_WAKE_SUPERVISOR=0``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import cast


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one Airflow 3 workload (JSON) through its supervisor.")
    parser.add_argument("--json-path", required=True, help="file holding the workload's JSON (/dev/stdin)")
    args = parser.parse_args(argv)

    from forklift.lines import LINE
    from forklift.lines.task_sdk import TaskSdkLine

    line = cast(TaskSdkLine, LINE)
    try:
        with open(args.json_path, "rb") as file:
            workload = line.decode_workload(file.read())
    except Exception as exc:  # noqa: BLE001 - one line to the task's log, then a failed exit
        print(f"forklift: could not read a workload from {args.json_path}: {exc}", file=sys.stderr)
        return 2

    if os.environ.get("FORKLIFT_WAKE_SUPERVISOR", "1") != "0":
        from forklift.supervisor_wake import wake_on_child_exit

        wake_on_child_exit()
    from airflow.settings import dispose_orm

    # As Airflow's own execute_workload: no DB connections of its own, its log lines as JSON on stdout.
    dispose_orm(do_log=False)
    try:
        from airflow.sdk.log import configure_logging

        configure_logging(output=sys.stdout.buffer, json_output=True)
    except Exception:  # noqa: BLE001, S110 - the task's own log file is set up by its supervisor either way
        pass
    server = os.environ.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "")
    title = line.describe(workload)
    return line.run_workload(workload, server, f"airflow supervisor -- forklift: {title}")


if __name__ == "__main__":
    sys.exit(main())
