"""Listeners: endpoints and their backlog."""

from __future__ import annotations

import pytest
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from aistack_tts.server._listen import DEFAULT_BACKLOG, parse_endpoints


@pytest.mark.parametrize(
    ("description", "backlog"),
    [
        ("tcp:0:interface=127.0.0.1", DEFAULT_BACKLOG),
        ("tcp6:0:interface=\\:\\:1", DEFAULT_BACKLOG),
        ("unix:/tmp/aistack-tts.sock", DEFAULT_BACKLOG),
        ("tcp:0:backlog=7", 7),
    ],
)
def test_listen_backlog_defaults_to_nginx_s(description: str, backlog: int) -> None:
    """Socket endpoints get a 511 listen backlog unless the description sets one."""
    reactor = MemoryReactor()
    [(given_description, endpoint)] = parse_endpoints(reactor, [description])
    assert given_description == description
    endpoint.listen(Factory())
    [server] = reactor.tcpServers or reactor.unixServers
    assert server[2] == backlog


def test_listen_backlog_only_where_an_endpoint_takes_one() -> None:
    """An endpoint without a backlog (stdio, say) is left as described."""
    [(_, endpoint)] = parse_endpoints(MemoryReactor(), ["stdio:"])
    assert type(endpoint).__name__ == "StandardIOEndpoint"
