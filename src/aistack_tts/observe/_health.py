"""Readiness: can the upstream be reached? A TCP connect, cached for a few seconds."""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from aistack_tts._config import Origin
from aistack_tts._errors import failure_cause


class _QuietFactory(Factory):
    """Its connections log nothing: a probe loop would log two lines every few seconds."""

    noisy = False
    protocol = Protocol


#: How long one probe's answer is reused: probes come from every load balancer health check.
CACHE_SECONDS = 3.0


@define
class ReadinessProbe:
    """Says whether a TCP connection to the upstream can be made right now.

    A connect is the cheapest honest probe: it does not touch the GPU, and it is what fails
    when the Qwen3-TTS stack is down (no TLS handshake, even to an ``https`` upstream).
    Concurrent checks share one probe.
    """

    reactor: Any
    origin: Origin
    timeout: float
    cache_seconds: float = CACHE_SECONDS
    _endpoint: IStreamClientEndpoint = field(init=False)
    #: Why the last probe failed (``ConnectionRefusedError: ...``); ``None`` after a success.
    cause: str | None = field(default=None, init=False)
    _answer: bool | None = field(default=None, init=False)
    _answered_at: float = field(default=0.0, init=False)
    _waiting: list[Deferred[bool]] | None = field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._endpoint = self.origin.endpoint(self.reactor, timeout=self.timeout, tls=False)

    def check(self) -> Deferred[bool]:
        """Fires with whether the upstream accepted a connection (recently)."""
        clock: IReactorTime = self.reactor
        if self._answer is not None and clock.seconds() - self._answered_at < self.cache_seconds:
            return succeed(self._answer)
        answer: Deferred[bool] = Deferred()
        if self._waiting is not None:
            self._waiting.append(answer)
            return answer
        self._waiting = [answer]
        connecting = self._endpoint.connect(_QuietFactory())
        connecting.addCallbacks(self._connected, self._failed)
        return answer

    def _connected(self, protocol: Protocol) -> None:
        assert protocol.transport is not None
        protocol.transport.loseConnection()
        self.cause = None
        self._done(True)

    def _failed(self, reason: Failure) -> None:
        self.cause = failure_cause(
            reason, timed_out=False, idle_timeout=0.0, connect_timeout=self.timeout
        )
        self._done(False)

    def _done(self, ready: bool) -> None:
        clock: IReactorTime = self.reactor
        self._answer, self._answered_at = ready, clock.seconds()
        waiting, self._waiting = self._waiting or [], None
        for d in waiting:
            d.callback(ready)
