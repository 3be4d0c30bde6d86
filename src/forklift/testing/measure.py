"""Small measurements shared by the tests, the demo and the benchmark."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def peak_overlap(intervals: Iterable[tuple[Any, Any]]) -> int:
    """Most intervals open at once. An interval ending at the instant another starts does not overlap it."""
    events: list[tuple[Any, int]] = []
    for start, end in intervals:
        if start is None or end is None:
            raise ValueError(f"interval ({start!r}, {end!r}) is open-ended; both ends are needed")
        events += [(start, 1), (end, -1)]
    level = peak = 0
    for _, step in sorted(events):  # (t, -1) sorts before (t, 1)
        level += step
        peak = max(peak, level)
    return peak


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
