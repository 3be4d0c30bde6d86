"""A real Airflow deployment on this machine, for tests and the demo.

:class:`AirflowStack` runs ``airflow db migrate``, then ``api-server`` and ``dag-processor``
(Airflow 3), and one ``scheduler`` at a time, each as a process group of its own in an
isolated ``AIRFLOW_HOME`` on free loopback ports. It stops exactly the process groups it
started, and checks that nothing it started is left.

It talks to Airflow the way an operator does (the ``airflow`` CLI), and reads results
straight from the metadata DB.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from forklift.testing.tie import tied

#: Terminal DAG-run states.
FINISHED = {"success", "failed"}
#: In the titles of forklift's own processes (workers, the result-queue manager, tasks).
FORKLIFT_TITLE = "-- forklift"
#: How long a stopping component may take before the idle workers of Airflow's own LocalExecutor
#: under it are released (see ``AirflowStack._release_airflows_own_idle_workers``); forklift's own
#: ``end()`` is not in a hurry before then.
AIRFLOW_OWN_IDLE_GRACE = 20.0


class StackError(RuntimeError):
    """An Airflow component failed to start or to do what was asked; the message has its log tail."""


def airflow_major() -> int:
    """The Airflow line installed next to this interpreter (the one the stack's processes run)."""
    from importlib.metadata import version

    return int(version("apache-airflow").split(".")[0])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TaskRow:
    task_id: str
    state: str | None
    queued: datetime | None
    start: datetime | None
    end: datetime | None
    map_index: int = -1

    @property
    def queued_to_start(self) -> float | None:
        if self.queued and self.start:
            return (self.start - self.queued).total_seconds()
        return None

    @property
    def duration(self) -> float | None:
        if self.start and self.end:
            return (self.end - self.start).total_seconds()
        return None


@dataclass
class _Component:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    #: Its descendants when it was last signalled (once it is dead they are re-parented, out of reach).
    descendants: list[psutil.Process] = field(default_factory=list)


#: Seconds an Airflow process of a stack on SQLite waits for another's write lock before "database is locked".
SQLITE_BUSY_TIMEOUT = 30.0


class AirflowStack:
    """One isolated Airflow deployment. Use as a context manager, or call :meth:`stop`."""

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        *,
        sql_alchemy_conn: str | None = None,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags_folder = Path(dags_folder)
        self.python = python
        self.api_port = free_port()
        # Four Airflow processes write one SQLite file here. Python's 5 s busy timeout is too short for
        # that on a loaded machine: the scheduler's last write of its job row once failed with "database
        # is locked" and it exited 1. 30 s, the same for every component and both executors.
        self.sql_alchemy_conn = (
            sql_alchemy_conn or f"sqlite:///{self.home / 'airflow.db'}?timeout={SQLITE_BUSY_TIMEOUT:g}"
        )
        self.log_dir = self.home / "component-logs"
        self.log_dir.mkdir(exist_ok=True)
        base_url = f"http://127.0.0.1:{self.api_port}"
        self.major = airflow_major()
        self.env: dict[str, str] = {
            k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") and k != "AIRFLOW_HOME"
        }
        self.env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "forklift.LocalExecutor",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_alchemy_conn,
                # Ports of its own, so that deployments can run side by side (make test runs two at once).
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                # A test deployment is torn down, not restarted: stopping its scheduler stops its tasks
                # too. (forklift's default, adopt, leaves them running for the next scheduler.)
                "AIRFLOW__FORKLIFT__ON_SHUTDOWN": "stop",
                "PYTHONUNBUFFERED": "1",
                # As in a real deployment, the `airflow` next to this interpreter is on PATH
                # (Airflow 2's subprocess mode runs the `airflow tasks run` command as given).
                "PATH": os.pathsep.join([str(Path(self.python).parent), os.environ.get("PATH", "")]),
            }
        )
        if self.major >= 3:
            self.env.update(self._airflow3_env(base_url))
        if env:
            self.env.update(env)
        self._components: dict[str, _Component] = {}
        self._started_at: dict[int, float] = {}
        self._started_pids: set[int] = set()

    def _airflow3_env(self, base_url: str) -> dict[str, str]:
        return {
            "AIRFLOW__API__BASE_URL": base_url,
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            # Every component must sign and check task tokens with the same secret.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        }

    # -- running the airflow CLI ---------------------------------------------------------------
    def airflow(self, *args: str, timeout: float = 180, env: Mapping[str, str] | None = None) -> str:
        """Run ``airflow ARGS`` in this deployment and return its stdout; raise with output on failure."""
        proc = subprocess.run(  # noqa: PLW1510 - the exit status is checked below, with the output
            [self.python, "-m", "airflow", *args],
            env={**self.env, **(env or {})},
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise StackError(
                f"`airflow {' '.join(args)}` exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc.stdout

    def migrate(self) -> None:
        self.airflow("db", "migrate", timeout=600)

    # -- components ----------------------------------------------------------------------------
    def start_component(
        self, name: str, *args: str, env: Mapping[str, str] | None = None, stdout: int | None = None
    ) -> None:
        """Start ``airflow <args>``; its output goes to ``log_dir/<name>.log``, or to the ``stdout`` fd given."""
        if name in self._components:
            raise StackError(f"{name} is already running (pid {self._components[name].proc.pid})")
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")
        proc = subprocess.Popen(
            tied([self.python, "-m", "airflow", *args]),  # gone with the test process, even if it is killed
            env={**self.env, **(env or {})},
            cwd=self.home,
            stdout=log_file if stdout is None else stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a process group of its own: stopped as a whole, and only it
        )
        log_file.close()
        self._components[name] = _Component(name, proc, log_path)
        self._started_pids.add(proc.pid)
        self._started_at[proc.pid] = time.time() - 1  # create_time() has a clock tick's precision

    def start_services(self) -> None:
        """Airflow 3: api-server and dag-processor, and wait until the API answers.

        Airflow 2 has neither (its scheduler parses DAGs); its DAGs are serialized into the DB once
        here, so a run can be triggered before any scheduler starts.
        """
        if self.major < 3:
            self.airflow("dags", "reserialize", timeout=300)
            return
        self.start_component("api-server", "api-server", "--port", str(self.api_port), "--host", "127.0.0.1")
        self.start_component("dag-processor", "dag-processor")
        self.wait_for_http(f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health", component="api-server")
        # The Execution API is built on its first request (~4 s of CPU on 3.4). Left to the first task,
        # that request can outlast the task supervisor's HTTP timeout and retries on a loaded machine,
        # failing the task ("Could not reach the Execution API server"): a readiness probe pays it here.
        self.wait_for_http(
            f"http://127.0.0.1:{self.api_port}/execution/health/ping", component="api-server", request_timeout=60
        )

    def start_scheduler(self, env: Mapping[str, str] | None = None, stdout: int | None = None) -> None:
        self.start_component("scheduler", "scheduler", env=env, stdout=stdout)

    def start_triggerer(self) -> None:
        """The triggerer, for deferrable tasks (stopped with the rest of the stack)."""
        if not self.is_running("triggerer"):
            self.start_component("triggerer", "triggerer")

    def process(self, name: str) -> subprocess.Popen[bytes]:
        """The running component's process (the leader of its process group)."""
        comp = self._components.get(name)
        if comp is None:
            raise StackError(f"{name} is not running")
        return comp.proc

    def signal_component(self, name: str, sig: int) -> None:
        """Send ``sig`` to the component's own process only, as a crash, an OOM kill or `kill PID` would."""
        comp = self._components[name]
        comp.descendants = _airflows_own_descendants(comp.proc.pid)
        comp.proc.send_signal(sig)

    def release_component(self, name: str, timeout: float = 90) -> int | None:
        """Wait for the component's process to exit (after :meth:`signal_component`) and forget it.

        forklift's workers in its process group are left alone: they are meant to outlive it, hand
        their tasks to the next scheduler and leave by themselves. Everything else it started is
        stopped, as a service manager would: Airflow's own children outlive a SIGKILLed scheduler
        otherwise (its ``serve-logs``; on Airflow 2 also the DagFileProcessorManager, which leads a
        process group of its own). Returns the exit code.
        """
        comp = self._components.pop(name, None)
        if comp is None:
            return None
        # Its process group, and what had left it (Airflow 2's DagFileProcessorManager leads a group of its own).
        by_pid = {p.pid: p for p in [*_group_members(comp.proc.pid), *comp.descendants] if p.pid != comp.proc.pid}
        members = list(by_pid.values())
        try:
            code = comp.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._dump_stacks(comp)
            comp.proc.kill()
            comp.proc.wait(timeout=30)
            raise StackError(f"{name} did not exit within {timeout:.0f} s:\n{self.log_tail(name)}") from None
        airflows_own = []
        for proc in members:
            with contextlib.suppress(psutil.Error):
                # is_running() also checks the start time: a reused pid is never taken for a member.
                if proc.is_running() and FORKLIFT_TITLE not in " ".join(proc.cmdline()):
                    airflows_own.append(proc)
        for proc in airflows_own:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(airflows_own, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        return code

    def stop_component(self, name: str, timeout: float = 60) -> int | None:
        """SIGTERM the component's process group, wait, then SIGKILL what is left. Returns its exit code.

        After ``AIRFLOW_OWN_IDLE_GRACE`` the idle workers of Airflow's own LocalExecutor, if any, are
        released first: Airflow's ``end()`` can wait on one of them forever (see
        :meth:`_release_airflows_own_idle_workers`).
        """
        comp = self._components.pop(name, None)
        if comp is None:
            return None
        pgid = comp.proc.pid
        # Its process group, and Airflow's own children that lead groups of their own (Airflow 2's
        # DagFileProcessorManager), which the group's SIGTERM does not reach if the leader leaves first.
        members = {p.pid: p for p in [*_group_members(pgid), *_airflows_own_descendants(pgid)]}
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        try:
            code = comp.proc.wait(timeout=min(timeout, AIRFLOW_OWN_IDLE_GRACE))
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            self._release_airflows_own_idle_workers(comp)
            try:
                code = comp.proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                self._dump_stacks(comp)  # what it was doing instead of stopping, before that is lost
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                code = comp.proc.wait(timeout=30)
        # The leader is gone; anything of its group (or its own children) still alive is killed too,
        # with Airflow's own children it started after the snapshot above (Airflow 2's scheduler can
        # launch its DagFileProcessorManager while stopping): orphaned now, of this home, not forklift's.
        members.update({p.pid: p for p in self._orphans_since(comp.proc)})
        _, alive = psutil.wait_procs([p for p in members.values() if p.pid != pgid and p.is_running()], timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        return code

    def _release_airflows_own_idle_workers(self, comp: _Component) -> None:
        """SIGKILL the idle workers of Airflow's *own* LocalExecutor under a component that is stopping.

        Airflow's ``LocalExecutor.end()`` checks each worker's ``is_alive()`` as it sends the poison pills,
        then waits for each without a bound. Any worker takes any pill, so one that takes a pill sent for
        an earlier worker and exits before the loop reaches it is skipped, and one worker is left idle
        in ``SimpleQueue.get()`` with no pill to read (2 in 25 stops under load, on 3.2 and 3.4; see
        docs/reliability.md). The scheduler then never exits, so forklift's ``end()``, which the
        scheduler calls after it, never runs either.
        An idle worker holds no task: killing it is what Airflow's own "signal again" does, without
        also skipping the executors that end after it. forklift's processes are not touched.
        """
        idle = []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(comp.proc.pid).children():
                with contextlib.suppress(psutil.Error):
                    title = " ".join(child.cmdline())
                    if _is_airflows_own_idle_worker(title):
                        idle.append(child)
        if not idle:
            return
        with open(comp.log_path, "a") as log:
            log.write(
                f"\n--- {comp.name} still running {AIRFLOW_OWN_IDLE_GRACE:.0f} s after SIGTERM; killing the idle "
                f"workers of Airflow's own LocalExecutor it waits on: {sorted(p.pid for p in idle)} ---\n"
            )
        for proc in idle:
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def _orphans_since(self, leader: subprocess.Popen[bytes]) -> list[psutil.Process]:
        """Processes of this home, re-parented to init, started since ``leader`` was, not forklift's."""
        started = self._started_at.get(leader.pid, 0.0)
        found = []
        for proc in self.leftover_processes():
            with contextlib.suppress(psutil.Error):
                if (
                    proc.ppid() == 1
                    and proc.create_time() >= started
                    and FORKLIFT_TITLE not in " ".join(proc.cmdline())
                ):
                    found.append(proc)
        return found

    def dump_stacks(self, name: str, why: str = "is slow to stop") -> None:
        """Append component ``name``'s Python stacks, and its children's, to its log (py-spy, when installed)."""
        self._dump_stacks(self._components[name], why)

    def _dump_stacks(self, comp: _Component, why: str = "did not stop on SIGTERM") -> None:
        """Append the stuck process's Python stacks and its children's (py-spy, when installed) to its log.

        The children matter: a scheduler stuck in an executor's ``end()`` waits on a worker, and only
        the worker's stack says why.
        """
        py_spy = Path(self.python).parent / "py-spy"
        if not py_spy.exists():
            return
        try:
            dump = subprocess.run(
                [str(py_spy), "dump", "--subprocesses", "--pid", str(comp.proc.pid)],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            text = dump.stdout + dump.stderr
        except (OSError, subprocess.SubprocessError) as exc:
            text = f"py-spy dump failed: {exc}\n"
        with open(comp.log_path, "a") as log:
            log.write(f"\n--- {comp.name} {why}; its stacks (py-spy dump) ---\n{text}")

    def stop(self) -> None:
        for name in ("scheduler", *[n for n in self._components if n != "scheduler"]):
            self.stop_component(name)

    def __enter__(self) -> AirflowStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def is_running(self, name: str) -> bool:
        comp = self._components.get(name)
        return comp is not None and comp.proc.poll() is None

    def stopped_cleanly(self, name: str, exit_code: int | None) -> bool:
        """Whether a stopped component exited 0, or hit Airflow 2's own shutdown race and nothing else.

        Airflow 2's scheduler handles SIGTERM by closing its DAG-processor pipe and raising SystemExit
        from the signal handler. When that signal lands inside a finalizer, Python reports the
        SystemExit as "ignored", the loop runs once more and ``processor_agent.heartbeat()`` fails on
        the closed pipe (exit 1). Nothing of the executor is involved, so only that exact signature
        is forgiven, and only on Airflow 2.
        """
        if exit_code == 0:
            return True
        if self.major != 2 or exit_code != 1:
            return False
        log = self.log_tail(name, chars=200_000)
        graceful = log.rfind("Exiting gracefully upon receiving signal")
        return (
            graceful >= 0
            and "processor_agent.heartbeat()" in log[graceful:]
            and log.rstrip().endswith("OSError: handle is closed")
        )

    def log_tail(self, name: str, chars: int = 12000) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return path.read_text(errors="replace")[-chars:]

    def wait_for_http(self, url: str, *, component: str, timeout: float = 120, request_timeout: float = 2) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running(component):
                raise StackError(f"{component} exited while starting:\n{self.log_tail(component)}")
            try:
                with urllib.request.urlopen(url, timeout=request_timeout):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        raise StackError(f"{component} did not answer {url} within {timeout:.0f} s:\n{self.log_tail(component)}")

    # -- the REST API --------------------------------------------------------------------------
    def api(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        """Call the api-server as an admin (the stack uses SimpleAuthManager with everyone an admin)."""
        import urllib.error
        import urllib.request

        base = f"http://127.0.0.1:{self.api_port}"
        if not hasattr(self, "_api_token"):
            with urllib.request.urlopen(f"{base}/auth/token", timeout=10) as resp:
                self._api_token = json.loads(resp.read())["access_token"]
        req = urllib.request.Request(
            base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self._api_token}",
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    # -- DAGs and runs -------------------------------------------------------------------------
    def db(self) -> Any:
        import sqlalchemy

        return sqlalchemy.create_engine(self.sql_alchemy_conn)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        engine = self.db()
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            engine.dispose()

    def _query(self, sql: str, **params: Any) -> list[Any]:
        import sqlalchemy

        with self._connection() as conn:
            return list(conn.execute(sqlalchemy.text(sql), params))

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Wait until the dag-processor has serialized ``dag_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # table may not be there yet on a fresh DB
                if self._query("SELECT 1 FROM serialized_dag WHERE dag_id = :d", d=dag_id):
                    return
            if "dag-processor" in self._components and not self.is_running("dag-processor"):
                raise StackError(f"dag-processor exited:\n{self.log_tail('dag-processor')}")
            time.sleep(0.5)
        raise StackError(f"DAG {dag_id!r} was not parsed within {timeout:.0f} s:\n{self.log_tail('dag-processor')}")

    def trigger(
        self, dag_id: str, run_id: str, conf: Mapping[str, Any] | None = None, *, via_api: bool = False
    ) -> None:
        """Trigger a run with ``airflow dags trigger``, or (Airflow 3, ``via_api``) the REST API.

        The API costs no interpreter start, so it does not compete with what is being measured.
        """
        if via_api and self.major >= 3:
            status, body = self.api(
                "POST",
                f"/api/v2/dags/{dag_id}/dagRuns",
                {"dag_run_id": run_id, "logical_date": None, "conf": dict(conf or {})},
            )
            if status != 200:
                raise StackError(f"triggering {dag_id} via the API gave HTTP {status}: {body}")
            return
        args = ["dags", "trigger", dag_id, "--run-id", run_id]
        if conf:
            args += ["--conf", json.dumps(conf)]
        self.airflow(*args)

    def dag_run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self._query("SELECT state FROM dag_run WHERE dag_id = :d AND run_id = :r", d=dag_id, r=run_id)
        return rows[0][0] if rows else None

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """Poll the metadata DB until the run finishes; raise with the scheduler's log if it does not."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.dag_run_state(dag_id, run_id)
            if state in FINISHED:
                return state
            if "scheduler" in self._components and not self.is_running("scheduler"):
                raise StackError(f"scheduler exited while {run_id} was {state}:\n{self.log_tail('scheduler')}")
            time.sleep(0.5)
        rows = self.task_instances(dag_id, run_id)
        summary = ", ".join(f"{r.task_id}={r.state}" for r in rows)
        raise StackError(
            f"run {run_id} of {dag_id} still {state} after {timeout:.0f} s ({summary}):\n{self.log_tail('scheduler')}"
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[TaskRow]:
        from forklift.lines import LINE

        column = LINE.map_index_column
        rows = self._query(
            f"SELECT task_id, state, queued_dttm, start_date, end_date, {column} FROM task_instance "
            f"WHERE dag_id = :d AND run_id = :r ORDER BY task_id, {column}",
            d=dag_id,
            r=run_id,
        )
        return [
            TaskRow(r[0], r[1], _as_datetime(r[2]), _as_datetime(r[3]), _as_datetime(r[4]), int(r[5])) for r in rows
        ]

    def dag_run_info(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """The run's state and its queued (triggered), start and end times."""
        rows = self._query(
            "SELECT state, queued_at, start_date, end_date FROM dag_run WHERE dag_id = :d AND run_id = :r",
            d=dag_id,
            r=run_id,
        )
        if not rows:
            return {}
        state, queued, start, end = rows[0]
        return {
            "state": state,
            "queued_at": _as_datetime(queued),
            "start": _as_datetime(start),
            "end": _as_datetime(end),
        }

    def fail_unfinished(self, dag_id_like: str) -> None:
        """Mark every unfinished task instance and DAG run of the matching DAGs failed, as an operator
        would after abandoning them, so that no later scheduler resets and reruns them."""
        import sqlalchemy

        engine = self.db()
        try:
            with engine.begin() as conn:  # one transaction, committed on leaving (SQLAlchemy 1.4 and 2)
                for table in ("task_instance", "dag_run"):
                    conn.execute(
                        sqlalchemy.text(
                            f"UPDATE {table} SET state = 'failed' WHERE dag_id LIKE :pattern "
                            "AND (state IS NULL OR state NOT IN ('success', 'failed'))"
                        ),
                        {"pattern": dag_id_like},
                    )
        finally:
            engine.dispose()

    def scheduler_jobs_running(self) -> list[int]:
        """Ids of scheduler jobs the DB has as running (a started scheduler appears here once its loop runs)."""
        return [r[0] for r in self._query("SELECT id FROM job WHERE job_type = 'SchedulerJob' AND state = 'running'")]

    def dag_run_times(self, dag_id: str, run_id: str) -> tuple[datetime | None, datetime | None]:
        rows = self._query(
            "SELECT start_date, end_date FROM dag_run WHERE dag_id = :d AND run_id = :r", d=dag_id, r=run_id
        )
        if not rows:
            return None, None
        return _as_datetime(rows[0][0]), _as_datetime(rows[0][1])

    # -- leak check ----------------------------------------------------------------------------
    def leftover_processes(self) -> list[psutil.Process]:
        """Processes still alive that belong to this stack: their environment names its AIRFLOW_HOME, or
        (for a process that retitled itself, as forklift's workers and tasks do: setproctitle reuses the
        memory /proc shows as the environment) they run in its home, where every component starts."""
        marker = str(self.home)
        left = []
        for proc in psutil.process_iter(["pid"]):
            if proc.pid == os.getpid():
                continue
            with contextlib.suppress(psutil.Error):
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if proc.environ().get("AIRFLOW_HOME") == marker or proc.cwd() == marker:
                    left.append(proc)
        return left


def _airflows_own_descendants(pid: int) -> list[psutil.Process]:
    """A component's children that are not forklift's, with everything below them (forklift's workers,
    and the tasks under them, are meant to outlive a scheduler that is stopped or killed)."""
    own: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children():
            with contextlib.suppress(psutil.Error):
                if FORKLIFT_TITLE in " ".join(child.cmdline()):
                    continue
                own.append(child)
                own.extend(child.children(recursive=True))
    return own


def _is_airflows_own_idle_worker(title: str) -> bool:
    """Airflow 3's ``airflow worker -- LocalExecutor[ [team]]: <idle>``; Airflow 2's bare
    ``airflow worker -- LocalExecutor`` (its busy title names the command)."""
    title = title.strip()
    if FORKLIFT_TITLE in title or not title.startswith("airflow worker -- LocalExecutor"):
        return False
    return title.endswith(": <idle>") or title == "airflow worker -- LocalExecutor"


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
    return members


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    # SQLite hands back text.
    text = str(value).replace("Z", "+00:00")
    return datetime.fromisoformat(text)
