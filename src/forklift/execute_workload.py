"""``python -m forklift.execute_workload``: Airflow's own ``execute_workload``, supervisor woken on exit.

forklift's subprocess run mode starts this in a fresh interpreter instead of
``python -m airflow.sdk.execution_time.execute_workload``. It takes the same arguments and hands
them to that module's ``main()`` unchanged; the only difference is that the supervisor it runs is
woken as soon as its task process exits (:mod:`forklift.supervisor_wake`).
``FORKLIFT_WAKE_SUPERVISOR=0`` in the environment turns that off.
"""

from __future__ import annotations

import os


def main() -> None:
    if os.environ.get("FORKLIFT_WAKE_SUPERVISOR", "1") != "0":
        from forklift.supervisor_wake import wake_on_child_exit

        wake_on_child_exit()
    from airflow.sdk.execution_time.execute_workload import main as airflow_main

    airflow_main()


if __name__ == "__main__":
    main()
