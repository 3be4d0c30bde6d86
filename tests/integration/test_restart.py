"""Restarts lose no work: running tasks outlive their scheduler and the next scheduler adopts them.

Real deployments (api-server, dag-processor and schedulers on Airflow 3; PostgreSQL wherever two
schedulers share a DB, and always on Airflow 2). The DAG ``forklift_restart`` has three long tasks
and ten quick ones; every task process records its own start and end (``tests/dags/forklift_restart.py``),
so "nothing ran twice" is checked from the tasks themselves, not only from the DB.

Each test prints its timings; docs/reliability.md quotes them.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from forklift.testing.stack import AirflowStack

from support import still_alive

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

TESTS = Path(__file__).resolve().parents[1]
LONG = 20.0  # seconds each long task runs
LONG_TASKS = {f"long_{i}" for i in range(3)}
QUICK_TASKS = {f"quick_{i}" for i in range(10)}
#: Airflow's orphan check, shortened so that a test sees it act (defaults: 300 s and 30 s).
PROMPT_ORPHAN_CHECK = {
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "2",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "6",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
}
CONFIGS = [(4, "fork"), (0, "subprocess")]
CONFIG_IDS = ["limited4-fork", "unlimited-subprocess"]


@dataclass
class Run:
    task_id: str
    pid: int
    try_number: int
    start: float
    end: float | None
    parents: list[int]


def runs(out: Path) -> dict[str, list[Run]]:
    """Every task process that ran, by task id, from the tasks' own records."""
    found: dict[str, list[Run]] = {}
    for start_file in out.glob("*.start"):
        if start_file.name.startswith("."):
            continue  # being written (tasks write a dot-file, then rename it)
        task_id, pid = start_file.stem.rsplit(".", 1)
        started = json.loads(start_file.read_text())
        end_file = start_file.with_suffix(".end")
        end = json.loads(end_file.read_text())["end"] if end_file.exists() else None
        found.setdefault(task_id, []).append(
            Run(task_id, int(pid), int(started["try"]), float(started["start"]), end, started["parents"])
        )
    return found


def assert_each_ran_once_on_try_1(out: Path, task_ids: set[str]) -> dict[str, Run]:
    seen = runs(out)
    assert set(seen) == task_ids, f"tasks that ran: {sorted(seen)}"
    twice = {t: [(r.pid, r.try_number) for r in rs] for t, rs in seen.items() if len(rs) != 1}
    assert not twice, f"task instances that ran more than once: {twice}"
    once = {t: rs[0] for t, rs in seen.items()}
    assert all(r.try_number == 1 for r in once.values()), {t: r.try_number for t, r in once.items()}
    unfinished = [t for t, r in once.items() if r.end is None]
    assert not unfinished, f"runs that never reached their end: {unfinished}"
    return once


def wait_until(condition, what: str, timeout: float, stack: AirflowStack | None = None, poll: float = 0.2) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            tail = stack.log_tail("scheduler", chars=6000) if stack is not None else ""
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{tail}")
        time.sleep(poll)
    return time.monotonic() - started


def long_running_and_quick_done(out: Path) -> bool:
    seen = runs(out)
    return all(t in seen for t in LONG_TASKS) and all(t in seen and seen[t][0].end for t in QUICK_TASKS)


def forklift_processes(stack: AirflowStack) -> list[psutil.Process]:
    """This deployment's live forklift workers and tasks, wherever they are parented now.

    Found by title and working directory (the stack's home, which workers and tasks inherit): a
    retitled process's /proc environ no longer shows its AIRFLOW_HOME (setproctitle reuses that memory).
    """
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if (
                "-- forklift" in " ".join(proc.cmdline())
                and proc.cwd() == str(stack.home)
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def descendants(stack: AirflowStack, name: str = "scheduler") -> list[int]:
    """forklift's processes below a component now: its Manager, workers and tasks (not Airflow's own
    children, such as the scheduler's log server, which Airflow itself leaves behind on a SIGKILL)."""
    out = []
    for proc in psutil.Process(stack.process(name).pid).children(recursive=True):
        try:
            if "-- forklift" in " ".join(proc.cmdline()):
                out.append(proc.pid)
        except psutil.Error:
            continue
    return out


def scheduler_env(parallelism: int, mode: str, **extra: str) -> dict[str, str]:
    return {
        "AIRFLOW__FORKLIFT__PARALLELISM": str(parallelism),
        "AIRFLOW__FORKLIFT__RUN_MODE": mode,
        "AIRFLOW__FORKLIFT__ON_SHUTDOWN": "adopt",  # the default; the test stack sets "stop"
        "AIRFLOW__FORKLIFT__SHUTDOWN_TIMEOUT": "2",
        **extra,
    }


def adoptions(stack: AirflowStack, name: str = "scheduler") -> int:
    return stack.log_tail(name, chars=10**8).count("forklift: adopted ")


@pytest.fixture
def out(tmp_path: Path, stack: AirflowStack) -> Iterator[Path]:
    yield tmp_path
    if stack.is_running("scheduler"):  # a test that failed midway: the next one starts its own
        stack.stop_component("scheduler")
    _abandon_unfinished(stack)
    for proc in forklift_processes(stack):  # a failed test must not leave work for the next one
        try:
            proc.kill()
        except psutil.Error:
            pass


def _abandon_unfinished(stack: AirflowStack) -> None:
    """What a failed test left unfinished is failed, so no later scheduler resets and reruns it."""
    stack.fail_unfinished("forklift_restart")
    stack.fail_unfinished("forklift_spread")


def finish_and_check(stack: AirflowStack, out: Path, run_id: str, label: str, fault_at: float, old: list[int]) -> None:
    """The run succeeds soon after its long tasks' natural end, every task ran once on try 1, and no
    forklift process of the stopped scheduler is left once its task is done."""
    assert stack.wait_for_run("forklift_restart", run_id, timeout=240) == "success"
    once = assert_each_ran_once_on_try_1(out, LONG_TASKS | QUICK_TASKS)
    last_long_end = max(once[t].end or 0 for t in LONG_TASKS)
    _, run_end = stack.dag_run_times("forklift_restart", run_id)
    assert run_end is not None
    lag = run_end.timestamp() - last_long_end
    print(
        f"\n{label}: DAG run success at +{run_end.timestamp() - fault_at:.1f} s after the fault; "
        f"{lag:.1f} s after the last long task's natural end; every task ran once, on try 1"
    )
    assert lag < 20, f"the run ended {lag:.1f} s after its last task"
    assert len(old) >= 4, f"expected the old scheduler's workers and tasks, found {old}"
    wait_until(lambda: not still_alive(old), "the old scheduler's processes gone once their tasks ended", 15)
    stack.stop_component("scheduler")
    wait_until(lambda: not forklift_processes(stack), "forklift processes gone after the run", 15)


@pytest.mark.parametrize(("parallelism", "mode"), CONFIGS, ids=CONFIG_IDS)
def test_sigterm_restart_adopts_running_tasks(stack: AirflowStack, out: Path, parallelism: int, mode: str) -> None:
    run_id = f"sigterm_{parallelism}_{mode}"
    stack.start_scheduler(scheduler_env(parallelism, mode))
    release = out / "release-long-tasks"  # as in the SIGKILL test below: they run until seen adopted
    stack.trigger("forklift_restart", run_id, {"out_dir": str(out), "long_seconds": 6 * LONG, "release": str(release)})
    wait_until(lambda: long_running_and_quick_done(out), "long tasks running, quick ones done", 180, stack)
    long_pids = [runs(out)[t][0].pid for t in LONG_TASKS]
    before = adoptions(stack)
    old = descendants(stack)

    started, fault_at = time.monotonic(), time.time()
    stack.signal_component("scheduler", signal.SIGTERM)
    code = stack.release_component("scheduler")
    stopped = time.monotonic() - started
    assert stack.stopped_cleanly("scheduler", code), stack.log_tail("scheduler")
    assert still_alive(long_pids) == long_pids, "the long tasks must outlive the scheduler's SIGTERM"
    print(f"\nSIGTERM: scheduler exited in {stopped:.1f} s, its 3 long tasks still running")

    stack.start_scheduler(scheduler_env(parallelism, mode))
    wait_until(lambda: adoptions(stack) >= before + 3, "the restarted scheduler adopts the 3 long tasks", 120, stack)
    print(f"restarted scheduler adopted them {time.monotonic() - started:.1f} s after the SIGTERM")
    release.touch()
    finish_and_check(stack, out, run_id, "SIGTERM restart", fault_at, old)


def test_sigkill_restart_default_thresholds(stack: AirflowStack, out: Path) -> None:
    """Airflow's defaults: the restarted scheduler does not yet see the old one as dead (30 s threshold,
    300 s check), so nothing is adopted or reset; the tasks finish on their own, on try 1."""
    run_id = "sigkill_defaults"
    stack.start_scheduler(scheduler_env(4, "fork"))
    stack.trigger("forklift_restart", run_id, {"out_dir": str(out), "long_seconds": LONG})
    wait_until(lambda: long_running_and_quick_done(out), "long tasks running, quick ones done", 180, stack)
    long_pids = [runs(out)[t][0].pid for t in LONG_TASKS]
    old = descendants(stack)

    fault_at = time.time()
    stack.signal_component("scheduler", signal.SIGKILL)
    stack.release_component("scheduler")
    assert still_alive(long_pids) == long_pids, "the long tasks must outlive a SIGKILLed scheduler"
    stack.start_scheduler(scheduler_env(4, "fork"))
    finish_and_check(stack, out, run_id, "SIGKILL + restart, default thresholds", fault_at, old)


@pytest.mark.parametrize(("parallelism", "mode"), CONFIGS, ids=CONFIG_IDS)
def test_sigkill_restart_prompt_orphan_check_adopts(
    stack: AirflowStack, out: Path, parallelism: int, mode: str
) -> None:
    """Airflow's orphan check shortened to seconds: Airflow's own executor reruns try 2 while try 1 still
    runs; forklift's next scheduler adopts try 1 instead."""
    run_id = f"sigkill_prompt_{parallelism}_{mode}"
    env = scheduler_env(parallelism, mode, **PROMPT_ORPHAN_CHECK)
    stack.start_scheduler(env)
    # The long tasks run until they are seen adopted: with a fixed length, a loaded machine's slow restart
    # let them end before the orphan check, and there was nothing left to adopt.
    release = out / "release-long-tasks"
    conf = {"out_dir": str(out), "long_seconds": 6 * LONG, "release": str(release)}
    stack.trigger("forklift_restart", run_id, conf)
    wait_until(lambda: long_running_and_quick_done(out), "long tasks running, quick ones done", 180, stack)
    before = adoptions(stack)
    old = descendants(stack)

    fault_at = time.time()
    stack.signal_component("scheduler", signal.SIGKILL)
    stack.release_component("scheduler")
    stack.start_scheduler(env)
    took = wait_until(
        lambda: adoptions(stack) >= before + 3, "the restarted scheduler adopts the 3 long tasks", 120, stack
    )
    print(f"\nSIGKILL + restart: the new scheduler adopted the 3 long tasks {took:.1f} s after the kill")
    release.touch()
    finish_and_check(stack, out, run_id, "SIGKILL + restart, prompt orphan check", fault_at, old)


def test_killed_scheduler_never_restarted_leaves_nothing(stack: AirflowStack, out: Path) -> None:
    """Nobody adopts: after [forklift] orphan_timeout the tasks are stopped, their workers leave, and the
    task instances end failed (retries remain for a scheduler to use), none left running."""
    run_id = "sigkill_abandoned"
    stack.start_scheduler(scheduler_env(4, "fork", AIRFLOW__FORKLIFT__ORPHAN_TIMEOUT="5"))
    stack.trigger("forklift_restart", run_id, {"out_dir": str(out), "long_seconds": 600})
    wait_until(lambda: long_running_and_quick_done(out), "long tasks running, quick ones done", 180, stack)
    procs = descendants(stack)
    assert len(procs) >= 8, procs  # manager, 4 workers, 3 long tasks
    assert len(forklift_processes(stack)) >= 7
    stack.signal_component("scheduler", signal.SIGKILL)
    stack.release_component("scheduler")
    # orphan_timeout 5 s + kill_grace 5 s (+ kill_grace for a supervisor to report), and slack.
    took = wait_until(lambda: not still_alive(procs), "every process of the killed scheduler gone", 40)
    assert not forklift_processes(stack)
    print(
        f"\nSIGKILL, never restarted: tasks stopped and workers gone {took:.1f} s after the kill ({len(procs)} processes)"
    )
    assert not [t for t, rs in runs(out).items() if t in LONG_TASKS and rs[0].end], (
        "the 600 s tasks cannot have finished"
    )

    def long_tis_settled() -> bool:
        rows = stack.task_instances("forklift_restart", run_id)
        return all(r.state != "running" for r in rows if r.task_id in LONG_TASKS)

    if not long_tis_settled():
        # Airflow 3: the supervisor reports its task's death, but nothing may act on it until a scheduler
        # runs again; the next one (whenever it comes) adopts the recorded FAILED outcome and fails them.
        assert stack.major >= 3, "Airflow 2's LocalTaskJob records the stopped task's end itself"
        # (on_shutdown=stop: the retry it may start must not outlive this test)
        stack.start_scheduler(scheduler_env(4, "fork", AIRFLOW__FORKLIFT__ON_SHUTDOWN="stop", **PROMPT_ORPHAN_CHECK))
    wait_until(long_tis_settled, "the stopped tasks' instances leave 'running'", 60, stack)
    states = {r.task_id: r.state for r in stack.task_instances("forklift_restart", run_id)}
    print(f"their task instances: {sorted({states[t] for t in LONG_TASKS})}")
    assert {states[t] for t in QUICK_TASKS} == {"success"}
    _abandon_unfinished(stack)  # their retries are not the point here
    stack.stop_component("scheduler")


# -- several schedulers on one PostgreSQL --------------------------------------------------------


@pytest.fixture(scope="module")
def pg_stack(stack_factory) -> AirflowStack:
    st = stack_factory(TESTS / "dags", {}, postgres=True)
    st.wait_for_dag("forklift_restart")
    st.wait_for_dag("forklift_spread")
    return st


@pytest.fixture
def two_schedulers(pg_stack: AirflowStack) -> Iterator[tuple[AirflowStack, dict[int, str]]]:
    env = scheduler_env(4, "fork", **PROMPT_ORPHAN_CHECK)
    pg_stack.start_component("scheduler", "scheduler", env=env)
    pg_stack.start_component("scheduler-b", "scheduler", env=env)
    try:
        wait_until(lambda: len(pg_stack.scheduler_jobs_running()) >= 2, "both schedulers running", 120, pg_stack)
        names = {pg_stack.process(n).pid: n for n in ("scheduler", "scheduler-b")}
        yield pg_stack, names
    finally:
        for name in ("scheduler", "scheduler-b"):
            pg_stack.stop_component(name)
        _abandon_unfinished(pg_stack)
        for proc in forklift_processes(pg_stack):
            try:
                proc.kill()
            except psutil.Error:
                pass


def test_two_schedulers_share_the_work_and_run_nothing_twice(two_schedulers, tmp_path: Path) -> None:
    st, names = two_schedulers
    started = time.monotonic()
    st.trigger("forklift_spread", "spread", {"out_dir": str(tmp_path), "quick_seconds": 0.5})
    assert st.wait_for_run("forklift_spread", "spread", timeout=240) == "success"
    took = time.monotonic() - started
    once = assert_each_ran_once_on_try_1(tmp_path, {f"quick_{i:02d}" for i in range(40)})
    by_scheduler = {name: 0 for name in names.values()}
    for run in once.values():
        owner = [names[p] for p in run.parents if p in names]
        assert len(owner) == 1, run
        by_scheduler[owner[0]] += 1
    print(f"\ntwo schedulers, 40 quick tasks: {by_scheduler} in {took:.1f} s, nothing ran twice")
    assert all(count > 0 for count in by_scheduler.values()), by_scheduler


def test_two_schedulers_one_killed_the_other_adopts(two_schedulers, tmp_path: Path) -> None:
    st, names = two_schedulers
    run_id = "two_sigkill"
    # Longer than elsewhere: the long tasks must outlast the kill, the survivor's orphan check and its
    # adoption even on a loaded machine (make test runs two deployments at once); a task that ends by
    # itself first is, rightly, never offered for adoption.
    st.trigger("forklift_restart", run_id, {"out_dir": str(tmp_path), "long_seconds": 2 * LONG})
    wait_until(lambda: long_running_and_quick_done(tmp_path), "long tasks running, quick ones done", 180, st)
    seen = runs(tmp_path)
    owner_of = {t: next(names[p] for p in seen[t][0].parents if p in names) for t in LONG_TASKS}
    victim = owner_of["long_0"]
    survivor = next(n for n in names.values() if n != victim)
    orphans = sum(1 for name in owner_of.values() if name == victim)
    before = adoptions(st, survivor)

    fault_at = time.time()
    old = descendants(st, victim)
    st.signal_component(victim, signal.SIGKILL)
    st.release_component(victim)
    took = wait_until(
        lambda: adoptions(st, survivor) >= before + orphans, f"{survivor} adopts {victim}'s tasks", 120, st
    )
    print(f"\ntwo schedulers, {victim} SIGKILLed: {survivor} adopted its {orphans} long task(s) {took:.1f} s later")
    assert st.wait_for_run("forklift_restart", run_id, timeout=240) == "success"
    once = assert_each_ran_once_on_try_1(tmp_path, LONG_TASKS | QUICK_TASKS)
    _, run_end = st.dag_run_times("forklift_restart", run_id)
    assert run_end is not None
    lag = run_end.timestamp() - max(once[t].end or 0 for t in LONG_TASKS)
    print(f"DAG run success at +{run_end.timestamp() - fault_at:.1f} s, {lag:.1f} s after the last long task ended")
    assert lag < 20
    wait_until(lambda: not still_alive(old), f"{victim}'s processes gone once their tasks ended", 15)
