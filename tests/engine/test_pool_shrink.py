"""A pool that shrinks when idle (``idle_timeout``, ``min_workers``) and the relative leak guard
(``max_memory_growth_per_child``), on the real engine: real worker processes, real jobs."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from forklift.jobs import SUCCESS, ForkCall, Job
from forklift.strategies import EngineOptions, LimitedParallelism

import jobfns
from helpers import wait_for_results
from support import wait_for_path, wait_for_title

pytestmark = pytest.mark.timeout(120)


def job(key: str, func, *args) -> Job:
    return Job(key, ForkCall(func, args), title=key)


def poll_until(strategy: LimitedParallelism, done, timeout: float = 30) -> None:
    """Poll (as the scheduler's heartbeat does) until ``done()``; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not so within {timeout} s: {len(strategy.worker_pids())} workers"
        strategy.poll(timeout=0.1)


def test_idle_workers_leave_down_to_the_minimum_and_come_back_at_once_for_new_work(tmp_path: Path) -> None:
    s = LimitedParallelism(3, EngineOptions(idle_timeout=0.5, min_workers=1))
    s.start()
    try:
        assert len(s.worker_pids()) == 3, "exactly N workers from start(), as without idle_timeout"
        poll_until(s, lambda: len(s.worker_pids()) == 1)
        assert s.counters["idle_retirements"] == 2 and s.counters["worker_deaths"] == 0
        # min_workers stays however long the pool idles.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            s.poll(timeout=0.1)
        assert len(s.worker_pids()) == 1

        # Three jobs at once: the workers they need are forked in the same call that takes them (one
        # heartbeat), from this warm process, and all three run side by side.
        for k in ("a", "b", "c"):
            s.submit(job(k, jobfns.span, str(tmp_path / "spans"), k, 1.0))
        assert len(s.worker_pids()) == 3, "a shrunk pool grows back when work arrives, not a poll later"
        got = wait_for_results(s, {"a", "b", "c"})
        assert {r.state for r in got.values()} == {SUCCESS}
        assert len({r.worker_pid for r in got.values()}) == 3
    finally:
        s.end(timeout=10)


def test_nothing_is_lost_while_the_pool_shrinks_and_grows(tmp_path: Path) -> None:
    """Jobs arrive in bursts with idle gaps just past idle_timeout between them, so workers keep leaving
    while others are taken on: every job gets exactly one result, and no worker is counted as lost."""
    s = LimitedParallelism(4, EngineOptions(idle_timeout=0.2, min_workers=0, prefetch=4))
    s.start()
    keys: set[str] = set()
    final: dict[str, list[str]] = {}

    def collect(timeout: float) -> None:
        for r in s.poll(timeout=timeout):
            if r.state != "running":
                final.setdefault(str(r.key), []).append(r.state)

    try:
        for burst in range(6):
            for i in range(burst % 3 + 1):
                key = f"b{burst}-{i}"
                keys.add(key)
                s.submit(job(key, jobfns.ok))
            gap = time.monotonic() + 0.35
            while time.monotonic() < gap:
                collect(0.05)
        deadline = time.monotonic() + 60
        while set(final) != keys and time.monotonic() < deadline:
            collect(0.1)
        assert final == {k: [SUCCESS] for k in keys}, "every job exactly one result, each a success"
        assert s.counters["idle_retirements"] >= 1 and s.counters["worker_deaths"] == 0
    finally:
        s.end(timeout=10)


def test_a_worker_that_comes_back_is_forked_with_the_heap_frozen_as_at_start(tmp_path: Path) -> None:
    """A worker forked later (a shrunk pool growing, a replacement) must share the scheduler's heap as the
    ones from start() do: with it frozen, its collector never walks, and so never copies, what it inherited."""
    s = LimitedParallelism(1, EngineOptions(idle_timeout=0.3, min_workers=0))
    s.start()
    try:
        s.submit(job("at-start", jobfns.write_gc_freeze_count, str(tmp_path / "at-start")))
        first = wait_for_results(s, {"at-start"})["at-start"]
        poll_until(s, lambda: len(s.worker_pids()) == 0)
        s.submit(job("came-back", jobfns.write_gc_freeze_count, str(tmp_path / "came-back")))
        again = wait_for_results(s, {"came-back"})["came-back"]
        assert again.worker_pid != first.worker_pid
        assert int((tmp_path / "at-start").read_text()) > 1000
        assert int((tmp_path / "came-back").read_text()) > 1000, "the returning worker's heap was not frozen"
    finally:
        s.end(timeout=10)


def test_a_worker_whose_own_memory_grew_past_the_guard_is_replaced_between_tasks(tmp_path: Path) -> None:
    gate, claim = tmp_path / "leak-now", tmp_path / "claimed"
    # A guard well above what a worker grows by doing its first task (lazy imports, caches: tens of MiB in a
    # process as big as the suite's), and a leak well above the guard.
    init = functools.partial(jobfns.leak_once_gated, str(gate), str(claim), 256)
    s = LimitedParallelism(1, EngineOptions(worker_init=init, max_memory_growth_per_child=128))
    s.start()
    try:
        s.submit(job("before", jobfns.ok))
        before = wait_for_results(s, {"before"})["before"]
        # The worker reports a task's end before it checks its own size: leaking before that check would
        # retire it at once, with the leak's note unwritten. Leak only once it waits for work again.
        wait_for_title(before.worker_pid, "forklift: <idle>")
        s.poll()  # a RECYCLED it sent on the way would be read here
        assert s.counters["recycles"] == 0, "replaced before it leaked: the guard is below the warm-up growth"
        gate.touch()
        wait_for_path(Path(str(gate) + ".leaked"))  # the worker itself now holds 256 MiB more
        s.submit(job("after-leak", jobfns.ok))
        s.submit(job("fresh", jobfns.ok))
        got = wait_for_results(s, {"after-leak", "fresh"})
        assert got["after-leak"].worker_pid == before.worker_pid
        assert got["fresh"].worker_pid != before.worker_pid, "the grown worker left after its task"
        assert s.counters["recycles"] == 1 and s.counters["worker_deaths"] == 0
    finally:
        s.end(timeout=10)
