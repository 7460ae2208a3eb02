"""The lean client's idle connections, per upstream: reuse, bounded count, idle timeout, close.

A step below ``_client`` (which asks it for a connection before it connects) and beside
``_client_connection`` (which gives itself back after a reusable response, and asks to be
forgotten when it goes). The most recently used connection is reused first (warm, and the
others age out). An idle connection that receives bytes or a FIN is dropped (the connection
tells the pool); one idle for ``idle_timeout`` seconds is closed: that is below uvicorn's
(vLLM's server) 5 s keep-alive, so the gateway drops a connection before the upstream does
and a request is rarely sent on a socket the upstream is closing.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime

from ._client_connection import UpstreamConnection

#: How long an idle pooled connection is kept: under uvicorn's 5 s keep-alive.
POOL_IDLE_SECONDS = 4.0


class ConnectionPool:
    """Idle upstream connections, at most ``max_idle`` per upstream (``key``)."""

    def __init__(
        self, clock: IReactorTime, *, max_idle: int, idle_timeout: float = POOL_IDLE_SECONDS
    ) -> None:
        self._clock = clock
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[bytes, list[UpstreamConnection]] = {}
        self._closed = False

    def take(self, key: bytes) -> UpstreamConnection | None:
        """The most recently used idle connection to ``key``, or ``None``."""
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.lost and not connection.transport.disconnecting:
                return connection
        return None

    def idle(self, key: bytes) -> int:
        """How many idle connections to ``key`` there are."""
        return len(self._idle.get(key, ()))

    def release(self, connection: UpstreamConnection) -> None:
        """``connection`` finished a response and may carry another request."""
        if self._closed:
            connection.transport.loseConnection()
            return
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self.max_idle:
            idle.pop(0).transport.loseConnection()
        idle.append(connection)
        connection.idle_since = self._clock.seconds()
        if connection.idle_timer is None:
            connection.idle_timer = self._clock.callLater(
                self.idle_timeout, self._expire, connection
            )

    def forget(self, connection: UpstreamConnection) -> None:
        """``connection`` is gone or unusable (idempotent)."""
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)
        timer, connection.idle_timer = connection.idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _expire(self, connection: UpstreamConnection) -> None:
        # One timer per connection, not one per idle spell: taking a connection does not
        # cancel it; when it fires it looks at how long the connection has been idle.
        connection.idle_timer = None
        if connection.busy or connection.lost:
            return
        quiet = self._clock.seconds() - connection.idle_since
        if quiet < self.idle_timeout:
            connection.idle_timer = self._clock.callLater(
                self.idle_timeout - quiet, self._expire, connection
            )
            return
        self.forget(connection)
        connection.transport.loseConnection()

    def close(self) -> Deferred[None]:
        """Close every idle connection; later ones are closed when their response ends.

        Fires once the idle connections are closed.
        """
        self._closed = True
        waiting: list[Deferred[None]] = []
        for idle in self._idle.values():
            for connection in list(idle):
                self.forget(connection)
                if not connection.lost:
                    lost: Deferred[None] = Deferred()
                    connection.lost_waiters.append(lost)
                    waiting.append(lost)
                    connection.transport.loseConnection()
        self._idle.clear()
        if not waiting:
            return succeed(None)
        closed: Deferred[None] = gatherResults(waiting).addCallback(lambda _: None)
        return closed
