"""A private Redis on a free loopback port, for tests that need a Celery broker.

It needs a ``redis-server`` on PATH (Debian's package; ``make test`` installs it on CI). The server runs in the foreground as a child of this process, persists nothing, is stopped by pid, and stops when the test process dies (:mod:`forklift.testing.tie`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from forklift.testing.stack import StackError, free_port
from forklift.testing.tie import tied


def require_redis() -> str:
    """The ``redis-server`` on PATH; fails with what to install when there is none (this module never
    installs system packages; forklift's own `make test` does, on its CI machines)."""
    found = shutil.which("redis-server")
    if not found:
        raise StackError(
            "redis-server is not on PATH; install it (Debian/Ubuntu: apt-get install redis-server) and run again."
        )
    return found


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="forklift-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        binary = require_redis()
        log = open(self.dir / "redis.log", "wb")
        self.proc = subprocess.Popen(
            tied(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                    "--daemonize",
                    "no",
                ]
            ),  # gone with the test process, even if it is killed
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StackError(
                    f"redis-server exited with {self.proc.returncode}: {(self.dir / 'redis.log').read_text()[-2000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        raise StackError(f"redis-server did not answer on port {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
