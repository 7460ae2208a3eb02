"""The request framing rules the client connection enforces (RFC 9112), as pure functions.

``server._channel`` applies them while twisted.web parses a request: each says what is wrong (a
sentence for the client's 400) or whether the connection must close. A trusted proxy must
frame a request exactly as the server behind it (or a proxy in front of it) would, or one
request's bytes can become another's: so these refuse what another reader could frame
differently, rather than guess.
"""

from __future__ import annotations

import re

from twisted.web.http_headers import Headers

from aistack_tts.wire._http import connection_tokens

#: ``Host`` = uri-host [ ":" port ] (RFC 9110 section 7.2): an IP literal or a reg-name.
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(:[0-9]*)?")


def wants_close(headers: Headers) -> bool:
    """Whether a request's ``Connection`` headers hold ``close`` (RFC 9112 section 9.6).

    Every ``Connection`` line counts, its tokens split on commas, optional whitespace
    stripped, any case (Twisted split the first line on spaces only, so
    ``keep-alive,close`` kept the connection open).
    """
    return b"close" in connection_tokens(headers)


def is_folded(line: bytes) -> bool:
    """Whether a header line continues the one above (obs-fold: it starts with SP or HTAB).

    RFC 9112 section 5.2 lets a server refuse it; joining it to the line above, as Twisted
    did, reads ``X-A: a`` + `` Content-Length: 40`` as one header where a proxy that reads
    lines as they are sees a body, and the body became a second request.
    """
    return line[:1] in (b" ", b"\t")


def transfer_coding_problem(value: bytes) -> str | None:
    """What is wrong with a ``Transfer-Encoding`` value, if anything: only ``chunked`` is read.

    Twisted accepts ``identity`` (dropped from HTTP/1.1) and ignores it, so
    ``Transfer-Encoding: identity`` with a Content-Length, or after ``chunked``, frames the
    body differently than a proxy or server behind that reads RFC 9112 section 6.3.
    """
    if value.lower() == b"chunked":
        return None
    return f"Transfer-Encoding {value.decode('latin-1')!r}: only chunked is accepted"


def host_problem(version: bytes, hosts: list[bytes]) -> str | None:
    """What is wrong with a request's ``Host`` headers: HTTP/1.1 needs exactly one, valid."""
    if version != b"HTTP/1.1":
        return None
    if len(hosts) != 1:
        return f"an HTTP/1.1 request needs exactly one Host header, not {len(hosts)}"
    if not _HOST.fullmatch(hosts[0]):
        return f"the Host header {hosts[0].decode('latin-1')!r} is not a valid host[:port]"
    return None
