"""Waiting and process-counting helpers for the engine tests."""

from __future__ import annotations

import os
import time
from collections.abc import Hashable, Iterator
from pathlib import Path

import psutil

from forklift.jobs import RUNNING, Result
from forklift.strategies import _Strategy


def wait_for_results(strategy: _Strategy, keys: set[Hashable], timeout: float = 30) -> dict[Hashable, Result]:
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


def wait_for_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)
    return path.read_text()


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}
