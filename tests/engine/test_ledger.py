"""The ledger alone: no processes, messages handed in as a worker would send them."""

from __future__ import annotations

import collections
from collections.abc import Hashable

from forklift.jobs import FAILED, SUCCESS, Cause, Finished, ForkCall, Job, Recycled, Started
from forklift.ledger import Dispatch, Ledger


class Books:
    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.stopped: list[int] = []
        self.forgotten: list[Hashable] = []
        self.ledger = Ledger(self.counters, self.stopped.append, self.forgotten.append)

    def dispatch(self, key: str) -> Dispatch:
        d = self.ledger.dispatched[key] = Dispatch(Job(key, ForkCall(print)))
        self.ledger.submitted[key] = d.handed_at
        return d


def test_a_job_is_started_then_finished_and_leaves_the_books() -> None:
    books = Books()
    d = books.dispatch("k")
    assert books.ledger.record(Started("k", 4242, 100, d.seq))
    assert d.task_pid == 4242 and d.worker_pid == 100 and d.started_at is not None
    assert len(books.ledger.take_latencies()) == 1 and books.ledger.take_latencies() == []
    assert books.ledger.record(Finished("k", SUCCESS, "exited with code 0", 100, d.seq))
    assert "k" not in books.ledger.dispatched and books.forgotten == ["k"] and len(books.ledger.runtimes) == 1


def test_reports_from_an_older_dispatch_or_another_worker_are_dropped() -> None:
    books = Books()
    d = books.dispatch("k")
    assert not books.ledger.record(Finished("k", SUCCESS, "", 100, d.seq - 1))  # an older copy's
    assert books.ledger.record(Started("k", 4242, 100, d.seq))
    assert not books.ledger.record(Finished("k", SUCCESS, "", 101, d.seq))  # not the worker running it
    assert not books.ledger.record(Finished("nobody", SUCCESS, "", 100, 1))
    assert "k" in books.ledger.dispatched and books.forgotten == []


def test_a_revoked_copy_that_starts_is_stopped_and_its_end_forgotten() -> None:
    books = Books()
    d = books.dispatch("k")
    del books.ledger.dispatched["k"]
    books.ledger.revoked.add(d.seq)
    assert not books.ledger.record(Started("k", 4242, 100, d.seq))
    assert books.stopped == [4242]
    assert not books.ledger.record(Finished.failed("k", Cause.KILLED_BY_SIGNAL, "killed by SIGTERM", 100, d.seq))
    assert d.seq not in books.ledger.revoked and books.forgotten == ["k"]


def test_counters_follow_the_cause_not_the_message() -> None:
    books = Books()
    for key, cause in [("a", Cause.TIMED_OUT), ("b", Cause.MEMORY_LIMIT), ("c", Cause.EXIT_CODE)]:
        d = books.dispatch(key)
        assert books.ledger.record(Finished(key, FAILED, "whatever the words", 1, d.seq, cause))
    assert not books.ledger.record(Recycled(7, "ran 10 tasks"))
    assert books.counters == {"timeouts": 1, "memory_limits": 1, "recycles": 1}


def test_ready_budget_needs_a_finished_task_and_a_free_worker_soon() -> None:
    books = Books()
    assert books.ledger.ready_budget(workers=2, most=6, horizon=10) == 0  # nothing seen yet
    books.ledger.runtimes.extend([0.5, 0.5, 0.5])
    assert books.ledger.ready_budget(workers=2, most=6, horizon=10) == 6  # 2 workers × 10 s / 0.5 s, capped
    assert books.ledger.ready_budget(workers=2, most=6, horizon=1) == 4
    for key in ("x", "y"):  # both workers held by tasks running for a minute already
        d = books.dispatch(key)
        d.started_at = d.handed_at - 60
    assert books.ledger.ready_budget(workers=2, most=6, horizon=10) == 0
