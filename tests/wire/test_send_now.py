"""``send_now``: bytes go out at once, except where the reactor must finish the job."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.internet.testing import StringTransport

from aistack_tts.wire._send_now import abort_now, send_now


class Descriptor:
    """What ``send_now`` looks at on a file-descriptor transport, and whether it wrote."""

    def __init__(self, *, connected: bool = True, disconnecting: bool = False) -> None:
        self.connected = connected
        self.disconnecting = disconnecting
        self.writes = 0

    def doWrite(self) -> Any:
        self.writes += 1
        return None


def test_an_open_transport_writes_at_once() -> None:
    transport = Descriptor()
    send_now(transport)
    assert transport.writes == 1


@pytest.mark.parametrize(
    "transport",
    [Descriptor(disconnecting=True), Descriptor(connected=False)],
    ids=["closing", "not-connected"],
)
def test_a_closing_transport_is_left_to_the_reactor(transport: Descriptor) -> None:
    """Its ``doWrite`` would finish the close itself, and the reactor would never hear of it."""
    send_now(transport)
    assert transport.writes == 0


def test_a_transport_without_doWrite_is_left_alone() -> None:
    """TLS and in-memory transports have no ``doWrite``: their bytes wait as before."""
    transport = StringTransport()
    transport.write(b"kept")
    send_now(transport)
    send_now(None)
    assert transport.value() == b"kept"


class Aborting:
    """What ``abort_now`` looks at: ``abortConnection`` and (maybe) ``getHandle``."""

    def __init__(self, handle: Any = None, *, closed: bool = False) -> None:
        self.handle = handle
        self.closed = closed
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True

    def getHandle(self) -> Any:
        if self.closed:
            raise AttributeError("socket")  # Twisted deletes it in connectionLost
        return self.handle


def test_abort_now_shuts_a_tcp_socket_down_at_once() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        transport = Aborting(ours)
        abort_now(transport)
        assert transport.aborted
        peer.settimeout(0)
        assert peer.recv(1) == b"", "the peer has the FIN already"
        abort_now(transport)  # shut down twice (the peer gone first): no error


@pytest.mark.parametrize(
    "transport",
    [Aborting(object()), Aborting(closed=True), StringTransport()],
    ids=["tls-handle", "closed", "in-memory"],
)
def test_abort_now_without_a_socket_only_aborts(transport: Any) -> None:
    abort_now(transport)
    assert getattr(transport, "aborted", False) or transport.disconnecting
