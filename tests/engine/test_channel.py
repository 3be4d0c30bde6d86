"""The result channel stays in step with its Manager when a signal interrupts a round trip.

The scheduler's SIGTERM handler raises ``SystemExit`` wherever the main thread is, which can be
between a proxy call's request and its reply. The next call on that connection must not take the
unread reply for its own (that made ``end()`` fail with ``queue.Empty`` and leave the workers running).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from forklift.channel import ResultChannel

pytestmark = pytest.mark.timeout(60)

#: The Manager holds the interrupted get() this long, so its reply is still unread when the next call goes out.
BLOCK_FOR = 3.0
INTERRUPT_AFTER = 0.2


class Interrupted(Exception):
    pass


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


@pytest.fixture
def channel() -> Iterator[ResultChannel]:
    channel = ResultChannel()
    previous = signal.signal(signal.SIGALRM, _raise)
    try:
        yield channel
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        channel.close()


def test_a_call_after_an_interrupted_round_trip_gets_its_own_reply(channel: ResultChannel) -> None:
    channel.drain()  # connected, in step
    signal.setitimer(signal.ITIMER_REAL, INTERRUPT_AFTER)
    with pytest.raises(Interrupted):
        channel.drain(block_for=BLOCK_FOR)  # request sent; the signal lands while waiting for the reply
    # Without the fix, put() reads the get()'s reply (queue.Empty, once BLOCK_FOR is over) as its own.
    # The get() abandoned on the Manager may still take the first item put: "first" is for it.
    channel.results.put("first")
    channel.results.put("second")
    assert "second" in channel.drain()
    assert channel.results.qsize() == 0
    channel.results.put("third")
    assert channel.drain() == ["third"]
