"""Waiting and process-counting helpers for the engine tests."""

from __future__ import annotations

import time
from collections.abc import Hashable

import psutil

from forklift.jobs import RUNNING, Result
from forklift.strategies import Strategy


def wait_for_results(strategy: Strategy, keys: set[Hashable], timeout: float = 30) -> dict[Hashable, Result]:
    """Poll (blocking on the result queue) until every key has a final result."""
    final: dict[Hashable, Result] = {}
    deadline = time.monotonic() + timeout
    while set(final) != keys:
        if time.monotonic() > deadline:
            raise AssertionError(f"no result for {keys - set(final)} within {timeout} s; got {final}")
        for result in strategy.poll(timeout=0.2):
            if result.state != RUNNING:
                assert result.key not in final, f"two final results for {result.key}: {final[result.key]} and {result}"
                final[result.key] = result
    return final


def wait_for_running(strategy: Strategy, *keys: Hashable, timeout: float = 30) -> None:
    """Poll until every key has reported RUNNING (its other results are dropped)."""
    waiting = set(keys)
    deadline = time.monotonic() + timeout
    while waiting:
        assert time.monotonic() < deadline, f"{sorted(map(str, waiting))} did not start within {timeout} s"
        waiting -= {r.key for r in strategy.poll(timeout=0.2) if r.state == RUNNING}


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}
