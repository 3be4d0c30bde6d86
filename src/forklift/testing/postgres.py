"""A private PostgreSQL server for tests: its own cluster in a temp dir, on a free loopback port.

Airflow 2 refuses SQLite with any executor that runs tasks in parallel, so its integration tests
need a real server. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` OS user (``runuser``). Only the postmaster this class started is stopped, by its pid;
it also stops when the test process dies (:mod:`forklift.testing.tie`).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from forklift.testing.stack import StackError, free_port
from forklift.testing.tie import tied

# Speed over durability (a throwaway cluster), and room for every scheduler, task and test client.
_SETTINGS = (
    "listen_addresses=127.0.0.1",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
)


def _find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def require_postgres() -> None:
    """Fail with what to install when PostgreSQL's server binaries are missing (this module never
    installs system packages; forklift's own `make test` does, on its CI machines)."""
    if not (_find_bin("initdb") and _find_bin("postgres")):
        raise StackError(
            "PostgreSQL server binaries (initdb, postgres) are not on PATH nor in /usr/lib/postgresql/*/bin; "
            "install them (Debian/Ubuntu: apt-get install postgresql) and run again."
        )


class PostgresServer:
    def __init__(self, base_dir: Path | None = None, database: str = "airflow") -> None:
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="forklift-pg-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.data = self.base / "data"
        self.port = free_port()
        self.database = database
        self.pid: int | None = None  # the postmaster's
        self.proc: subprocess.Popen[bytes] | None = None  # what was started: the postmaster, or runuser
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", "postgres", "--", *argv] if self._as_postgres else list(argv)
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise StackError(
                f"`{' '.join(argv)}` exited with {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        return proc

    def start(self, timeout: float = 60) -> None:
        require_postgres()
        initdb, postgres = _find_bin("initdb"), _find_bin("postgres")
        assert initdb and postgres
        if self._as_postgres:
            # The postgres user must reach its cluster; the rest of the temp tree stays root's.
            os.chmod(self.base, 0o755)
            self.data.mkdir(mode=0o700, exist_ok=True)
            shutil.chown(self.data, "postgres", "postgres")
        self._run(initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        # The postmaster runs in the foreground as this process's child (through runuser as root, which
        # passes a SIGTERM on to it), tied to this process: a killed test session does not leave it behind.
        argv = [postgres, "-D", str(self.data), "-p", str(self.port), "-k", str(self.data)]
        for setting in _SETTINGS:
            argv += ["-c", setting]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        with open(self.base / "server.log", "wb") as log:
            self.proc = subprocess.Popen(
                tied(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.base
            )
        self.pid = self._wait_ready(timeout)
        self._create_database()

    def _wait_ready(self, timeout: float) -> int:
        """The postmaster's pid, once its pid file says it accepts connections."""
        assert self.proc is not None
        pid_file = self.data / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StackError(
                    f"postgres exited with {self.proc.returncode}: {(self.base / 'server.log').read_text()[-2000:]}"
                )
            try:
                lines = pid_file.read_text().splitlines()
            except OSError:
                lines = []
            # Line 8 of the pid file is the server's status (PostgreSQL >= 10); pg_ctl -w reads the same.
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return int(lines[0])
            time.sleep(0.05)
        raise StackError(f"postgres did not become ready on port {self.port} within {timeout:.0f} s")

    def _create_database(self) -> None:
        import sqlalchemy

        engine = sqlalchemy.create_engine(
            f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres", isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{self.database}"'))
        finally:
            engine.dispose()

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT) of the postmaster we started, then SIGKILL if it lingers; then reap
        what was started (runuser exits with the postmaster)."""
        pid, self.pid = self.pid, None
        if pid is not None:
            try:
                proc = psutil.Process(pid)
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=timeout)
            except psutil.NoSuchProcess:
                pass
            except psutil.TimeoutExpired:
                proc.kill()
        started, self.proc = self.proc, None
        if started is not None:
            try:
                started.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                started.kill()  # a start that failed before the postmaster was ready, or a stuck runuser
                started.wait()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
