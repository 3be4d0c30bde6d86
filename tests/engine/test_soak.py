"""2,000 short jobs through each strategy: nothing lost, nothing duplicated, nothing growing."""

from __future__ import annotations

import time

import psutil
import pytest

from forklift.jobs import RUNNING, SUCCESS, ForkCall, Job
from forklift.strategies import make_strategy

import jobfns

JOBS = 2000
WINDOW = 32  # what [core] parallelism would let the scheduler hand an unlimited executor at once


def sample(parallelism: int, strategy) -> dict[str, float]:
    """What would grow if forklift leaked: the engine's own RSS, its fds, its zombies, and (for the
    fixed pool of LimitedParallelism) the workers' RSS. An unlimited strategy's worker count varies
    by design, and each fork's shared pages count in full in its RSS, so those are not summed."""
    me = psutil.Process()
    zombies = 0
    for proc in me.children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                zombies += 1
        except psutil.Error:
            continue
    workers_rss = 0
    if parallelism:
        for pid in strategy.worker_pids():
            try:
                workers_rss += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
    return {
        "workers": len(strategy.worker_pids()),
        "fds": me.num_fds(),
        "rss_mib": me.memory_info().rss / 2**20,
        "workers_rss_mib": workers_rss / 2**20,
        "zombies": zombies,
    }


@pytest.mark.timeout(600)
@pytest.mark.parametrize("parallelism", [0, 4], ids=["unlimited", "limited4"])
def test_soak(parallelism: int) -> None:
    s = make_strategy(parallelism)
    s.start()
    final: dict[str, str] = {}
    samples: list[dict[str, float]] = []
    submitted = 0
    try:
        while len(final) < JOBS:
            while submitted < JOBS and (parallelism or len(s.running_keys) < WINDOW):
                s.submit(Job(f"j{submitted}", ForkCall(jobfns.ok)))
                submitted += 1
            for result in s.poll(timeout=0.05):
                if result.state == RUNNING:
                    continue
                assert result.key not in final, f"second result for {result.key}"
                final[result.key] = result.state
                if len(final) % 100 == 0:
                    samples.append(sample(parallelism, s))
        # All read: a LocalWorker leaves with its task, a QueuedLocalWorker stays; none is left unreaped.
        deadline = time.monotonic() + 30
        while len(s.worker_pids()) > parallelism and time.monotonic() < deadline:
            s.poll(timeout=0.05)
        drained = sample(parallelism, s)
    finally:
        s.end(timeout=30)
    assert len(final) == JOBS and set(final.values()) == {SUCCESS}
    early, late = samples[2:6], samples[-4:]  # past warm-up vs the end
    print(f"\nsoak parallelism={parallelism}: early={early[0]} late={late[-1]}")
    if parallelism:
        assert {s["workers"] for s in samples} == {parallelism}
    else:
        assert max(s["workers"] for s in samples) <= WINDOW
    # Each live LocalWorker holds a few fds, and how many are live at a sample varies with load: compare
    # the pool's steady state for LimitedParallelism, and the drained engine for UnlimitedParallelism.
    if parallelism:
        assert max(s["fds"] for s in late) <= max(s["fds"] for s in early) + 4
    assert drained["fds"] <= max(s["fds"] for s in early) + 4, drained
    assert max(s["zombies"] for s in samples) <= WINDOW  # reaped every poll: never piling up
    assert drained["workers"] == parallelism and drained["zombies"] == 0, drained
    assert max(s["rss_mib"] for s in late) <= max(s["rss_mib"] for s in early) + 20
    assert max(s["workers_rss_mib"] for s in late) <= max(s["workers_rss_mib"] for s in early) * 1.1 + 20
