"""What Airflow 2 lines share: ``airflow tasks run …`` *commands*, whose ``LocalTaskJob`` talks to the DB.

``airflow_2_10`` and ``airflow_2_11`` subclass :class:`CommandLine` with what differs between them.
"""

from __future__ import annotations

from typing import Any

from forklift.jobs import Command, ForkCall, Job
from forklift.lines.base import PARSING_CONTEXT_DAG_ID, PARSING_CONTEXT_TASK_ID, AirflowLine, ExecutorTraits
from forklift.settings import Lookup, RunMode
from forklift.timeouts import TimeoutCache


class CommandRejected(ValueError):
    """A command forklift will not run: only ``airflow tasks run …`` is accepted."""


class Traits(ExecutorTraits):
    supports_pickling: bool = False  # read by Airflow 2's scheduler


class CommandLine(AirflowLine):
    major = 2
    runs_workloads = False
    traits = Traits

    def __init__(self) -> None:
        self._timeouts = TimeoutCache()

    def config_lookup(self, team_name: str | None = None) -> Lookup:
        """Airflow 2 has no teams: the deployment's configuration."""
        from airflow.configuration import conf

        def lookup(section: str, key: str) -> str | None:
            value = conf.get(section, key, fallback=None)
            return None if value is None else str(value)

        return lookup

    def base_parallelism(self, forklift_parallelism: int, lookup: Lookup) -> int:
        """Airflow 2 reads 0 as "unlimited" itself."""
        return forklift_parallelism

    def stats(self) -> Any:
        from airflow.stats import Stats

        return Stats

    def unqueue(self, executor: Any, key: Any) -> None:
        executor.queued_tasks.pop(key, None)

    def to_job(
        self, key: Any, command: Any, *, mode: RunMode, timeout: float | None = None, memory_limit: int = 0
    ) -> Job:
        """An ``airflow tasks run …`` command as an engine job; anything else is refused unrun."""
        if (
            not isinstance(command, (list, tuple))
            or not all(isinstance(part, str) for part in command)
            or list(command[:3]) != ["airflow", "tasks", "run"]
        ):
            shown = repr(command)
            if len(shown) > 200:
                shown = shown[:200] + "…"
            raise CommandRejected(
                f"forklift runs only ['airflow', 'tasks', 'run', …] commands (a list of strings); refused {shown}"
            )
        command = list(command)
        dag_id, task_id = dag_and_task(command)
        env = {PARSING_CONTEXT_DAG_ID: dag_id or "", PARSING_CONTEXT_TASK_ID: task_id or ""}
        env = {k: v for k, v in env.items() if v}
        title = (
            f"{getattr(key, 'dag_id', dag_id)}.{getattr(key, 'task_id', task_id)} "
            f"{getattr(key, 'run_id', '')} try {getattr(key, 'try_number', '')}"
        )
        runnable: ForkCall | Command
        if mode is RunMode.FORK:
            runnable = ForkCall(run_command_in_child, (command, title))
        else:
            runnable = Command(command)
        return Job(
            key=key, runnable=runnable, title=title.strip(), env=env, timeout=timeout, memory_limit_mib=memory_limit
        )

    def execution_timeout(self, key: Any) -> float | None:
        """The task's ``execution_timeout`` in seconds, read once per DAG hash; None for a key that is not
        a ``TaskInstanceKey`` (it only means "no deadline": the command is judged on its own)."""

        def find() -> tuple[Any, Any, str]:
            from airflow.models.serialized_dag import SerializedDagModel
            from airflow.utils.session import create_session

            dag_id, task_id = key.dag_id, key.task_id
            with create_session() as session:
                dag_hash = SerializedDagModel.get_latest_version_hash(dag_id, session=session)

            def load() -> Any:
                with create_session() as session:
                    row = SerializedDagModel.get(dag_id, session=session)
                    return row.data if row is not None else None

            return (dag_id, dag_hash), load, task_id

        return self._timeouts.get(repr(key), find)


def dag_and_task(command: list[str]) -> tuple[str | None, str | None]:
    """The first two positional arguments after ``run``, as Airflow 2's own validator reads them."""
    if "--help" in command:
        return None, None
    positional = [arg for arg in command[3:] if not arg.startswith("--")]
    return (positional[0] if positional else None), (positional[1] if len(positional) > 1 else None)


def run_command_in_child(command: list[str], title: str) -> int:
    """Entry point of a forked task process on Airflow 2: the CLI, parsed and run in-process."""
    from airflow.cli.cli_parser import get_parser

    from forklift.lines import LINE
    from forklift.proctitle import set_title

    LINE.dispose_inherited_db_pool()
    args = get_parser().parse_args(command[1:])
    args.shut_down_logging = False
    set_title(f"airflow task supervisor -- forklift: {title}")
    try:
        args.func(args)
    finally:
        try:
            from airflow.sentry import Sentry

            Sentry.flush()
        except Exception:  # noqa: BLE001, S110 - flushing is best effort; the task's outcome stands
            pass
    return 0
