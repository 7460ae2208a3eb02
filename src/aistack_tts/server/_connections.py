"""The client connections a site has open: counted, closed when idle, awaited, aborted.

The drain uses it to end keep-alive (idle connections closed, every later response the
connection's last) and to wait until each response has reached its client, which a process
exiting right after its last call would cut off: the tail of a response can still sit in the
transport's buffer when the call is over.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest


class ConnectionRegistry:
    """Open client connections (HTTP channels), from ``buildProtocol`` to ``connectionLost``.

    The site adds each channel it builds; the channel takes itself out when its connection is
    lost (``GatewayChannel.connectionLost``, which a WebSocket tunnel still calls in the end).

    ``keep_alive`` is True until ``stop_keep_alive``; from then on every response ends its
    connection.
    """

    def __init__(self) -> None:
        self._open: set[HTTPChannel] = set()
        self._empty_waiters: list[Deferred[None]] = []
        self.keep_alive = True

    @property
    def count(self) -> int:
        """Connections open now."""
        return len(self._open)

    def add(self, channel: HTTPChannel) -> None:
        """Track ``channel`` until ``discard``."""
        self._open.add(channel)

    def discard(self, channel: HTTPChannel) -> None:
        """``channel``'s connection is gone; fire ``when_empty``'s waiters once none is left."""
        self._open.discard(channel)
        if not self._open:
            waiters, self._empty_waiters = self._empty_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def is_idle(self, channel: HTTPChannel) -> bool:
        """No request is under way on ``channel`` (none arriving, none answered)."""
        return not channel.requests

    def close_idle(self) -> int:
        """Close every idle connection (after what it still has to send); how many."""
        idle = [c for c in self._open if self.is_idle(c)]
        for channel in idle:
            channel.loseConnection()
        return len(idle)

    def stop_keep_alive(self) -> int:
        """From now on each connection closes after its response; close the idle ones now.

        Returns how many were closed now.
        """
        self.keep_alive = False
        for channel in self._open:
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
        channels = list(self._open)
        for channel in channels:
            transport: Any = channel.transport
            if transport is not None:
                transport.abortConnection()
        return len(channels)
