"""Twisted's private API, imported in one place: each name, and the public API it stands in for.

Every Twisted upgrade starts here: these are the names that may move or change without notice.
Private *attributes* the gateway reads or overrides are named in the docstring of the module
that uses them (``_channel``: ``HTTPChannel``'s parser hooks; ``_tunnel_sides``:
``HTTPChannel._dataBuffer``; ``_resources``: a port's ``_logger``). The upstream client
(``_client``) uses none: it is built on public API only.
"""

from __future__ import annotations

# The Agent's parse error: an ``agent=`` given to TTSProxy may still be Twisted's Agent, whose
# failures carry it (``_errors`` reports them as an upstream that does not speak HTTP/1.1).
from twisted.web._newclient import ParseError

# Body framing: twisted.web has no public chunked/identity decoder (the WebSocket tunnel reads
# the body of an upstream's non-101 answer with them).
from twisted.web.http import _ChunkedTransferDecoder, _IdentityTransferDecoder

__all__ = [
    "ParseError",
    "_ChunkedTransferDecoder",
    "_IdentityTransferDecoder",
]
