"""The client connections a site has open: counted, closed when idle, awaited, aborted.

The drain uses it to end keep-alive (idle connections closed, every later response the
connection's last) and to wait until each response has reached its client, which a process
exiting right after its last call would cut off: the tail of a response can still sit in the
transport's buffer when the call is over.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest


def _channel(protocol: IProtocol) -> Any:
    """The HTTP channel behind what ``Site.buildProtocol`` returned.

    That is a wrapper, which would switch to an HTTP/2 connection after ALPN.
    """
    return getattr(protocol, "_channel", protocol)


class ConnectionRegistry:
    """Open client connections, from ``buildProtocol`` to ``connectionLost``.

    ``keep_alive`` is True until ``stop_keep_alive``; from then on every response ends its
    connection.
    """

    def __init__(self) -> None:
        self._open: set[IProtocol] = set()
        self._empty_waiters: list[Deferred[None]] = []
        self.keep_alive = True

    @property
    def count(self) -> int:
        """Connections open now."""
        return len(self._open)

    def add(self, protocol: IProtocol) -> None:
        """Track ``protocol`` (from ``Site.buildProtocol``) until its connection is lost."""
        self._open.add(protocol)
        # Wrapped on the instance the transport calls: the channel behind it may be swapped
        # (HTTP/2) or have its connectionLost handed to a WebSocket tunnel.
        lost = protocol.connectionLost

        def connectionLost(reason: Failure) -> None:
            self._open.discard(protocol)
            try:
                lost(reason)
            finally:
                if not self._open:
                    waiters, self._empty_waiters = self._empty_waiters, []
                    for waiter in waiters:
                        waiter.callback(None)

        protocol.connectionLost = connectionLost  # type: ignore[method-assign]

    def is_idle(self, protocol: IProtocol) -> bool:
        """No request is under way on ``protocol``'s connection (none arriving, none answered)."""
        channel = _channel(protocol)
        return isinstance(channel, HTTPChannel) and not channel.requests

    def close_idle(self) -> int:
        """Close every idle connection (after what it still has to send); how many."""
        idle = [p for p in self._open if self.is_idle(p)]
        for protocol in idle:
            _channel(protocol).loseConnection()
        return len(idle)

    def stop_keep_alive(self) -> int:
        """From now on each connection closes after its response; close the idle ones now.

        Returns how many were closed now.
        """
        self.keep_alive = False
        for protocol in self._open:
            channel = _channel(protocol)
            if isinstance(channel, HTTPChannel):
                # Headers already sent cannot say so; the close after the response still does.
                channel.persistent = False
        return self.close_idle()

    def response_starting(self, request: IRequest) -> None:
        """``request`` is about to write its headers: mark its connection's last response.

        After ``stop_keep_alive`` that is every response: it says ``Connection: close``.
        """
        if not self.keep_alive:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            channel: Any = getattr(request, "channel", None)
            if isinstance(channel, HTTPChannel):
                channel.persistent = False

    def when_empty(self) -> Deferred[None]:
        """Fires once no connection is open (at once if none is)."""
        if not self._open:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._empty_waiters.append(waiter)
        return waiter

    def abort_all(self) -> int:
        """Abort every connection now, whatever it still has to send; how many."""
        protocols = list(self._open)
        for protocol in protocols:
            transport: Any = getattr(_channel(protocol), "transport", None)
            if transport is not None:
                transport.abortConnection()
        return len(protocols)
