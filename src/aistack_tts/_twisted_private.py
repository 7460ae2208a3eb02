"""Twisted's private API, imported in one place: each name, and the public API it stands in for.

Every Twisted upgrade starts here: these are the names that may move or change without notice.
Private *attributes* the gateway reads or overrides are named in the docstring of the module
that uses them (``server._channel``: ``HTTPChannel``'s parser hooks; ``tunnel._sides``:
``HTTPChannel._dataBuffer``; ``wire._descriptors``: a port's ``_logger``; ``wire._socket_state``: a
``FileDescriptor``'s write buffer and ``_aborting``). The upstream client
(``client._agent``) uses none: it is built on public API only, and it and the WebSocket tunnel read
the upstream's bytes with the gateway's own parser (``client._parser``), not Twisted's
private body decoders.
"""

from __future__ import annotations

# The Agent's parse error: an ``agent=`` given to TTSProxy may still be Twisted's Agent, whose
# failures carry it (``_errors`` reports them as an upstream that does not speak HTTP/1.1).
from twisted.web._newclient import ParseError

__all__ = ["ParseError"]
