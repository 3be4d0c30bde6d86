"""A private PostgreSQL server for tests: its own cluster in a temp dir, on a free loopback port.

Airflow 2 refuses SQLite with any executor that runs tasks in parallel, so its integration tests
need a real server. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` OS user (``runuser``). Only the postmaster this class started is stopped, by its pid.
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


def _find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def require_postgres() -> None:
    """Fail with what to install when PostgreSQL's server binaries are missing (this module never
    installs system packages; forklift's own `make test` does, on its CI machines)."""
    if not (_find_bin("initdb") and _find_bin("pg_ctl") and _find_bin("postgres")):
        raise StackError(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) are not on PATH nor in /usr/lib/postgresql/*/bin; "
            "install them (Debian/Ubuntu: apt-get install postgresql) and run again."
        )


class PostgresServer:
    def __init__(self, base_dir: Path | None = None, database: str = "airflow") -> None:
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="forklift-pg-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.data = self.base / "data"
        self.port = free_port()
        self.database = database
        self.pid: int | None = None
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

    def start(self) -> None:
        require_postgres()
        initdb, pg_ctl, postgres = _find_bin("initdb"), _find_bin("pg_ctl"), _find_bin("postgres")
        assert initdb and pg_ctl and postgres
        if self._as_postgres:
            # The postgres user must reach its cluster; the rest of the temp tree stays root's.
            os.chmod(self.base, 0o755)
            self.data.mkdir(mode=0o700, exist_ok=True)
            shutil.chown(self.data, "postgres", "postgres")
        self._run(initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        log = self.data / "server.log"
        self._run(
            pg_ctl,
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data),
            "-l",
            str(log),
            "-o",
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self._create_database()

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
        """Fast shutdown (SIGINT) of the postmaster we started, then SIGKILL if it lingers."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=timeout)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            proc.kill()
        deadline = time.monotonic() + timeout
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
