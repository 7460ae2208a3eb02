"""The vocabulary of a WebSocket session's core: the events it is told and the effects it returns.

The lowest step of the tunnel: values only (frozen attrs classes), shared by
``tunnel._session_core`` (which decides) and ``tunnel._session`` (its shell, which
turns Twisted's callbacks into events and applies the effects in order).
"""

from __future__ import annotations

from attrs import frozen

from aistack_tts._errors import GatewayError
from aistack_tts.call._events import AbortClient, AnswerWith, Bug, ClientLeft, Cut, Finish, Stalled
from aistack_tts.client._head import Head

# Events: what happened, told by the shell.


@frozen
class Connected:
    """The upstream's connection is up."""


@frozen
class ConnectFailed:
    """The connect attempt failed, classified by the shell (``error`` for the client)."""

    error: GatewayError
    cause: str


@frozen
class UpstreamData:
    """Bytes from the upstream."""

    data: bytes


@frozen
class ClientData:
    """Bytes from the client, once the tunnel holds its connection."""

    data: bytes


@frozen
class UpstreamLost:
    """The upstream's connection ended; ``why`` describes how, ``clean``: by a FIN."""

    why: str
    clean: bool = True


@frozen
class ClientLost:
    """The client's connection ended after the 101.

    ``stuck``: the upstream is not reading (its send buffer is full), so what is still on its
    way to it would never be flushed: its connection is aborted, not closed politely.
    """

    stuck: bool = False


Event = (
    Connected
    | ConnectFailed
    | UpstreamData
    | ClientData
    | UpstreamLost
    | ClientLost
    | ClientLeft
    | Stalled
    | Cut
    | Bug
)


# Effects: what the shell does, in the order given.


@frozen
class SendHandshake:
    """Write the client's handshake to the upstream."""


@frozen
class CancelConnect:
    """Cancel the connect attempt; its failure comes back as ``ConnectFailed``."""


@frozen
class Open:
    """A 101: take the client's connection over, couple both sides, write ``head`` then ``rest``.

    The bytes the client sent after its handshake come back as ``ClientData``.
    """

    head: Head
    rest: bytes


@frozen
class StartRelay:
    """Another status: start the client's response from ``head``; a body follows if ``body``."""

    head: Head
    chunked: bool
    body: bool


@frozen
class WriteClient:
    """Write ``data`` to the client: tunnel bytes, or (``relayed``) a body chunk of the answer."""

    data: bytes
    relayed: bool = False


@frozen
class WriteUpstream:
    """Write ``data`` to the upstream (a side being closed is left alone)."""

    data: bytes


@frozen
class CloseUpstream:
    """Close the upstream's connection: politely or (``abort``) at once."""

    abort: bool


@frozen
class CloseClient:
    """Close the client's connection the tunnel holds: politely or (``abort``) at once."""

    abort: bool


Effect = (
    SendHandshake
    | CancelConnect
    | Open
    | StartRelay
    | WriteClient
    | WriteUpstream
    | CloseUpstream
    | CloseClient
    | AbortClient
    | AnswerWith
    | Finish
)
