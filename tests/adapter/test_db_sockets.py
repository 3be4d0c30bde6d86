"""A scheduler that dies inside a DB transaction must not leave its locks to forklift's workers.

A worker forked from the scheduler holds copies of the scheduler's DB sockets; the DB server ends a
session only when the last copy closes. A stand-in scheduler (a child interpreter) takes a row lock in
an open transaction on a real PostgreSQL, forks a "worker" that lives on, and SIGKILLs itself. The row
must then be lockable at once, as it is when nothing was forked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from forklift.testing.postgres import PostgresServer
from tests.support import wait_for_path

pytestmark = pytest.mark.timeout(180)

SCHEDULER = textwrap.dedent(
    """
    import os, signal, sys, time
    import sqlalchemy as sa
    from forklift.lines.base import detach_inherited_db_sockets

    url, detach, pidfile = sys.argv[1], sys.argv[2] == "detach", sys.argv[3]
    engine = sa.create_engine(url)
    conn = engine.connect()
    conn.begin()
    conn.execute(sa.text("SELECT id FROM held WHERE id = 1 FOR UPDATE"))
    if os.fork() == 0:  # the worker: outlives its scheduler, as forklift's do
        if detach:
            detach_inherited_db_sockets([engine])
        engine.dispose(close=False)
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        time.sleep(120)
        os._exit(0)
    while not os.path.exists(pidfile):
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)  # dies inside its transaction
    """
)


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    with PostgresServer() as server:
        engine = sa.create_engine(server.url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE held (id int PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO held VALUES (1)"))
        engine.dispose()
        yield server.url


def _row_lockable(url: str) -> bool:
    """Whether the row can be locked within 10 s (a bound for a slow machine, not a wait for a result)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(sa.text("SELECT id FROM held WHERE id = 1 FOR UPDATE"))
        return True
    except sa.exc.OperationalError as exc:
        assert "lock timeout" in str(exc)
        return False
    finally:
        engine.dispose()


def _kill_scheduler_inside_a_transaction(url: str, mode: str, tmp_path: Path) -> int:
    pidfile = tmp_path / f"worker-{mode}.pid"
    proc = subprocess.run([sys.executable, "-c", SCHEDULER, url, mode, str(pidfile)], timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL
    return int(wait_for_path(pidfile))


@pytest.mark.parametrize(("mode", "lockable"), [("detach", True), ("keep", False)])
def test_a_dead_schedulers_locks_go_with_it_not_with_its_workers(
    db: str, tmp_path: Path, mode: str, lockable: bool
) -> None:
    """``detach``: what forklift's workers do. ``keep``: without it the lock outlives the scheduler (the
    control that shows the test can fail)."""
    worker = _kill_scheduler_inside_a_transaction(db, mode, tmp_path)
    try:
        assert _row_lockable(db) is lockable
    finally:
        os.kill(worker, signal.SIGKILL)
