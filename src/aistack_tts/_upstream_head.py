"""The upstream's response head, parsed strictly: bounded, and only what HTTP/1.1 allows.

Twisted's ``HTTPClientParser`` keeps every header line it is sent (a 20 MB head was relayed),
passes a NUL or a bare CR in a field value through, and fails odd framing with whatever
exception it hits (``KeyError: b'chunked, identity'``). ``StrictParser`` is that parser with
the checks a proxy that forwards the head must make; each failure is an
``UpstreamProtocolError`` whose message says what was wrong, and the connection is closed
(``HTTP11ClientProtocol.dataReceived`` gives up on the connection when the parser raises).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from twisted.web.http_headers import Headers

# The Agent's parser, its states and its Content-Length rule (no public counterpart).
from ._twisted_private import HEADER, STATUS, HTTPClientParser, _contentLength

#: The most response-head bytes (status line, header lines and their line ends, 1xx interim
#: responses included) the gateway reads from the upstream. nginx answers 502 beyond its
#: ``proxy_buffer_size`` (4 or 8 KiB); this is generous for any TTS server.
MAX_UPSTREAM_HEAD = 64 * 1024

#: RFC 9112 section 4: ``HTTP-version SP status-code SP [reason-phrase]``. Twisted's tolerance
#: of a missing SP before an empty phrase is kept (some servers omit it).
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
#: RFC 9110 section 5: ``field-name ":" OWS field-value OWS``; a name is a token and a value
#: holds no control character but HTAB (so no NUL, CR, LF or DEL).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


class UpstreamProtocolError(Exception):
    """The upstream's response is not valid HTTP/1.1 (or is over the gateway's bounds)."""


def _shown(data: bytes, limit: int = 60) -> str:
    """``data`` for an error message: printable, quoted, cut at ``limit`` bytes."""
    text = data[:limit].decode("latin-1").encode("unicode_escape").decode("ascii")
    return repr(text + ("..." if len(data) > limit else ""))


class StrictParser(HTTPClientParser):
    """``HTTPClientParser`` with a bounded head and RFC 9110/9112 syntax checks.

    ``HTTP11ClientProtocol.request`` makes its parser from the module-level
    ``HTTPClientParser`` name with no hook to pass another class (the missing public API),
    so ``adopt`` turns the parser it made into this one before any response byte arrives.
    """

    # Let the head bound, not LineReceiver's 16 KiB line limit, decide.
    MAX_LENGTH = MAX_UPSTREAM_HEAD
    _head_bytes = 0

    @classmethod
    def adopt(cls, parser: HTTPClientParser) -> None:
        """Make ``parser`` (fresh from ``HTTP11ClientProtocol.request``) strict."""
        parser.__class__ = cls

    def lineReceived(self, line: bytes) -> None:
        """Count and check each head line before Twisted's parser sees it."""
        self._head_bytes += len(line) + 1
        if self._head_bytes > MAX_UPSTREAM_HEAD:
            raise UpstreamProtocolError(
                f"its response head is over the gateway's limit of {MAX_UPSTREAM_HEAD} bytes"
            )
        content = line[:-1] if line.endswith(b"\r") else line
        if self.state == STATUS:
            if not _STATUS_LINE.fullmatch(content):
                raise UpstreamProtocolError(f"bad status line {_shown(content)}")
        elif self.state == HEADER and content:
            _check_field_line(content)
        super().lineReceived(line)  # type: ignore[no-untyped-call]

    def lineLengthExceeded(self, line: bytes) -> None:
        """One line longer than the whole head may be."""
        raise UpstreamProtocolError(
            f"its response head is over the gateway's limit of {MAX_UPSTREAM_HEAD} bytes"
        )

    def allHeadersReceived(self) -> None:
        """Refuse framing the gateway cannot relay truthfully (RFC 9112 section 6)."""
        if self.response.code >= 200:
            _check_framing(self.connHeaders.getRawHeaders(b"transfer-encoding"), self.connHeaders)
        super().allHeadersReceived()  # type: ignore[no-untyped-call]


def _check_field_line(line: bytes) -> None:
    if line[:1] in (b" ", b"\t"):
        # RFC 9112 section 5.2 lets a proxy answer 502 for obs-fold; Twisted would glue the
        # lines together with no space.
        raise UpstreamProtocolError(f"obsolete line folding in its header line {_shown(line)}")
    name, colon, value = line.partition(b":")
    if not colon:
        raise UpstreamProtocolError(f"a header line without a colon: {_shown(line)}")
    if not _TOKEN.fullmatch(name):
        raise UpstreamProtocolError(f"invalid header name {_shown(name)}")
    if _FIELD_VALUE.fullmatch(value) is None:
        char = next(c for c in value if not _FIELD_VALUE.fullmatch(bytes([c])))
        raise UpstreamProtocolError(
            f"control character 0x{char:02x} in the value of its header {_shown(name)}"
        )


def _check_framing(transfer_encoding: Sequence[bytes] | None, conn_headers: Headers) -> None:
    if transfer_encoding is not None:
        codings = [c.strip().lower() for v in transfer_encoding for c in v.split(b",")]
        if codings != [b"chunked"]:
            shown = _shown(b", ".join(v.strip() for v in transfer_encoding))
            raise UpstreamProtocolError(f"unsupported Transfer-Encoding {shown}")
    lengths = conn_headers.getRawHeaders(b"content-length")
    if lengths is None:
        return
    if transfer_encoding is not None:
        raise UpstreamProtocolError("both Transfer-Encoding and Content-Length in its response")
    try:
        _contentLength(conn_headers)
    except ValueError:
        raise UpstreamProtocolError(
            f"invalid Content-Length {_shown(b', '.join(lengths))}"
        ) from None
