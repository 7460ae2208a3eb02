"""What the kernel knows of a connection that Twisted does not say: bytes unsent, a peer gone.

The lowest step beside ``wire._send_now``: the client connection (a paused client is still
watched), the watchdog (a slow reader makes progress) and the upstream client (a request body
the upstream never read) ask it. On Linux it reads the socket itself: ``SIOCOUTQ`` (bytes
written but not yet acknowledged by the peer's TCP) and ``TCP_INFO``'s state (``CLOSE_WAIT``
once the peer's FIN arrived, ``CLOSE`` after its reset), which a paused transport never
reports, since the reactor stops polling a socket it does not read. Elsewhere, and for
transports that are not sockets (in-memory tests), the answers are ``None`` and ``False``.

Twisted's private attributes read here: a ``FileDescriptor``'s write buffer, ``dataBuffer``,
``offset``, ``_tempDataLen`` (no public API says how much a transport still holds), and a TCP
connection's ``_aborting`` (``abortConnection`` was called; ``connected`` is still true).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys
import termios
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

#: How often a paused connection's socket is looked at: a client that left is noticed within
#: this, and a look is one ``getsockopt``.
PEER_POLL_S = 0.01

_LINUX = sys.platform.startswith("linux")
#: ``TCP_INFO``'s ``tcpi_state`` values for a connection whose peer has closed or reset it:
#: CLOSE (a reset, or closed), CLOSE_WAIT (its FIN arrived), LAST_ACK, CLOSING, TIME_WAIT.
_PEER_GONE = frozenset({7, 8, 9, 11, 6})
_INT = struct.Struct("i")


def _socket_of(transport: Any) -> socket.socket | None:
    # A TLS transport wraps the TCP one (``.transport``); its own handle is not a socket.
    for _ in range(3):
        try:
            handle = transport.getHandle()
        except Exception:
            return None
        if isinstance(handle, socket.socket):
            return handle
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def buffered(transport: Any) -> int | None:
    """Bytes ``transport`` holds in user space, not yet handed to the kernel."""
    data = getattr(transport, "dataBuffer", None)
    if not isinstance(data, bytes | bytearray | memoryview):
        return None
    held: int = len(data) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)
    return held


def unacknowledged(transport: Any) -> int | None:
    """Bytes in the kernel's send queue of ``transport``'s socket the peer has not acknowledged."""
    sock = _socket_of(transport) if _LINUX else None
    if sock is None:
        return None
    try:
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return None
    count: int = _INT.unpack(queued)[0]
    return count


def unsent(transport: Any) -> int | None:
    """Bytes written to ``transport`` that have not reached the peer yet (user space + kernel).

    ``None`` when neither part can be known (not a socket, not a ``FileDescriptor``).
    """
    held = buffered(transport)
    queued = unacknowledged(transport)
    if held is None and queued is None:
        return None
    return (held or 0) + (queued or 0)


def peer_gone(transport: Any) -> bool:
    """Whether the peer of ``transport``'s TCP connection has closed or reset it."""
    sock = _socket_of(transport) if _LINUX else None
    if sock is None:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except (OSError, ValueError):
        return True  # the descriptor is closed already: nobody is there
    return info[0] in _PEER_GONE


@define
class PeerWatch:
    """While a connection is not read, look at its socket every ``interval``; tell if it went.

    ``start`` when reading stops, ``stop`` when it starts again: the reactor reports a reset
    or FIN only on a socket it reads. ``on_gone`` runs once.
    """

    clock: IReactorTime
    transport: Any
    on_gone: Callable[[], None]
    interval: float = PEER_POLL_S
    #: Whether the peer has gone; ``None``: ``peer_gone`` (the socket's state).
    gone: Callable[[Any], bool] | None = None
    _call: IDelayedCall | None = field(default=None, init=False)
    _fired: bool = field(default=False, init=False)

    def start(self) -> None:
        """Reading stopped: start looking."""
        if self._call is None and not self._fired:
            self._call = self.clock.callLater(self.interval, self._look)

    def stop(self) -> None:
        """Reading started again (or the connection is going): stop looking."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    @property
    def watching(self) -> bool:
        """A look is scheduled."""
        return self._call is not None

    def _look(self) -> None:
        self._call = None
        transport = self.transport
        if not getattr(transport, "connected", True) or getattr(transport, "_aborting", False):
            return  # being closed, or closed, already: nothing to watch for
        if (self.gone or peer_gone)(transport):
            self._fired = True
            self.on_gone()
            return
        self._call = self.clock.callLater(self.interval, self._look)


@implementer(IPushProducer)
class WatchedReading:
    """A transport as its protocol pauses and resumes it, with its socket watched while paused.

    What ``HTTPChannel`` gets in place of its transport (``_networkProducer``): when it stops
    reading the client (pipelined bytes behind a request being served), the client's reset or
    FIN would go unseen until the call ended; a ``PeerWatch`` sees it and aborts the
    connection, so the call ends as if it had been read. ``producer`` is what the protocol
    paused before (the transport itself, as ``IPushProducer``); the watch is made on the first
    pause only, as most connections are never paused.
    """

    def __init__(self, producer: Any, clock: IReactorTime, transport: Any) -> None:
        self._transport = producer
        self._clock = clock
        self._watched = transport
        self._watch: PeerWatch | None = None

    def pauseProducing(self) -> None:
        """Stop reading, and start watching the socket."""
        self._transport.pauseProducing()
        if self._watch is None:
            watched = self._watched
            self._watch = PeerWatch(self._clock, watched, watched.abortConnection)
        self._watch.start()

    def resumeProducing(self) -> None:
        """Read again (the reactor reports the end of the connection itself)."""
        self.stop_watching()
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        """Close the connection."""
        self.stop_watching()
        self._transport.stopProducing()

    def stop_watching(self) -> None:
        """Someone else reads the connection now (a WebSocket tunnel took it over)."""
        if self._watch is not None:
            self._watch.stop()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """As the transport's."""
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """As the transport's."""
        self._transport.unregisterProducer()
