"""The upstream call's entry: the default agent, the upstream URL and the request body.

``call._exchange`` asks here for what it hands an ``IAgent``: ``upstream_url`` (the base, then
the request-target byte-exact) and ``body_producer`` (the spooled client body). ``make_agent``
builds the gateway's default agent, the lean client of ``client._agent`` with its pool; any other
``IAgent`` (treq's testing agents included) can be passed to ``TTSProxy`` instead.

Why not ``treq.HTTPClient.request``: it wraps every agent in a ``CookieAgent`` (would replay
one client's ``Set-Cookie`` on another client's request), a ``ContentDecoderAgent`` (adds
``Accept-Encoding: gzip`` and un-gzips bodies), a ``RedirectAgent`` (follows 3xx the client
should see) and, unless told otherwise, a ``_BufferedResponse``; it also re-serialises the URL
through hyperlink (an empty ``?`` vanishes). A transparent proxy wants none of that.
"""

from __future__ import annotations

from typing import IO, Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.web.iweb import IBodyProducer

from ._agent import LeanAgent
from ._pool import ConnectionPool
from ._request import SpooledBody

__all__ = ["body_producer", "make_agent", "make_cooperator", "upstream_url"]


def make_agent(
    reactor: Any, *, connect_timeout: float, max_connections: int, pool_idle_timeout: float
) -> tuple[LeanAgent, ConnectionPool]:
    """The lean client with a persistent pool and a connect timeout.

    The pool keeps as many idle connections per upstream as it has slots (at least 2), each
    for ``pool_idle_timeout`` seconds at most.
    """
    pool = ConnectionPool(reactor, max_idle=max(2, max_connections), idle_timeout=pool_idle_timeout)
    return LeanAgent(reactor, pool, connect_timeout=connect_timeout), pool


def upstream_url(base: bytes, target: bytes) -> bytes:
    """The upstream URL for a raw request-target: the base, then path and query byte-exact."""
    return base + target


def body_producer(content: IO[bytes] | None, cooperator: Cooperator) -> IBodyProducer | None:
    """The spooled request body (memory or temp file) for the upstream; ``None`` when empty.

    Its length is learnt by seeking, so the upstream gets a ``Content-Length``; a small body
    goes out with the head in one send, a large one streams in slices and is never read
    whole into one bytes object.
    """
    if content is None:
        return None
    content.seek(0, 2)
    size = content.tell()
    content.seek(0, 0)
    if size == 0:
        return None
    return SpooledBody(content, size, cooperator)


def make_cooperator(reactor: IReactorTime) -> Cooperator:
    """A cooperator on the injected reactor (the default one uses the global reactor)."""
    return Cooperator(scheduler=lambda work: reactor.callLater(0, work))
