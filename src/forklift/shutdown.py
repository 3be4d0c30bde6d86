"""Noticing a second SIGTERM/SIGINT while the executor is already shutting down.

The scheduler calls ``end()`` after its first signal. An operator who signals again does not want
to wait for running tasks any longer, so while ``end()`` waits, forklift listens for that second
signal and stops waiting (the tasks are then stopped, not abandoned).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SecondSignal:
    """Context manager: while active, SIGTERM/SIGINT set a flag instead of their usual effect."""

    def __init__(self) -> None:
        self._seen = False
        self._previous: dict[int, Any] = {}

    def arrived(self) -> bool:
        return self._seen

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._seen = True

    def __enter__(self) -> SecondSignal:
        # Handlers can only be set from the main thread; elsewhere there is nothing to listen for.
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
