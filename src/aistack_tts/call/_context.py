"""What a call needs from the gateway, handed down as a value.

The in-flight registry and the call context: ``TTSProxy`` builds one ``CallContext`` and
gives it to every proxied call and WebSocket session, so the lower floors (``call._record``,
``call._exchange``, ``tunnel._session``) never import the proxy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.web.iweb import IAgent
from zope.interface import Interface

from aistack_tts._errors import GatewayError
from aistack_tts.observe._accesslog import AccessLog
from aistack_tts.observe._metrics import GatewayMetrics
from aistack_tts.wire._descriptors import RateLimitedWarning

from ._upstreams import UpstreamPool


class IInFlightCall(Interface):
    """A call under way, as the in-flight registry (and so the drain) sees it."""

    def cut_short(error: GatewayError) -> None:  # noqa: N805 (zope interfaces take no self)
        """End the call now, telling a client still waiting for an answer ``error``."""


class InFlight:
    """The calls and sessions under way: tracked from start to their one way out."""

    def __init__(self) -> None:
        self._calls: set[Any] = set()
        self._idle_waiters: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._calls))

    def track(self, call: Any) -> None:
        """``call`` (an ``IInFlightCall``) has started."""
        self._calls.add(call)

    def untrack(self, call: Any) -> None:
        """``call`` is over; fire ``when_idle``'s waiters once none is left."""
        self._calls.discard(call)
        if not self._calls:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_idle(self) -> Deferred[None]:
        """Fires once no call is under way (at once if none is)."""
        if not self._calls:
            return succeed(None)
        idle: Deferred[None] = Deferred()
        self._idle_waiters.append(idle)
        return idle

    def cut(self, error: GatewayError) -> None:
        """Cut every call under way short with ``error``."""
        for call in self:
            IInFlightCall(call).cut_short(error)


@frozen
class CallContext:
    """Everything a proxied call or a WebSocket session takes from the gateway."""

    clock: IReactorTime
    agent: IAgent
    cooperator: Cooperator
    pool: UpstreamPool
    metrics: GatewayMetrics
    access_log: AccessLog
    in_flight: InFlight
    #: One log line per interval while upstream sockets fail for want of descriptors.
    exhaustion_warning: RateLimitedWarning
    idle_timeout: float
    connect_timeout: float
    ws_idle_timeout: float
    #: How long a request may wait for a slot, from its arrival (a refused call waits again).
    queue_timeout: float = 0.0
