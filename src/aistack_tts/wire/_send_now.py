"""Bytes a transport holds go to the kernel now, not on the reactor's next turn.

A Twisted TCP transport's ``write`` only buffers: the bytes leave when the reactor next
polls and finds the socket writable, after everything else the current callback does. For a
proxy that has just relayed an answer, "everything else" is its bookkeeping (ending the
call, the access event, the metrics) and, on a cold path, the next request's parsing, all of
which the client waits for. ``send_now`` calls the transport's ``doWrite`` (the reactor's
own entry point, ``IWriteDescriptor``) at once; a socket that takes nothing keeps its bytes
for the reactor, and an error is left for the reactor's next call to report.

Sending the client's first body bytes and the upstream request at once shortens the
gateway's added time to first byte (BENCHMARKS.rst, "send_now", ``bench.clients.first_byte``).

``abort_now`` is the same for a close: ``abortConnection`` only marks the transport, and the
socket closes on the reactor's next turn, after the access line and the metrics of the call
that was cut; so a client's disconnect reached the upstream (and stopped its generation)
only then. ``abort_now`` also shuts the socket down at once (the FIN leaves now; the reactor
still closes it, with its reset); a client's close reaches the upstream about twice as
fast (BENCHMARKS.rst, ``bench.run --scenarios 5 --close-trials 150``).
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any


def send_now(transport: Any) -> None:
    """Let ``transport`` (if a file-descriptor transport, still open) send what it holds now.

    Not once it is closing: its ``doWrite`` would then finish the close itself, where the
    reactor must (it calls ``connectionLost``). TLS and other wrapping transports have no
    ``doWrite`` and are left to the reactor.
    """
    do_write = getattr(transport, "doWrite", None)
    if (
        do_write is not None
        and getattr(transport, "connected", False)
        and not getattr(transport, "disconnecting", True)
    ):
        do_write()


def abort_now(transport: Any) -> None:
    """Abort ``transport``'s connection, and (a TCP socket) send its FIN at once.

    TLS transports hand out no socket (their handle is the TLS connection) and close on the
    reactor's next turn, as before.
    """
    transport.abortConnection()
    try:
        handle = transport.getHandle()
    except AttributeError:
        return  # an in-memory transport, or a socket closed already (Twisted deleted it)
    if isinstance(handle, socket.socket):
        with contextlib.suppress(OSError):  # the peer closed first: nothing to tell it
            handle.shutdown(socket.SHUT_RDWR)
