"""The GPU slot: a non-blocking take of a shared ``DeferredSemaphore``, and when to retry."""

from __future__ import annotations

import math

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime

#: Weight of the newest call in the moving averages of call durations and of their spread.
_ALPHA = 0.3
#: How many spreads past the average a call is expected to end (as TCP's retransmission timer
#: does, RFC 6298): a mix of quick calls (voices, errors) and long generations makes the
#: average alone too short, and an SDK with two retries (openai's) then gives up too soon.
_SPREADS = 2
_MIN_S, _MAX_S = 1, 60
#: A retry sooner than this would only spin: a TTS call never ends that fast.
_MIN_MS = 100


@define(frozen=True)
class RetryAfter:
    """When a refused client should come back: ``Retry-After`` and ``retry-after-ms``."""

    seconds: int
    milliseconds: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The two response headers."""
        return [
            (b"Retry-After", b"%d" % self.seconds),
            (b"retry-after-ms", b"%d" % self.milliseconds),
        ]


def estimate_retry_after(
    average: float | None, elapsed: float | None, spread: float = 0.0
) -> RetryAfter:
    """Expected wait until the slot frees, clamped to the contract's range.

    ``average`` is the moving average of recent call durations (``None``: no history yet) and
    ``spread`` that of their distance from it; ``elapsed`` how long the longest-running
    current holder we know of has held it. A holder past the expected end gets one spread more.
    """
    if average is None:
        remaining = 1.0
    else:
        remaining = max(average + _SPREADS * spread - (elapsed or 0.0), spread)
    return retry_in(remaining)


def retry_in(remaining: float) -> RetryAfter:
    """``remaining`` seconds as the two headers say it, clamped to the contract's range."""
    remaining = min(max(remaining, _MIN_MS / 1000), float(_MAX_S))
    seconds = min(max(math.ceil(remaining), _MIN_S), _MAX_S)
    return RetryAfter(seconds=seconds, milliseconds=round(remaining * 1000))


def expected_wait(
    average: float | None, elapsed: float | None, *, ahead: int, capacity: int
) -> float | None:
    """How long a request joining the queue behind ``ahead`` others should wait for a slot.

    The first token frees when the longest holder (``elapsed`` so far) reaches the average
    call duration; then one frees every ``average / capacity`` seconds. ``None`` without a
    history (``average`` None): nothing to go by.
    """
    if average is None:
        return None
    first = max(average - (elapsed or 0.0), 0.0)
    return first + ahead * average / capacity


@define
class SlotHold:
    """One taken token; ``release`` gives it back exactly once, however often it is called."""

    _slot: GPUSlot
    started: float
    released: bool = False

    def release(self) -> None:
        """Give the token back (idempotent) and feed the call's duration to the estimate."""
        if self.released:
            return
        self.released = True
        self._slot._released(self)

    def give_back(self) -> None:
        """Give the token back (idempotent) without counting the hold as a call.

        For a token that did no inference: passed on by a waiter that will not use it, or
        held only while the upstream refused the connection.
        """
        if self.released:
            return
        self.released = True
        self._slot._released(self, count=False)


@define
class GPUSlot:
    """Wraps the (possibly shared) semaphore that says "the GPU is doing inference".

    Nobody waits in line: ``try_take`` either takes a token at once or says no.
    """

    semaphore: DeferredSemaphore
    clock: IReactorTime
    _average: float | None = None
    _spread: float = 0.0
    _holds: list[SlotHold] = field(factory=list)

    @property
    def free(self) -> bool:
        """A token is free right now: ``try_take`` would take it."""
        return self.semaphore.tokens > 0

    def try_take(self) -> SlotHold | None:
        """Take a token if one is free right now; ``None`` when the GPU is busy."""
        if not self.free:
            return None
        taken = self.semaphore.acquire()
        # With a free token DeferredSemaphore.acquire fires synchronously.
        assert taken.called, "DeferredSemaphore.acquire did not fire with a free token"
        return self._new_hold()

    def acquire(self) -> Deferred[SlotHold]:
        """Wait in the semaphore's first-in-first-out queue for a token; cancellable."""
        return self.semaphore.acquire().addCallback(lambda _: self._new_hold())

    def _new_hold(self) -> SlotHold:
        hold = SlotHold(self, started=self.clock.seconds())
        self._holds.append(hold)
        return hold

    def retry_after(self) -> RetryAfter:
        """The estimate to send with a 503 ``gpu_busy``."""
        return estimate_retry_after(self._average, self.elapsed(), self._spread)

    @property
    def in_use(self) -> int:
        """Tokens held by anyone (this gateway or a workload sharing the semaphore)."""
        return self.semaphore.limit - self.semaphore.tokens

    @property
    def average(self) -> float | None:
        """The moving average of recent call durations (``None``: no call yet)."""
        return self._average

    def elapsed(self) -> float | None:
        """How long the longest current holder we know of has held a token."""
        now = self.clock.seconds()
        return max((now - h.started for h in self._holds), default=None)

    def _released(self, hold: SlotHold, *, count: bool = True) -> None:
        self._holds.remove(hold)
        if count:
            self._count(self.clock.seconds() - hold.started)
        self.semaphore.release()

    def _count(self, duration: float) -> None:
        """Feed one call's duration to the moving averages."""
        if self._average is None:
            self._average = duration
            return
        deviation = abs(duration - self._average)
        self._spread = _ALPHA * deviation + (1 - _ALPHA) * self._spread
        self._average = _ALPHA * duration + (1 - _ALPHA) * self._average
