"""The gateway's HTTP constants, shared by the routes, the proxied call and the tunnel."""

from __future__ import annotations

#: The methods the contract proxies; everything else is a 405.
ALLOWED_METHODS = (b"GET", b"POST", b"DELETE")
ALLOW_HEADER = (b"Allow", b", ".join(ALLOWED_METHODS))

#: Statuses that never have a body, so never a Content-Length (RFC 9110 section 8.6).
NO_BODY_STATUS = frozenset({204, 304})

#: How much the client's transport may hold unsent before it pauses the upstream. Twisted's
#: default (64 KiB) is one upstream read, so the upstream was paused and resumed after nearly
#: every chunk; this bounds memory per stream just the same, at a few chunks.
CLIENT_SEND_BUFFER = 512 * 1024

#: Retry-After for a 503 upstream_unavailable: the stack is down, not busy.
RETRY_UNAVAILABLE_S = 5
