"""The GPU slot: its non-blocking take and the Retry-After estimate."""

from __future__ import annotations

import pytest
from twisted.internet.defer import DeferredSemaphore
from twisted.internet.task import Clock

from aistack_tts import GPUSlot
from aistack_tts.call._slot import estimate_retry_after, expected_wait


def test_retry_after_without_history_is_one_second() -> None:
    """No call has finished yet: come back in 1 s."""
    assert estimate_retry_after(None, None).headers() == [
        (b"Retry-After", b"1"),
        (b"retry-after-ms", b"1000"),
    ]


@pytest.mark.parametrize(
    ("average", "spread", "elapsed", "seconds", "ms"),
    [
        (10.0, 0.0, 2.5, 8, 7500),
        (10.0, 0.0, 9.95, 1, 100),  # almost done: at least 100 ms, 1 s
        (10.0, 0.0, 30.0, 1, 100),  # overdue
        (500.0, 0.0, 0.0, 60, 60000),  # clamped to a minute
        (0.6, 0.7, 0.1, 2, 1900),  # quick calls and long ones: two spreads past the average
        (0.6, 0.7, 5.0, 1, 700),  # overdue: one spread more
    ],
)
def test_retry_after_is_expected_end_minus_elapsed_clamped(
    average: float, spread: float, elapsed: float, seconds: int, ms: int
) -> None:
    """Retry-After estimates the remaining time of the current holder, within 1..60 s."""
    estimate = estimate_retry_after(average, elapsed, spread)
    assert (estimate.seconds, estimate.milliseconds) == (seconds, ms)


def test_slot_estimate_covers_a_mix_of_quick_and_long_calls() -> None:
    """Voices lookups between 1.4 s generations: a 503 asks to wait past the next 1.4 s end.

    With the plain average (~0.6 s here) an SDK with two retries came back twice before a
    1.4 s generation had ended, and gave up.
    """
    clock = Clock()
    slot = GPUSlot(DeferredSemaphore(1), clock)
    for duration in (1.4, 0.005, 0.01, 1.4, 0.005):
        hold = slot.try_take()
        assert hold is not None
        clock.advance(duration)
        hold.release()
    holder = slot.try_take()
    assert holder is not None
    clock.advance(0.1)
    first = slot.retry_after().milliseconds
    assert first >= 1300, "the first retry must come after the holder's likely end"
    clock.advance(first / 1000)
    assert slot.retry_after().milliseconds >= 400, "overdue: still a real wait, not 100 ms"


def test_slot_learns_call_durations() -> None:
    """The estimate follows a moving average of finished calls, minus the holder's time."""
    clock = Clock()
    slot = GPUSlot(DeferredSemaphore(1), clock)
    for _ in range(3):
        hold = slot.try_take()
        assert hold is not None
        clock.advance(6)
        hold.release()
    hold = slot.try_take()
    assert hold is not None
    assert slot.try_take() is None
    clock.advance(2)
    assert slot.retry_after().seconds == 4
    hold.release()
    hold.release()  # idempotent: the token is given back once
    assert slot.semaphore.tokens == 1


def test_slot_shared_with_other_work() -> None:
    """Tokens held by someone else's code make try_take say no; in_use counts them."""
    semaphore = DeferredSemaphore(2)
    slot = GPUSlot(semaphore, Clock())
    semaphore.acquire()
    assert slot.in_use == 1
    assert slot.try_take() is not None
    assert slot.try_take() is None


@pytest.mark.parametrize(
    ("average", "elapsed", "ahead", "capacity", "wait"),
    [
        (None, None, 3, 1, None),  # no history: nothing to go by
        (10.0, None, 0, 1, 10.0),  # a holder we know nothing of: a whole call
        (10.0, 4.0, 0, 1, 6.0),
        (10.0, 4.0, 2, 1, 26.0),  # two ahead, one slot
        (10.0, 4.0, 2, 2, 16.0),  # two ahead, two slots
        (10.0, 30.0, 1, 1, 10.0),  # overdue holder: it may end any moment
    ],
)
def test_expected_wait_in_the_queue(
    average: float | None, elapsed: float | None, ahead: int, capacity: int, wait: float | None
) -> None:
    """The first token at the average call's end, then one per average / capacity."""
    assert expected_wait(average, elapsed, ahead=ahead, capacity=capacity) == wait


def test_a_token_given_back_is_not_counted_as_a_call() -> None:
    """A refused connect or a passed-on token says nothing of how long generations take."""
    clock = Clock()
    slot = GPUSlot(DeferredSemaphore(1), clock)
    hold = slot.try_take()
    assert hold is not None
    clock.advance(0.3)
    hold.give_back()
    hold.release()
    assert slot.average is None
    assert slot.free
