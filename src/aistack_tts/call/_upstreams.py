"""The pool of upstreams: one GPU slot each, round robin among the free ones, and the wait.

A request takes a free upstream (round robin among the free, reachable ones) or, with a queue
timeout, waits first come first served for the first slot to free. An upstream that refuses
connections is marked down for a cool-down: while another one is up, calls and the queue pass
it over; when every one is down, a call tries one anyway (a probe) rather than be refused on
the mark alone, and an upstream that answers is up again at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from aistack_tts._config import DEFAULT_DOWN_COOLDOWN, Origin

from ._slot import GPUSlot, RetryAfter, SlotHold, expected_wait, retry_in


@define(eq=False)
class Upstream:
    """One upstream server (one GPU): its ``Origin`` (parsed by the configuration) and its slot."""

    origin: Origin
    slot: GPUSlot
    down_until: float = 0.0

    @property
    def url(self) -> str:
        """Its URL as configured (for logs and the access log)."""
        return self.origin.url

    @property
    def base(self) -> bytes:
        """Its URL without a trailing slash: request-targets are appended to it."""
        return self.origin.base

    def is_up(self, now: float) -> bool:
        """Not in a cool-down after a refused connection."""
        return now >= self.down_until


@define(eq=False)
class Grant:
    """What a request was given: an upstream, and the slot token it holds there."""

    upstream: Upstream
    hold: SlotHold


class WaitTimedOut(Exception):
    """No slot freed within the queue timeout."""


@define(eq=False)
class UpstreamPool:
    """Chooses an upstream for each call."""

    upstreams: Sequence[Upstream]
    clock: IReactorTime
    cooldown: float = DEFAULT_DOWN_COOLDOWN
    _next: int = field(default=0, init=False)
    #: The requests waiting for a slot (``wait``).
    _waiters: set[Any] = field(factory=set, init=False)

    def _rotation(self) -> list[Upstream]:
        """All upstreams, starting after the last one given out (round robin)."""
        n = len(self.upstreams)
        return [self.upstreams[(self._next + i) % n] for i in range(n)]

    def _given(self, upstream: Upstream) -> None:
        self._next = (self.upstreams.index(upstream) + 1) % len(self.upstreams)

    def all_down(self) -> bool:
        """Every upstream is in its cool-down."""
        now = self.clock.seconds()
        return not any(u.is_up(now) for u in self.upstreams)

    def live(self, exclude: Sequence[Upstream] = ()) -> list[Upstream]:
        """The upstreams not in their cool-down (and not in ``exclude``), in pool order."""
        now = self.clock.seconds()
        return [u for u in self.upstreams if u.is_up(now) and u not in exclude]

    def try_take(self, exclude: Sequence[Upstream] = ()) -> Grant | None:
        """A free, reachable upstream's slot, right now; ``None`` when all are busy or down."""
        upstream = self.spare(exclude)
        return None if upstream is None else self._take(upstream)

    def spare(self, exclude: Sequence[Upstream] = ()) -> Upstream | None:
        """The upstream ``try_take(exclude)`` would take now, without taking its slot."""
        now = self.clock.seconds()
        for upstream in self._rotation():
            if upstream not in exclude and upstream.is_up(now) and upstream.slot.free:
                return upstream
        return None

    def try_probe(self) -> Grant | None:
        """With every upstream down: a free slot on one of them anyway, to try it (a probe).

        The cool-down only steers calls to the upstreams that are up; with none up, refusing
        on the mark alone would refuse calls for a whole cool-down after the upstream is back.
        """
        upstream = self.probe_spare()
        return None if upstream is None else self._take(upstream)

    def probe_spare(self) -> Upstream | None:
        """The upstream ``try_probe`` would take now, without taking its slot."""
        if not self.all_down():
            return None
        return next((u for u in self._rotation() if u.slot.free), None)

    def _take(self, upstream: Upstream) -> Grant:
        hold = upstream.slot.try_take()
        assert hold is not None, "the free slot went away"
        self._given(upstream)
        return Grant(upstream, hold)

    def pick(self) -> Upstream:
        """An upstream for a call that needs no slot: the next reachable one (any, if none)."""
        now = self.clock.seconds()
        rotation = self._rotation()
        upstream = next((u for u in rotation if u.is_up(now)), rotation[0])
        self._given(upstream)
        return upstream

    def mark_down(self, upstream: Upstream) -> None:
        """``upstream`` refused a connection: skip it for the cool-down."""
        upstream.down_until = self.clock.seconds() + self.cooldown

    def mark_up(self, upstream: Upstream) -> None:
        """``upstream`` answered: it is up again, whatever its cool-down said."""
        upstream.down_until = 0.0

    @property
    def waiting(self) -> int:
        """How many requests wait for a slot."""
        return len(self._waiters)

    def expected_wait(self) -> float | None:
        """How long a request joining the queue now should wait (``None``: no call yet)."""
        live = self.live() or list(self.upstreams)
        averages = [a for u in live if (a := u.slot.average) is not None]
        if not averages:
            return None
        elapsed = max((e for u in live if (e := u.slot.elapsed()) is not None), default=None)
        return expected_wait(
            sum(averages) / len(averages),
            elapsed,
            ahead=self.waiting,
            capacity=sum(u.slot.semaphore.limit for u in live),
        )

    def queue_full(self, queue_timeout: float) -> bool:
        """Whether a request joining the queue now is expected to wait past ``queue_timeout``."""
        expected = self.expected_wait()
        return expected is not None and expected > queue_timeout

    def retry_after(self, queue_timeout: float = 0.0) -> RetryAfter:
        """When the soonest slot among the reachable upstreams is expected to free.

        With a full queue (``queue_full(queue_timeout)``): no sooner than when the expected
        wait is back within ``queue_timeout``.
        """
        now = self.clock.seconds()
        candidates = [u for u in self.upstreams if u.is_up(now)] or list(self.upstreams)
        soonest = min((u.slot.retry_after() for u in candidates), key=lambda r: r.milliseconds)
        expected = self.expected_wait() if queue_timeout > 0 else None
        if expected is None or expected <= queue_timeout:
            return soonest
        room = retry_in(expected - queue_timeout)
        return max(soonest, room, key=lambda r: r.milliseconds)

    def wait(self, timeout: float) -> Deferred[Grant]:
        """The first slot to free on any reachable upstream, waiting at most ``timeout``.

        Waiters are served first come, first served: each queues on every upstream's
        semaphore, whose queues are first in, first out. Cancelling leaves all queues at once;
        past ``timeout`` it fails with ``WaitTimedOut``.
        """
        return _Waiter(self, timeout).start()


class _Waiter:
    def __init__(self, pool: UpstreamPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._pending: dict[Upstream, Deferred[SlotHold]] = {}
        self._timer: IDelayedCall | None = None
        self._result: Deferred[Grant] = Deferred(lambda _: self._give_up())
        self._result.addBoth(self._left)

    def start(self) -> Deferred[Grant]:
        self._pool._waiters.add(self)
        self._queue_on(self._pool.live() or list(self._pool.upstreams))
        if not self._result.called:
            self._timer = self._pool.clock.callLater(self._timeout, self._timed_out)
        return self._result

    def _queue_on(self, upstreams: Sequence[Upstream]) -> None:
        for upstream in upstreams:
            if self._result.called:
                return
            if upstream in self._pending:
                continue
            d = upstream.slot.acquire()
            self._pending[upstream] = d
            d.addCallbacks(self._got, self._lost, callbackArgs=(upstream,), errbackArgs=(upstream,))

    def _left(self, result: Any) -> Any:
        self._pool._waiters.discard(self)
        return result

    def _got(self, hold: SlotHold, upstream: Upstream) -> None:
        self._pending.pop(upstream, None)
        if self._result.called:
            # Another upstream was faster, or we gave up: pass this token on.
            hold.give_back()
            return
        live = self._pool.live()
        if live and upstream not in live:
            # Marked down since this request joined the queue, while another upstream is up:
            # pass the token on and wait for a slot there instead.
            hold.give_back()
            self._queue_on(live)
            return
        self._stop()
        self._pool._given(upstream)
        self._result.callback(Grant(upstream, hold))

    def _lost(self, failure: Failure, upstream: Upstream) -> None:
        self._pending.pop(upstream, None)
        failure.trap(CancelledError)

    def _stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.cancel()

    def _timed_out(self) -> None:
        self._timer = None
        self._stop()
        if not self._result.called:
            self._result.errback(WaitTimedOut())

    def _give_up(self) -> None:
        self._stop()
