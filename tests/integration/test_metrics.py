"""forklift's metrics, read by a real StatsD listener on loopback while a real scheduler runs (both lines)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import psutil
import pytest

from forklift.testing.stack import AirflowStack

pytestmark = [pytest.mark.integration, pytest.mark.smoke, pytest.mark.timeout(300)]


class StatsdListener:
    """A UDP server that keeps every StatsD line it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except OSError:
                continue
            self.lines += data.decode(errors="replace").splitlines()

    def matching(self, name: str) -> list[str]:
        """Lines for metric ``name`` (tags, InfluxDB-style, follow the name after commas)."""
        return [line for line in list(self.lines) if line.startswith(name) and line[len(name)] in ",:"]

    def wait_for(self, prefix: str, count: int = 1, timeout: float = 60) -> list[str]:
        """The lines for ``prefix`` once there are ``count`` of them (or ``timeout`` has passed)."""
        deadline = time.monotonic() + timeout
        while len(self.matching(prefix)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.matching(prefix)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def tag_names(line: str) -> set[str]:
    return {tag.split("=")[0] for tag in line.split(":", maxsplit=1)[0].split(",")[1:]}


def test_forklift_metrics_reach_statsd(stack: AirflowStack) -> None:
    statsd = StatsdListener()
    stack.wait_for_dag("forklift_quick")
    stack.start_scheduler(
        {
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
            "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
            # Tags on the wire, so forklift's can be compared with the ones this line's own executor metrics use.
            "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
            "AIRFLOW__FORKLIFT__PARALLELISM": "2",
        }
    )
    try:
        run_id = f"metrics_{time.time_ns()}"
        stack.trigger("forklift_quick", run_id)
        assert stack.wait_for_run("forklift_quick", run_id, timeout=180) == "success"
        # One timing per task, from submit() to its process running. The run's success is the DB's word and
        # may come before the scheduler's next heartbeat sends the last timing: wait for all three.
        assert len(statsd.wait_for("airflow.forklift.dispatch_latency", count=3)) >= 3, statsd.lines[-20:]
        gauges = statsd.wait_for("airflow.forklift.live_workers")
        assert gauges and gauges[-1].split(":")[1].startswith("2|g"), gauges[-3:]
        # Tagged as this Airflow line tags its own executor metrics ("name" up to 3.2, then
        # "executor_class_name"), less the per-metric "status".
        theirs = statsd.wait_for("airflow.executor.open_slots")
        assert theirs, statsd.lines[-20:]
        assert tag_names(gauges[-1]) == tag_names(theirs[-1]) - {"status"}, (gauges[-1], theirs[-1])

        # A worker dies (an OOM kill, say): counted, and replaced.
        scheduler = psutil.Process(stack.process("scheduler").pid)
        workers = [
            p for p in scheduler.children(recursive=True) if "airflow worker -- forklift" in " ".join(p.cmdline())
        ]
        assert len(workers) == 2
        os.kill(workers[0].pid, signal.SIGKILL)
        deaths = statsd.wait_for("airflow.forklift.worker_deaths")
        assert deaths and deaths[0].split(":")[1].startswith("1|c"), deaths
    finally:
        code = stack.stop_component("scheduler")
        statsd.close()
    assert stack.stopped_cleanly("scheduler", code), stack.log_tail("scheduler")
