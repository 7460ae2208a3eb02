"""What the upstream's response parser tells: the events of ``client._parser``, in h11's shape.

``Head`` (``client._head``) starts a response; then ``Data`` (decoded body bytes) or, once
asked for, ``Framed`` (chunked body bytes with their framing); ``EndOfMessage``; or
``Failed``. ``NEED_DATA`` and ``CONNECTION_CLOSED`` are sentinels.
"""

from __future__ import annotations

from typing import Final, final

from attrs import define

from ._head import Head, IncompleteResponse, UpstreamProtocolError


@define
class Data:
    """Body bytes, decoded from their framing."""

    data: bytes


@define
class Framed:
    """Chunked body bytes with their framing, as the upstream sent them (``relay_framing``).

    ``data`` holds whole, checked chunk-size lines and the chunk data after them (a chunk's
    data may be cut anywhere); never the last chunk or the trailers. ``size`` is how many of
    its bytes are body.
    """

    data: bytes
    size: int


@define
class EndOfMessage:
    """The body is whole; ``reusable`` says whether the connection may carry another request."""

    reusable: bool


@define
class Failed:
    """The response cannot be read further; ``error`` says why."""

    error: UpstreamProtocolError | IncompleteResponse


@final
class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: ``next_event`` needs more bytes.
NEED_DATA: Final = _Sentinel("NEED_DATA")
#: A clean close before any byte of a response.
CONNECTION_CLOSED: Final = _Sentinel("CONNECTION_CLOSED")

Event = Head | Data | Framed | EndOfMessage | Failed | _Sentinel
