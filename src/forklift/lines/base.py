"""What every Airflow line answers, and the answers that are the same on all of them.

An :class:`AirflowLine` is everything forklift needs to know about one Airflow release line. The
executor, ``forklift doctor`` and the pytest plugin ask the current line (``forklift.lines.LINE``)
and never test a version themselves.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

from forklift.settings import Lookup

#: Environment Airflow uses to tell a task process which DAG/task it is parsing for
#: (``get_parsing_context()``), so dynamic DAG files can load just that part.
PARSING_CONTEXT_DAG_ID = "_AIRFLOW_PARSING_CONTEXT_DAG_ID"
PARSING_CONTEXT_TASK_ID = "_AIRFLOW_PARSING_CONTEXT_TASK_ID"


class ExecutorTraits:
    """Class attributes a line's ``BaseExecutor`` reads from its executors (flags, capabilities).

    Each line subclasses this with the names its own ``BaseExecutor`` declares, and
    ``forklift.LocalExecutor`` puts that subclass before ``BaseExecutor`` in its bases: a line never
    sees a flag it does not know, and Airflow 3.4 never sees the ones it deprecated.
    """

    is_local: bool = True
    serve_logs: bool = True


class AirflowLine(ABC):
    """One Airflow release line (3.4, 3.3, …, 2.10), as forklift uses it."""

    #: "3.4", "2.11": the line as users say it.
    name: str
    #: The major version (the doctor's database check and its messages).
    major: int
    #: Task SDK workloads through an API server (3.x), or ``airflow tasks run`` commands (2.x).
    runs_workloads: bool
    #: What the line's scheduler hands its executors: "task", and from 3.2 "callback", from 3.3
    #: "connection test".
    workload_kinds: frozenset[str] = frozenset({"task"})
    #: The task_instance column holding the map index (3.4 renamed it region_index): test harness queries.
    map_index_column: str = "map_index"
    #: The class attributes ``forklift.LocalExecutor`` declares on this line.
    traits: type[ExecutorTraits] = ExecutorTraits

    def __repr__(self) -> str:
        return f"<Airflow {self.name} line>"

    # -- configuration ------------------------------------------------------------------------
    @abstractmethod
    def config_lookup(self, team_name: str | None = None) -> Lookup:
        """A ``lookup(section, key)`` over Airflow's configuration (team-aware where the line has teams)."""

    @abstractmethod
    def base_parallelism(self, forklift_parallelism: int, lookup: Lookup) -> int:
        """The parallelism ``BaseExecutor`` gets, which sets the slots the scheduler sees."""

    def scheduler_cap(self, lookup: Lookup) -> int | None:
        """The scheduler never queues more than ``[core] parallelism`` across all executors (None: no cap)."""
        try:
            cap = int(lookup("core", "parallelism") or "32")
        except ValueError:
            return None
        return cap if cap > 0 else None

    def default_records_dir(self) -> str:
        """``$AIRFLOW_HOME/forklift/tasks``: shared by every scheduler of the deployment on this machine."""
        from airflow.configuration import AIRFLOW_HOME

        return os.path.join(AIRFLOW_HOME, "forklift", "tasks")

    # -- the scheduler process ----------------------------------------------------------------
    @abstractmethod
    def stats(self) -> Any:
        """Airflow's metrics facade: ``incr(stat, count, tags=)``, ``gauge``, ``timing``."""

    def metric_tags(self, executor_class: str, team_name: str | None) -> dict[str, str]:
        """The tags forklift's metrics carry, named as the line's own executor metrics name them
        (``executor.open_slots`` and the like): the executor's class as ``name`` up to 3.2."""
        return {"name": executor_class}

    def execution_api_url(self, executor_conf: Any) -> str:
        """Where tasks reach the Execution API ("" where tasks talk to the DB instead)."""
        return ""

    def warm_task_caches(self, extra_modules: tuple[str, ...] = ()) -> list[str]:
        """Import, once in the scheduler before workers fork, what every forked task would import;
        return the modules that could not be imported."""
        return import_modules(extra_modules, warn=extra_modules)

    def dispose_inherited_db_pool(self) -> None:
        """Forget the DB connections inherited through fork without closing them.

        They belong to the scheduler: closing them here would close its sockets (Airflow #47678). Airflow
        registers the same at-fork hook itself; doing it here too keeps that true whatever the version.
        """
        from airflow import settings

        engines = [
            engine
            for engine in (
                getattr(settings, "engine", None),
                getattr(getattr(settings, "async_engine", None), "sync_engine", None),
            )
            if engine is not None
        ]
        detach_inherited_db_sockets(engines)  # first: a connection collected later writes to /dev/null
        for engine in engines:
            engine.dispose(close=False)

    # -- dispatch bookkeeping -----------------------------------------------------------------
    @abstractmethod
    def unqueue(self, executor: Any, key: Any) -> None:
        """Take ``key`` out of the executor's queued work (it is being dispatched, or revoked)."""

    def task_key(self, executor: Any, ti: Any) -> Any:
        """The key a task instance has in the executor's ``running`` set and events."""
        return ti.key


#: Ports a network DB listens on when its URL names none.
_DEFAULT_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def detach_inherited_db_sockets(engines: list[Any]) -> list[int]:
    """In a process just forked from the scheduler: let go of its copies of the scheduler's DB sockets.

    A forked worker holds a copy of every socket the scheduler had open. If the scheduler dies
    inside a transaction (SIGKILL, OOM), the DB server sees its connection close only when the last
    copy closes, so the transaction and its row locks would live as long as forklift's workers, which
    outlive a scheduler by design; the next scheduler then waits on those locks (112 s, once, in a
    test of a SIGKILLed 2.11 scheduler). Each copy's descriptor is pointed at ``/dev/null`` rather
    than closed: the connection objects that still name it write their goodbye there when they are
    collected, never to whatever file would reuse the number. The scheduler's own sockets are not
    touched. TCP only: a DB reached through a Unix socket keeps today's behaviour. Returns the
    descriptors detached.
    """
    import psutil

    ports = set()
    for engine in engines:
        url = engine.url
        default = _DEFAULT_DB_PORTS.get(url.get_backend_name())
        if default is not None and url.host and not url.host.startswith("/"):
            ports.add(url.port or default)
    if not ports:
        return []
    detached = []
    try:
        me = psutil.Process()
        # psutil 6 renamed connections() (which pyproject's psutil>=5.9 still allows).
        conns = (me.net_connections if hasattr(me, "net_connections") else me.connections)(kind="tcp")
    except (psutil.Error, OSError):
        return []
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for conn in conns:
            if conn.fd >= 0 and conn.raddr and conn.raddr.port in ports:
                try:
                    os.dup2(devnull, conn.fd)
                except OSError:
                    continue
                detached.append(conn.fd)
    finally:
        os.close(devnull)
    return detached


def import_modules(modules: tuple[str, ...], warn: tuple[str, ...] = ()) -> list[str]:
    """Import each module, for its side effect of being loaded before workers fork; return the failures."""
    import importlib
    import logging

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - only a speed-up; the task imports it itself
            missing.append(name)
            if name in warn:
                logging.getLogger(__name__).warning(
                    "forklift: [forklift] preload_modules: could not import %s: %s", name, exc
                )
    return missing
