"""Twisted's private API, imported in one place: each name, and the public API it stands in for.

Every Twisted upgrade starts here: these are the names that may move or change without notice.
Private *attributes* the gateway reads or overrides are named in the docstring of the module
that uses them (``_channel``: ``HTTPChannel``'s parser hooks; ``_upstream``:
``Agent._requestWithEndpoint``; ``_tunnel_sides``: ``HTTPChannel._dataBuffer``; ``_resources``:
a port's ``_logger``).
"""

from __future__ import annotations

# The Agent's HTTP/1.1 client: there is no public way to see the Connection header of a
# response (to drop the headers it names), the reason a close-delimited body ended, or to
# give the Agent a stricter response parser (and its states and Content-Length rule).
from twisted.web._newclient import (
    HEADER,
    STATUS,
    HTTP11ClientProtocol,
    HTTPClientParser,
    ParseError,
    _contentLength,
)
from twisted.web._newclient import Request as AgentRequest

# The pool's protocol factory: the public HTTPConnectionPool has no hook for the protocol class.
from twisted.web.client import _HTTP11ClientFactory as PoolFactory

# Body framing: twisted.web has no public chunked/identity decoder, and _DataLoss is how the
# Agent reports a body cut short.
from twisted.web.http import _ChunkedTransferDecoder, _DataLoss, _IdentityTransferDecoder

__all__ = [
    "HEADER",
    "STATUS",
    "AgentRequest",
    "HTTP11ClientProtocol",
    "HTTPClientParser",
    "ParseError",
    "PoolFactory",
    "_ChunkedTransferDecoder",
    "_DataLoss",
    "_IdentityTransferDecoder",
    "_contentLength",
]
