"""The pool of upstreams: one GPU slot each, round robin among the free ones, and the wait.

A request takes a free upstream (round robin among the free, reachable ones) or, with a queue
timeout, waits first come first served for the first slot to free. An upstream that refuses
connections is skipped for a cool-down.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from aistack_tts._config import Origin

from ._slot import GPUSlot, RetryAfter, SlotHold

#: How long an upstream that refused a connection is skipped.
DEFAULT_DOWN_COOLDOWN = 5.0


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

    def try_take(self, exclude: Sequence[Upstream] = ()) -> Grant | None:
        """A free, reachable upstream's slot, right now; ``None`` when all are busy or down."""
        now = self.clock.seconds()
        for upstream in self._rotation():
            if upstream in exclude or not upstream.is_up(now):
                continue
            hold = upstream.slot.try_take()
            if hold is not None:
                self._given(upstream)
                return Grant(upstream, hold)
        return None

    def spare(self, exclude: Sequence[Upstream] = ()) -> Upstream | None:
        """The upstream ``try_take(exclude)`` would take now, without taking its slot."""
        now = self.clock.seconds()
        for upstream in self._rotation():
            if upstream not in exclude and upstream.is_up(now) and upstream.slot.free:
                return upstream
        return None

    def pick(self) -> Upstream:
        """An upstream for a call that needs no slot: the next reachable one."""
        now = self.clock.seconds()
        rotation = self._rotation()
        upstream = next((u for u in rotation if u.is_up(now)), rotation[0])
        self._given(upstream)
        return upstream

    def mark_down(self, upstream: Upstream) -> None:
        """``upstream`` refused a connection: skip it for the cool-down."""
        upstream.down_until = self.clock.seconds() + self.cooldown

    def retry_after(self) -> RetryAfter:
        """When the soonest slot among the reachable upstreams is expected to free."""
        now = self.clock.seconds()
        candidates = [u for u in self.upstreams if u.is_up(now)] or list(self.upstreams)
        return min((u.slot.retry_after() for u in candidates), key=lambda r: r.milliseconds)

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

    def start(self) -> Deferred[Grant]:
        now = self._pool.clock.seconds()
        up = [u for u in self._pool.upstreams if u.is_up(now)] or list(self._pool.upstreams)
        for upstream in up:
            d = upstream.slot.acquire()
            self._pending[upstream] = d
            d.addCallbacks(self._got, self._lost, callbackArgs=(upstream,), errbackArgs=(upstream,))
        if not self._result.called:
            self._timer = self._pool.clock.callLater(self._timeout, self._timed_out)
        return self._result

    def _got(self, hold: SlotHold, upstream: Upstream) -> None:
        self._pending.pop(upstream, None)
        if self._result.called:
            # Another upstream was faster, or we gave up: pass this token on.
            hold.release()
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
