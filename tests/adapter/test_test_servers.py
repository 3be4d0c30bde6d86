"""What forklift's test toolkit starts does not outlive a test session that is killed.

Each test runs a stand-in for a pytest process in a child interpreter, lets it start a server, kills
it with SIGKILL (no teardown runs, as when CI's job timeout strikes) and checks the server goes too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.support import alive, wait_gone

SESSIONS = {
    "a tied command": """
        import subprocess
        from forklift.testing.tie import tied
        proc = subprocess.Popen(tied(["sleep", "300"]), start_new_session=True)
        print(proc.pid, flush=True)
    """,
    "PostgreSQL": """
        from forklift.testing.postgres import PostgresServer
        server = PostgresServer()
        server.start()
        print(server.pid, flush=True)
    """,
    "Redis": """
        from forklift.testing.redis import RedisServer
        server = RedisServer()
        server.start()
        print(server.proc.pid, flush=True)
    """,
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("what", list(SESSIONS))
def test_a_server_stops_when_the_test_process_that_started_it_is_killed(what: str) -> None:
    code = textwrap.dedent(SESSIONS[what]) + "import time\ntime.sleep(300)\n"
    session = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=os.getcwd(), text=True
    )
    try:
        assert session.stdout is not None
        line = session.stdout.readline()
        assert line.strip().isdigit(), f"the session printed no pid (exit {session.poll()}): {line!r}"
        server = int(line)
        assert alive(server), f"{what} (pid {server}) was not running"
        os.kill(session.pid, signal.SIGKILL)
        session.wait()
        wait_gone([server], timeout=45)  # SIGTERM: each stops as it would for an operator
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
