"""``send_now``: bytes go out at once, except where the reactor must finish the job."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import StringTransport

from aistack_tts._send_now import send_now


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
