"""The upstream's response head, checked: the first thing the upstream client reads.

``parse_head`` turns the lines of one head (status line and field lines, each without its
LF) into a ``Head``, or ``None`` for an interim 1xx (100 Continue, 103 Early Hints), or
raises ``UpstreamProtocolError`` saying what is wrong: status line and field lines as RFC
9112 writes them (no obs-fold, no space before the colon, no control characters in values),
only ``chunked`` as a transfer coding, never both Transfer-Encoding and Content-Length,
Content-Length repeated only with equal values, no 101 unless the request asked for an
upgrade. Bare LF line ends and an empty reason phrase are HTTP/1.1 and pass.
``ResponseParser`` (``client._parser``) finds the heads, bounds them and frames the body;
the WebSocket tunnel reads its handshake's answer with it too (``upgrade=True``: a 101 is
the answer asked for, and the head is kept whole, as it is sent on).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from attrs import define

from aistack_tts.wire._http import HOP_BY_HOP

#: The most response-head bytes (status line, header lines and their line ends, 1xx interim
#: responses included) the gateway reads from the upstream. nginx answers 502 beyond its
#: ``proxy_buffer_size`` (4 or 8 KiB); this is generous for any TTS server.
MAX_UPSTREAM_HEAD = 64 * 1024
#: RFC 9112 section 4: ``HTTP-version SP status-code SP [reason-phrase]``. Twisted's tolerance
#: of a missing SP before an empty phrase is kept (some servers omit it).
STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?")
#: RFC 9110 section 5: ``field-name ":" OWS field-value OWS``; a name is a token and a value
#: holds no control character but HTAB (so no NUL, CR, LF or DEL).
FIELD_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*"
    rb"((?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)[ \t]*"
)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_DIGITS = re.compile(rb"[0-9]+")

#: Response headers about the connection and the framing, not the message, never in
#: ``Head.headers``: the hop-by-hop ones (``wire._http.HOP_BY_HOP``, the one table of them)
#: and Content-Length (given as ``Head.length``). The parser reads those it needs
#: (Connection, Keep-Alive, Transfer-Encoding, Content-Length) from here.
CONNECTION_HEADERS: Final = HOP_BY_HOP | {b"content-length"}


class UpstreamProtocolError(Exception):
    """The upstream's response is not valid HTTP/1.1 (or is over the gateway's bounds)."""


class IncompleteResponse(Exception):
    """The connection closed cleanly before the response was whole."""


def shown(data: bytes, limit: int = 60) -> str:
    """``data`` for an error message: printable, quoted, cut at ``limit`` bytes."""
    text = data[:limit].decode("latin-1").encode("unicode_escape").decode("ascii")
    return repr(text + ("..." if len(data) > limit else ""))


@define
class Head:
    """The final response head and what it says about the body and the connection."""

    status: int
    reason: bytes
    #: Every field line but the ``CONNECTION_HEADERS`` (all of them for an answer to an
    #: upgrade request), as ``(name as sent, value)``.
    headers: list[tuple[bytes, bytes]]
    #: The body's Content-Length (0 when the response can have no body), else ``None``.
    length: int | None
    chunked: bool
    #: HTTP/1.1 without ``Connection: close``, or HTTP/1.0 with ``keep-alive`` (and no
    #: Transfer-Encoding).
    keep_alive: bool
    #: The tokens of ``Connection``, lower-case (the headers it names are hop-by-hop).
    connection: frozenset[bytes]
    #: The minor version of the status line: 1 for HTTP/1.1, 0 for HTTP/1.0.
    minor: int = 1
    #: How long the upstream keeps the connection idle: ``Keep-Alive: timeout=N``.
    keep_alive_timeout: float | None = None
    #: An answer to an upgrade request (``upgrade=True``): the head's bytes with CRLF line ends
    #: (a 101 goes to the client as it came), and ``headers`` holds every field line.
    raw: bytes = b""


def head_end(buffer: bytes | bytearray, start: int = 0, stop: int | None = None) -> int:
    """Where the head in ``buffer[start:stop]`` ends (just past its blank line), or -1.

    Line ends are CRLF or a bare LF (RFC 9112 section 2.2), so the blank line is the first of
    ``LF CR LF`` and ``LF LF``.
    """
    end = buffer.find(b"\n\r\n", start, stop)
    bare = buffer.find(b"\n\n", start, stop)
    if bare >= 0 and (end < 0 or bare < end):
        return bare + 2
    return end + 3 if end >= 0 else -1


def content_length(values: Sequence[bytes]) -> int:
    """The one length that repeated Content-Length values agree on; ``ValueError`` otherwise.

    RFC 9110 section 8.6: ``42, 42`` and two ``42`` lines are one length, ``5, 6`` is an attack
    or a bug, and a length is decimal digits only (no sign, no ``0x``).
    """
    lengths = set()
    for value in b",".join(values).split(b","):
        digits = value.strip(b" \t")
        if not _DIGITS.fullmatch(digits):
            raise ValueError(digits)
        lengths.add(int(digits))
    if len(lengths) != 1:
        raise ValueError(values)
    return lengths.pop()


def parse_head(lines: list[bytes], *, upgrade: bool = False) -> Head | None:
    """The head in ``lines`` (LF already split off); ``None`` for an interim 1xx.

    ``upgrade``: the request asked to switch protocols (the WebSocket tunnel's handshake), so
    a 101 is a final head, with no body framing (the connection is the new protocol's after
    it); every field line is kept in ``headers``, the head's bytes in ``raw``, and the
    connection is never reused.
    """
    status_line = lines[0][:-1] if lines[0].endswith(b"\r") else lines[0]
    match = STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise UpstreamProtocolError(f"bad status line {shown(status_line)}")
    version, code, reason = match.groups()
    status = int(code)
    headers: list[tuple[bytes, bytes]] = []
    fields: dict[bytes, list[bytes]] = {}
    field_line = FIELD_LINE.fullmatch
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        field = field_line(line)
        if field is None:
            raise field_line_error(line)
        name, value = field.groups()
        lower = name.lower()
        if lower in CONNECTION_HEADERS:
            fields.setdefault(lower, []).append(value)
            if not upgrade:
                continue
        headers.append((name, value))
    if status < 200:
        if status != 101:
            return None  # 100 Continue, 103 Early Hints: nothing the client asked for
        if not upgrade:
            raise UpstreamProtocolError(
                "a 101 Switching Protocols answer to a request that asked for no upgrade"
            )
    connection = frozenset(
        t.strip().lower() for v in fields.get(b"connection", ()) for t in v.split(b",")
    ) - {b""}
    transfer_encoding = fields.get(b"transfer-encoding")
    if status == 101:
        length, chunked = None, False
    else:
        length, chunked = body_framing(transfer_encoding, fields.get(b"content-length"))
    if upgrade:
        # Sent on as it came, with CRLF line ends whatever it came with.
        crlf = b"\r\n".join(line[:-1] if line.endswith(b"\r") else line for line in lines)
        return Head(
            status,
            reason or b"",
            headers,
            length,
            chunked,
            False,
            connection,
            int(version),
            raw=crlf + b"\r\n\r\n",
        )
    if version == b"1":
        keep_alive = b"close" not in connection
    else:
        # RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing,
        # and the connection is closed after the message, whatever keep-alive says.
        keep_alive = (
            b"keep-alive" in connection and b"close" not in connection and not transfer_encoding
        )
    keep_alive_values = fields.get(b"keep-alive")
    return Head(
        status,
        reason or b"",
        headers,
        length,
        chunked,
        keep_alive,
        connection,
        int(version),
        None if keep_alive_values is None else keep_alive_timeout(keep_alive_values),
    )


def keep_alive_timeout(values: Sequence[bytes]) -> float | None:
    """The ``timeout=`` of ``Keep-Alive`` header values (RFC 2068 section 19.7.1.1)."""
    for value in values:
        for param in value.split(b","):
            name, _, number = param.partition(b"=")
            if name.strip().lower() == b"timeout":
                try:
                    seconds = float(number.strip().strip(b'"'))
                except ValueError:
                    return None
                return seconds if seconds >= 0 and seconds == seconds else None
    return None


def field_line_error(line: bytes) -> UpstreamProtocolError:
    """The ``UpstreamProtocolError`` that says what is wrong with a field line."""
    if line[:1] in (b" ", b"\t"):
        # RFC 9112 section 5.2 lets a proxy answer 502 for obs-fold; Twisted would glue the
        # lines together with no space.
        return UpstreamProtocolError(f"obsolete line folding in its header line {shown(line)}")
    name, colon, value = line.partition(b":")
    if not colon:
        return UpstreamProtocolError(f"a header line without a colon: {shown(line)}")
    if not _TOKEN.fullmatch(name):
        return UpstreamProtocolError(f"invalid header name {shown(name)}")
    char = next(c for c in value if not _FIELD_VALUE.fullmatch(bytes([c])))
    return UpstreamProtocolError(
        f"control character 0x{char:02x} in the value of its header {shown(name)}"
    )


def body_framing(
    transfer_encoding: Sequence[bytes] | None, lengths: Sequence[bytes] | None
) -> tuple[int | None, bool]:
    """``(Content-Length, chunked)`` of a final head; refuse framing a proxy cannot relay.

    The arguments are the head's Transfer-Encoding and Content-Length values (``None``: no
    such header).
    """
    if transfer_encoding is not None:
        codings = [c.strip().lower() for v in transfer_encoding for c in v.split(b",")]
        if codings != [b"chunked"]:
            codes = shown(b", ".join(v.strip() for v in transfer_encoding))
            raise UpstreamProtocolError(f"unsupported Transfer-Encoding {codes}")
        if lengths is not None:
            raise UpstreamProtocolError("both Transfer-Encoding and Content-Length in its response")
        return None, True
    if lengths is None:
        return None, False
    try:
        return content_length(lengths), False
    except ValueError:
        raise UpstreamProtocolError(
            f"invalid Content-Length {shown(b', '.join(lengths))}"
        ) from None
