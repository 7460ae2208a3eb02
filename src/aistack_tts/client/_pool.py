"""The lean client's idle connections, per upstream: reuse, bounded count, idle timeout, close.

A step below ``client._agent`` (which asks it for a connection before it connects) and beside
``client._connection`` (which gives itself back after a reusable response, and asks to be
forgotten when it goes). The most recently used connection is reused first (warm, and the
others age out). An idle connection that receives bytes or a FIN is dropped (the connection
tells the pool); one whose FIN reached the kernel but not yet the reactor is not handed out
(``take`` looks at the socket). One idle for ``idle_timeout`` seconds (``--pool-idle-timeout``,
default 4: below uvicorn's, vLLM's server's, 5 s keep-alive) is closed, sooner when the
upstream said ``Keep-Alive: timeout=N`` (``keep_alive_expiry``), so the gateway drops a
connection before the upstream does and a request is rarely sent on a socket the upstream is
closing; ``client._agent`` sends again one that was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime

from aistack_tts._config import DEFAULT_POOL_IDLE_TIMEOUT
from aistack_tts.wire._socket_state import peer_gone

from ._connection import UpstreamConnection


def keep_alive_expiry(idle_timeout: float, keep_alive: float | None) -> float:
    """How long to keep an idle connection whose upstream said ``Keep-Alive: timeout``.

    A second before the upstream closes it (half its timeout under 2 s), never longer than
    ``idle_timeout``; 0: not kept.
    """
    if keep_alive is None:
        return idle_timeout
    margin = 1.0 if keep_alive >= 2.0 else keep_alive / 2
    return max(0.0, min(idle_timeout, keep_alive - margin))


class ConnectionPool:
    """Idle upstream connections, at most ``max_idle`` per upstream (``key``)."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        max_idle: int,
        idle_timeout: float = DEFAULT_POOL_IDLE_TIMEOUT,
        gone: Callable[[Any], bool] = peer_gone,
    ) -> None:
        self._clock = clock
        #: Whether a connection's peer has closed it (its socket's state, by default).
        self._gone = gone
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[bytes, list[UpstreamConnection]] = {}
        self._closed = False

    def take(self, key: bytes) -> UpstreamConnection | None:
        """The most recently used idle connection to ``key``, or ``None``."""
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.lost or connection.transport.disconnecting:
                continue
            if self._gone(connection.transport):
                # Its FIN (or reset) is in the kernel, not yet seen by the reactor.
                self.forget(connection)
                connection.transport.abortConnection()
                continue
            return connection
        return None

    def idle(self, key: bytes) -> int:
        """How many idle connections to ``key`` there are."""
        return len(self._idle.get(key, ()))

    def release(self, connection: UpstreamConnection) -> None:
        """``connection`` finished a response and may carry another request."""
        lifetime = keep_alive_expiry(self.idle_timeout, connection.keep_alive)
        if self._closed or lifetime <= 0:
            connection.transport.loseConnection()
            return
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self.max_idle:
            idle.pop(0).transport.loseConnection()
        idle.append(connection)
        connection.idle_since = self._clock.seconds()
        timer = connection.idle_timer
        if timer is not None and lifetime < self.idle_timeout and timer.active():
            # The upstream keeps it for less than the pool would: its own, earlier timer.
            timer.cancel()
            timer = connection.idle_timer = None
        if timer is None:
            connection.idle_timer = self._clock.callLater(lifetime, self._expire, connection)

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
        lifetime = keep_alive_expiry(self.idle_timeout, connection.keep_alive)
        if quiet < lifetime:
            connection.idle_timer = self._clock.callLater(
                lifetime - quiet, self._expire, connection
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
