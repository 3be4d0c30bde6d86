from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from forklift.strategies import EngineOptions, Strategy, make_strategy

from helpers import descendants


@pytest.fixture(params=[0, 2], ids=["unlimited", "limited2"])
def strategy(request: pytest.FixtureRequest) -> Iterator[Strategy]:
    before = descendants()
    s = make_strategy(request.param, EngineOptions(kill_grace=2.0))
    s.start()
    try:
        yield s
    finally:
        s.terminate()
        left = descendants() - before
        assert not left, f"processes left behind: {[psutil.Process(p).cmdline() for p in left if psutil.pid_exists(p)]}"


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "gate"
    os.mkfifo(path)
    return path
