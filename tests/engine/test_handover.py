"""Work outlives its scheduler: a real stand-in scheduler process (scheduler_stub.py) starts a task and
is then killed or ends; a second engine here adopts the task, or nobody does and the task is stopped.

No Airflow: this is the engine's half of issue "restarts lose no work". Every test checks the task's
own record of its run (one line per finished run), not just what the engine reports.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forklift.handover import ProcessId, RecordsDir, TaskRecord, boot_id
from forklift.jobs import FAILED, SUCCESS, Cause
from forklift.strategies import EngineOptions, make_strategy

from helpers import wait_for_results
from support import alive, wait_gone

pytestmark = pytest.mark.timeout(120)

STUB = Path(__file__).resolve().parent / "scheduler_stub.py"
MODES = [(0, "fork"), (2, "fork"), (0, "subprocess"), (2, "subprocess")]
IDS = ["unlimited-fork", "limited-fork", "unlimited-subprocess", "limited-subprocess"]


class Stub:
    """The stand-in scheduler process and what it said."""

    def __init__(self, tmp_path: Path, **spec: object) -> None:
        self.records = tmp_path / "records"
        self.out = tmp_path / "runs.txt"
        spec = {"records": str(self.records), "out": str(self.out), "then": "wait", **spec}
        self.proc = subprocess.Popen(
            [sys.executable, str(STUB), json.dumps(spec)], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert line, f"the stub scheduler said nothing (exit {self.proc.wait()})"
        self.said = json.loads(line)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def runs(self, key: str) -> list[str]:
        if not self.out.exists():
            return []
        return [line for line in self.out.read_text().splitlines() if line.split()[0] == key]


@pytest.fixture
def cleanup() -> list[int]:
    """Pids a test may leave behind on failure; killed afterwards so one failure does not cascade."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def adopter(records: Path, parallelism: int = 2):
    engine = make_strategy(parallelism, EngineOptions(kill_grace=1.0, records=RecordsDir(records).ensure()))
    engine.start()
    return engine


@pytest.mark.parametrize(("parallelism", "mode"), MODES, ids=IDS)
def test_a_task_outlives_its_killed_scheduler_and_is_adopted(
    tmp_path: Path, cleanup: list[int], parallelism: int, mode: str
) -> None:
    stub = Stub(tmp_path, parallelism=parallelism, mode=mode, key="long", seconds=3)
    task, worker = stub.said["task_pid"], stub.said["worker_pid"]
    cleanup += [task, worker]
    stub.kill()
    assert alive(task) and alive(worker), "the task (and its worker) must outlive a SIGKILLed scheduler"

    engine = adopter(stub.records)
    try:
        assert engine.adopt("long")
        assert engine.running_keys == {"long"}
        result = wait_for_results(engine, {"long"}, timeout=30)["long"]
        assert result.state == SUCCESS, result
        assert len(stub.runs("long")) == 1, "it ran to the end exactly once"
        assert engine.running_keys == set(), "its slot is free once its end is reported"
        wait_gone([task, worker], timeout=5)
        assert list(stub.records.iterdir()) == [], "its record is gone once its end is reported"
    finally:
        engine.terminate()


@pytest.mark.parametrize(("parallelism", "mode"), [MODES[1], MODES[2]], ids=[IDS[1], IDS[2]])
def test_a_scheduler_that_ends_leaves_running_work_for_the_next(
    tmp_path: Path, cleanup: list[int], parallelism: int, mode: str
) -> None:
    stub = Stub(tmp_path, parallelism=parallelism, mode=mode, key="long", seconds=3, then="end")
    task, worker = stub.said["task_pid"], stub.said["worker_pid"]
    cleanup += [task, worker]
    assert stub.proc.wait(timeout=20) == 0, "end(leave_running=True) must not wait for the task"
    assert alive(task), "end(leave_running=True) stopped the task"
    engine = adopter(stub.records)
    try:
        assert engine.adopt("long")
        assert wait_for_results(engine, {"long"}, timeout=30)["long"].state == SUCCESS
        assert len(stub.runs("long")) == 1
        wait_gone([task, worker], timeout=5)
    finally:
        engine.terminate()


def test_a_task_that_ended_unwatched_is_adopted_with_its_outcome(tmp_path: Path, cleanup: list[int]) -> None:
    stub = Stub(tmp_path, parallelism=2, mode="fork", key="short", seconds=0.5)
    cleanup += [stub.said["task_pid"], stub.said["worker_pid"]]
    stub.kill()
    wait_gone([stub.said["worker_pid"]], timeout=10)  # finished, wrote its outcome, left
    engine = adopter(stub.records)
    try:
        assert engine.adopt("short")
        assert wait_for_results(engine, {"short"}, timeout=5)["short"].state == SUCCESS
        assert len(stub.runs("short")) == 1
    finally:
        engine.terminate()


@pytest.mark.parametrize(("parallelism", "mode"), [MODES[0], MODES[3]], ids=[IDS[0], IDS[3]])
def test_an_orphan_nobody_adopts_is_stopped_after_orphan_timeout(
    tmp_path: Path, cleanup: list[int], parallelism: int, mode: str
) -> None:
    stub = Stub(tmp_path, parallelism=parallelism, mode=mode, key="forever", seconds=600, orphan_timeout=1)
    task, worker = stub.said["task_pid"], stub.said["worker_pid"]
    cleanup += [task, worker]
    stub.kill()
    took = wait_gone([task, worker], timeout=1 + 1 + 3)  # orphan_timeout + kill_grace + slack
    print(f"\nunadopted orphan stopped and its worker gone {took:.1f} s after its scheduler died")
    record = RecordsDir(stub.records).read("forever")
    assert record is not None and record.state == FAILED
    assert "no scheduler adopted it within 1 s ([forklift] orphan_timeout)" in record.reason
    assert record.cause is Cause.ORPHANED
    assert stub.runs("forever") == []


def test_an_adopted_task_is_not_stopped_for_being_orphaned(tmp_path: Path, cleanup: list[int]) -> None:
    """Adoption stops the orphan clock: the task runs past orphan_timeout to its natural end."""
    stub = Stub(tmp_path, parallelism=2, mode="fork", key="long", seconds=4, orphan_timeout=1)
    cleanup += [stub.said["task_pid"], stub.said["worker_pid"]]
    engine = adopter(stub.records)
    try:
        stub.kill()
        assert engine.adopt("long")
        assert wait_for_results(engine, {"long"}, timeout=30)["long"].state == SUCCESS
        assert len(stub.runs("long")) == 1
    finally:
        engine.terminate()


def test_an_orphan_whose_adopter_dies_too_is_stopped(tmp_path: Path, cleanup: list[int]) -> None:
    first = Stub(tmp_path, parallelism=2, mode="fork", key="forever", seconds=600, orphan_timeout=1)
    task, worker = first.said["task_pid"], first.said["worker_pid"]
    cleanup += [task, worker]
    # The adopter is a process of its own that claims the task and is then killed.
    claim = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from forklift.handover import RecordsDir, ProcessId; "
            "RecordsDir(sys.argv[1]).claim('forever', ProcessId.me()); print('claimed', flush=True); time.sleep(600)",
            str(first.records),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert claim.stdout is not None and claim.stdout.readline().strip() == "claimed"
    first.kill()
    assert alive(task)
    claim.kill()
    claim.wait()
    wait_gone([task, worker], timeout=1 + 1 + 3)


@pytest.mark.parametrize(("parallelism", "mode"), [MODES[1], MODES[2]], ids=[IDS[1], IDS[2]])
def test_an_adopted_task_whose_worker_dies_is_failed_and_stopped(
    tmp_path: Path, cleanup: list[int], parallelism: int, mode: str
) -> None:
    stub = Stub(tmp_path, parallelism=parallelism, mode=mode, key="forever", seconds=600)
    task, worker = stub.said["task_pid"], stub.said["worker_pid"]
    cleanup += [task, worker]
    stub.kill()
    engine = adopter(stub.records)
    try:
        assert engine.adopt("forever")
        os.kill(worker, signal.SIGKILL)
        result = wait_for_results(engine, {"forever"}, timeout=10)["forever"]
        assert result.state == FAILED and f"forklift worker pid {worker}" in result.reason, result
        wait_gone([task], timeout=5)
        assert engine.running_keys == set()
    finally:
        engine.terminate()


def test_idle_workers_leave_with_their_scheduler(tmp_path: Path, cleanup: list[int]) -> None:
    stub = Stub(tmp_path, parallelism=3, mode="fork", key="")
    workers = stub.said["workers"]
    cleanup += workers
    assert len(workers) == 3
    stub.kill()
    took = wait_gone(workers, timeout=10)
    print(f"\nidle workers gone {took:.2f} s after their scheduler died")


def test_nothing_is_adopted_without_a_live_worker_or_from_another_boot(tmp_path: Path) -> None:
    records = RecordsDir(tmp_path / "records").ensure()
    me = ProcessId.me()
    reused = ProcessId(me.pid, me.start - 1000)  # our pid, but not our start time: a reused pid
    records.write("reused", TaskRecord(repr("reused"), "reused", boot_id(), reused, None, "running", "", time.time()))
    records.write("old-boot", TaskRecord(repr("old-boot"), "old", "another-boot", me, None, "running", "", time.time()))
    engine = adopter(records.path)
    try:
        assert not engine.adopt("reused")
        assert not engine.adopt("old-boot")
        assert not engine.adopt("never-ran")
        assert engine.running_keys == set()
    finally:
        engine.terminate()


def test_records_are_private_and_hold_no_secret(tmp_path: Path, cleanup: list[int]) -> None:
    stub = Stub(tmp_path, parallelism=0, mode="subprocess", key="secretive", seconds=600, secret="TOKEN-abc123")
    cleanup += [stub.said["task_pid"], stub.said["worker_pid"]]
    try:
        assert stat.S_IMODE(stub.records.stat().st_mode) == 0o700
        files = list(stub.records.iterdir())
        assert files
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            assert "TOKEN-abc123" not in path.read_text()
    finally:
        stub.kill()


def test_a_records_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")  # CI runs as root
    path = tmp_path / "theirs"
    path.mkdir()
    os.chown(path, 65534, 65534)
    with pytest.raises(OSError, match="belongs to uid 65534"):
        RecordsDir(path).ensure()


def test_terminate_stops_an_adopted_task_that_ignores_sigterm(tmp_path: Path, cleanup: list[int]) -> None:
    """As Airflow 3's task runner does (SIGTERM only calls on_kill()): terminate() must escalate to SIGKILL."""
    stub = Stub(tmp_path, parallelism=0, mode="subprocess", key="deaf", seconds=600)
    task, worker = stub.said["task_pid"], stub.said["worker_pid"]
    cleanup += [task, worker]
    stub.kill()
    engine = adopter(stub.records)
    assert engine.adopt("deaf")
    # Make the adopted task deaf to SIGTERM from outside: replace it with a process that ignores it.
    os.kill(task, signal.SIGSTOP)  # a stopped process does not act on SIGTERM until SIGCONT
    results = engine.terminate()
    assert [(r.key, r.state) for r in results] == [("deaf", FAILED)]
    wait_gone([task, worker], timeout=5)


def test_work_held_ready_never_starts_once_its_scheduler_is_gone(tmp_path: Path, cleanup: list[int]) -> None:
    """One worker busy with a long task, two quick jobs held ready behind it on the task queue: the
    scheduler dies, the long task finishes, and neither quick job ever runs (Airflow resets them)."""
    stub = Stub(tmp_path, parallelism=1, mode="fork", key="long", seconds=2, held=["held_1", "held_2"])
    task, worker = stub.said["task_pid"], stub.said["worker_pid"]
    cleanup += [task, worker]
    stub.kill()
    wait_gone([task, worker], timeout=10)
    assert len(stub.runs("long")) == 1
    assert stub.runs("held_1") == [] and stub.runs("held_2") == []
    record = RecordsDir(stub.records).read("long")
    assert record is not None and record.state == SUCCESS, record
