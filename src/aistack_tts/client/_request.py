"""The request the upstream client writes: its head, its body, and how the body goes out.

A step below ``client._connection``: ``request_head`` serialises the request line, ``Host``
and the headers in one bytes object, with the target exactly as given (no ``urlunparse``);
``SpooledBody`` is the spooled client body as an ``IBodyProducer`` that also hands a small
body over whole, so head and body leave in one send; ``BodyWriter`` frames a streamed body
(Content-Length enforced, or chunked when the producer's length is unknown).
"""

from __future__ import annotations

import re
from typing import IO, Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, ITransport
from twisted.internet.task import Cooperator
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IClientRequest
from zope.interface import implementer

#: A body up to this size is read whole and written with the head in one send; a larger one
#: streams from its spool with backpressure (a TTS request is a few hundred bytes of JSON, a
#: voice upload can be megabytes).
ONE_SEND_MAX = 64 * 1024

#: What a request-target or method must not hold: it would split the request line.
_SPLITS_THE_LINE = re.compile(rb"[\x00-\x20\x7f]")


class WrongBodyLength(Exception):
    """The body producer wrote more or fewer bytes than its ``length`` said."""


@implementer(IClientRequest)
@define
class ClientRequest:
    """The request a response answers (``IResponse.request``)."""

    method: bytes
    absoluteURI: bytes
    headers: Headers


class _Borrowed:
    """A file as ``FileBodyProducer`` reads it, where ``close`` does not close it."""

    def __init__(self, content: IO[bytes]) -> None:
        self._content = content

    def read(self, size: int = -1) -> bytes:
        return self._content.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._content.seek(offset, whence)

    def tell(self) -> int:
        return self._content.tell()

    def close(self) -> None:
        """Leave the spool open: the request owns it, and a retry reads it again."""


@implementer(IBodyProducer)
class SpooledBody:
    """A spooled request body (memory or temp file) of known length, as an ``IBodyProducer``.

    ``whole()`` gives a small body as bytes (read again on every call, so a retried request
    sends it again); a larger one streams in slices through a ``FileBodyProducer`` on the
    injected cooperator, paused by the transport when its buffer fills.
    """

    def __init__(self, content: IO[bytes], length: int, cooperator: Cooperator) -> None:
        self.length = length
        self._content = content
        self._cooperator = cooperator
        self._streaming: FileBodyProducer | None = None

    def whole(self) -> bytes | None:
        """The body as bytes when it is at most ``ONE_SEND_MAX``, else ``None``."""
        if self.length > ONE_SEND_MAX:
            return None
        self._content.seek(0, 0)
        return self._content.read()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """Stream the body to ``consumer``; fires when all of it was written.

        It may start again (a retry on a fresh connection): ``FileBodyProducer`` closes the
        file it reads when done or stopped, so it gets a view whose ``close`` leaves the
        request's spool open.
        """
        self._content.seek(0, 0)
        self._streaming = FileBodyProducer(_Borrowed(self._content), cooperator=self._cooperator)
        started: Deferred[None] = self._streaming.startProducing(consumer)
        return started

    def pauseProducing(self) -> None:
        if self._streaming is not None:
            self._streaming.pauseProducing()

    def resumeProducing(self) -> None:
        if self._streaming is not None:
            self._streaming.resumeProducing()

    def stopProducing(self) -> None:
        if self._streaming is not None:
            self._streaming.stopProducing()


def can_resend(producer: IBodyProducer | None) -> bool:
    """Whether the body of ``producer`` can be produced again from its start (a retry)."""
    return producer is None or isinstance(producer, SpooledBody)


def whole_body(producer: IBodyProducer | None) -> bytes | None:
    """The body of ``producer`` as bytes if it can go in the head's send (and be sent again)."""
    if producer is None:
        return b""
    if isinstance(producer, SpooledBody):
        return producer.whole()
    return None


def request_head(
    method: bytes, target: bytes, host: bytes, headers: Headers | None, length: Any
) -> bytes:
    """The request line, ``Host``, the headers and the body's framing header, in one bytes.

    ``length`` is the body's length, ``None`` for no body, or ``UNKNOWN_LENGTH`` (chunked).
    ``Host`` and ``Content-Length`` come from the client, never from ``headers`` (the gateway
    drops the client's); a Transfer-Encoding in ``headers`` is dropped too.
    """
    if _SPLITS_THE_LINE.search(method) or _SPLITS_THE_LINE.search(target) or not target:
        raise ValueError(f"a request line cannot carry {method!r} {target!r}")
    lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, host)]
    if headers is not None:
        for name, values in headers.getAllRawHeaders():
            lower = name.lower()
            if lower in (b"host", b"content-length", b"transfer-encoding"):
                continue
            for value in values:
                lines.append(b"%s: %s\r\n" % (name, value))
    if length is UNKNOWN_LENGTH:
        lines.append(b"Transfer-Encoding: chunked\r\n\r\n")
    elif length is not None:
        lines.append(b"Content-Length: %d\r\n\r\n" % length)
    else:
        lines.append(b"\r\n")
    return b"".join(lines)


@implementer(IConsumer)
@define
class BodyWriter:
    """The consumer a streamed request body is written to: framing, then the transport.

    With a known ``length`` it sends no byte over it: what is over is dropped and ``finish``
    raises ``WrongBodyLength`` (so the connection is aborted, never reused); with
    ``UNKNOWN_LENGTH`` it frames each write as a chunk.
    """

    transport: ITransport
    length: Any
    written: int = field(default=0, init=False)
    failed: WrongBodyLength | None = field(default=None, init=False)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)  # type: ignore[attr-defined]

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()  # type: ignore[attr-defined]

    def write(self, data: bytes) -> None:
        if not data or self.failed is not None:
            return
        self.written += len(data)
        if self.length is UNKNOWN_LENGTH:
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        elif self.written > self.length:
            self.failed = WrongBodyLength(
                f"the body producer wrote more than its length of {self.length} bytes"
            )
        else:
            self.transport.write(data)

    def finish(self) -> None:
        """The producer is done: end the framing, or fail a body shorter than its length."""
        if self.failed is not None:
            raise self.failed
        if self.length is UNKNOWN_LENGTH:
            self.transport.write(b"0\r\n\r\n")
        elif self.written != self.length:
            raise WrongBodyLength(
                f"the body producer wrote {self.written} of its length of {self.length} bytes"
            )
