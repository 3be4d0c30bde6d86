"""Run the demo DAG through a real Airflow scheduler using forklift, and print what happened.

Starts ``airflow db migrate``, ``api-server``, ``dag-processor`` and ``scheduler`` (Airflow 3, SQLite;
on Airflow 2, a private PostgreSQL and the scheduler) in a temporary AIRFLOW_HOME, triggers ``forklift_demo``, prints one row per task and the totals,
and stops everything it started. ``--compare`` runs the same DAG through Airflow's own
LocalExecutor afterwards, on the same deployment, and prints both totals side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from forklift.testing.measure import percentile
from forklift.testing.postgres import PostgresServer
from forklift.testing.stack import AirflowStack, TaskRow, airflow_major

DAG_ID = "forklift_demo"
DAGS = Path(__file__).resolve().parent / "dags"


def run_once(
    stack: AirflowStack, executor: str, parallelism: int, mode: str, run_id: str
) -> tuple[list[TaskRow], float]:
    env = {
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__FORKLIFT__PARALLELISM": str(parallelism),
        "AIRFLOW__FORKLIFT__RUN_MODE": mode,
        # Airflow's own LocalExecutor picks its mode from here (on Airflow 2).
        "AIRFLOW__CORE__EXECUTE_TASKS_NEW_PYTHON_INTERPRETER": str(mode == "subprocess"),
    }
    if executor == "LocalExecutor":  # Airflow's own reads [core] parallelism (Airflow 3 refuses 0)
        env["AIRFLOW__CORE__PARALLELISM"] = str(parallelism or (32 if stack.major >= 3 else 0))
    stack.start_scheduler(env)
    try:
        stack.trigger(DAG_ID, run_id)
        stack.wait_for_run(DAG_ID, run_id, timeout=600)
    finally:
        stack.stop_component("scheduler")
    start, end = stack.dag_run_times(DAG_ID, run_id)
    wall = (end - start).total_seconds() if start and end else float("nan")
    return stack.task_instances(DAG_ID, run_id), wall


def totals(rows: list[TaskRow], wall: float) -> dict[str, str]:
    waits = [r.queued_to_start for r in rows if r.queued_to_start is not None]
    durations = [r.duration for r in rows if r.duration is not None]
    ok = sum(r.state == "success" for r in rows)
    return {
        "tasks": f"{len(rows)}",
        "succeeded": f"{ok}",
        "failed": f"{len(rows) - ok}",
        "DAG run wall s": f"{wall:.1f}",
        "queued→start p50 s": f"{statistics.median(waits):.2f}" if waits else "-",
        "queued→start p95 s": f"{percentile(waits, 0.95):.2f}",
        "duration p50 s": f"{statistics.median(durations):.2f}" if durations else "-",
    }


def print_tasks(rows: list[TaskRow]) -> None:
    print(f"{'task':<12} {'state':<9} {'queued→start s':>15} {'duration s':>11}")
    print("-" * 50)
    for r in rows:
        q = f"{r.queued_to_start:.2f}" if r.queued_to_start is not None else "-"
        d = f"{r.duration:.2f}" if r.duration is not None else "-"
        print(f"{r.task_id:<12} {r.state or '-':<9} {q:>15} {d:>11}")


def print_totals(columns: dict[str, dict[str, str]]) -> None:
    names = list(columns)
    keys = list(next(iter(columns.values())))
    width = max(len(k) for k in keys)
    print(f"{'':<{width}}  " + "  ".join(f"{n:>30}" for n in names))
    for key in keys:
        print(f"{key:<{width}}  " + "  ".join(f"{columns[n][key]:>30}" for n in names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallelism", type=int, default=4, help="[forklift] parallelism (0 = one process per task)")
    parser.add_argument("--run-mode", choices=["fork", "subprocess"], default="fork")
    parser.add_argument("--compare", action="store_true", help="also run Airflow's own LocalExecutor and compare")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary AIRFLOW_HOME (logs, DB)")
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="forklift-demo-"))
    print(
        f"AIRFLOW_HOME={home}  (api-server, dag-processor and scheduler logs in {home / 'component-logs'})", flush=True
    )
    columns: dict[str, dict[str, str]] = {}
    t0 = time.monotonic()
    database = None
    if airflow_major() < 3:  # Airflow 2 refuses SQLite with any parallel executor
        print("starting a private PostgreSQL …", flush=True)
        database = PostgresServer()
        database.start()
    try:
        run_demo(args, home, columns, database.url if database else None)
    finally:
        if database is not None:
            database.stop()
    print()
    print_totals(columns)
    print(f"\n(demo took {time.monotonic() - t0:.0f} s; everything it started has been stopped)")
    if not args.keep_home:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    failed = [c for c in columns.values() if c["failed"] != "0"]
    return 1 if failed else 0


def run_demo(args: argparse.Namespace, home: Path, columns: dict[str, dict[str, str]], db_url: str | None) -> None:
    import airflow

    with AirflowStack(home, DAGS, sql_alchemy_conn=db_url) as stack:
        print(
            f"Airflow {airflow.__version__}: migrating the metadata DB ({'PostgreSQL' if db_url else 'SQLite'}) …",
            flush=True,
        )
        stack.migrate()
        print("starting api-server and dag-processor …" if stack.major >= 3 else "serializing DAGs …", flush=True)
        stack.start_services()
        stack.wait_for_dag(DAG_ID)
        label = f"forklift p={args.parallelism} {args.run_mode}"
        print(f"running {DAG_ID} through forklift.LocalExecutor ({label}) …", flush=True)
        rows, wall = run_once(stack, "forklift.LocalExecutor", args.parallelism, args.run_mode, "demo_forklift")
        print()
        print_tasks(rows)
        columns[label] = totals(rows, wall)
        if args.compare:
            upstream = f"Airflow LocalExecutor p={args.parallelism or (32 if stack.major >= 3 else 0)}"
            print(f"\nrunning {DAG_ID} through Airflow's own LocalExecutor ({upstream}) …", flush=True)
            rows_up, wall_up = run_once(stack, "LocalExecutor", args.parallelism, args.run_mode, "demo_upstream")
            columns[upstream] = totals(rows_up, wall_up)


if __name__ == "__main__":
    sys.exit(main())
