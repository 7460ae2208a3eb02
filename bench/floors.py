"""Twisted with no gateway logic at all: what the stack costs by itself, for ``bench/run.py``.

    python -m bench.floors {web,agent,lean,relay} --upstream-port PORT [--port 0]

Four processes that do less than any useful gateway, so that what they cost is a floor for
every gateway built on the same pieces (the harness runs them in the same rounds as the
contenders and prints them as "Twisted floors"):

- ``web``: a bare ``twisted.web`` ``Site``. ``GET /v1/audio/voices`` answers the upstream's
  voices JSON from memory; every other request gets a fixed 503 JSON body with
  ``Retry-After`` (what the gateway answers when the slot is busy). No upstream, no routing,
  no log line: the cost of twisted.web's server side alone.
- ``agent``: that ``Site`` forwarding every request with Twisted's ``Agent`` on a persistent
  ``HTTPConnectionPool`` and streaming the answer back with flow control (the upstream's
  transport registered as the request's producer). No slot, no checks, no Klein, no log, no
  header hygiene: the cost of twisted.web plus ``Agent``, which is the data path aistack-tts
  is built on.
- ``lean``: the same ``Site`` and forwarding, with the gateway's own upstream client
  (``aistack_tts.client._agent.LeanAgent`` and its pool) in place of ``Agent``: what twisted.web
  and that client cost together, before any of the gateway's checks, slot, log or metrics.
- ``relay``: ``twisted.protocols.portforward``: bytes copied between two TCP connections with
  flow control, no HTTP parsing at all. The most a Twisted process can move per CPU.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.protocols.portforward import ProxyFactory
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from aistack_tts.client._agent import LeanAgent
from aistack_tts.client._pool import ConnectionPool
from bench.fast_upstream import VOICES

reactor: Any = _reactor

BUSY = json.dumps(
    {
        "error": {
            "message": "The GPU is busy with another request; retry after 1 s.",
            "type": "gpu_busy",
            "code": "gpu_busy",
            "provider": "aistack-tts",
        }
    }
).encode()
#: Dropped when forwarding (the minimum for a correct HTTP/1.1 proxy; no Connection parsing).
HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"content-length"}


class Bare(Resource):
    """``web``: voices from memory, 503 for the rest."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        if request.method == b"GET" and request.path == b"/v1/audio/voices":
            request.setHeader(b"content-type", b"application/json")
            return VOICES
        request.setResponseCode(503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"retry-after", b"1")
        return BUSY


class _Pump(Protocol):
    """Writes the upstream body to the client request; finishes it at the end."""

    def __init__(self, request: Request) -> None:
        self.request = request

    def connectionMade(self) -> None:
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.request.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.request.unregisterProducer()
        if not self.request.finished:
            self.request.finish()


class Forward(Resource):
    """``agent``: every request forwarded with ``Agent``, the answer streamed back."""

    isLeaf = True

    def __init__(self, upstream: bytes, *, lean: bool = False) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.upstream = upstream
        self.agent: IAgent
        if lean:
            # As the gateway makes it (_upstream.default_agent): an idle connection per slot.
            lean_pool = ConnectionPool(reactor, max_idle=64)
            self.agent = LeanAgent(reactor, lean_pool, connect_timeout=10)
        else:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 64  # as the gateway's: 16 connections all stay pooled
            self.agent = Agent(reactor, pool=pool)

    def render(self, request: Request) -> int:
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in HOP:
                headers.setRawHeaders(name, values)
        body = None
        if request.getHeader(b"content-length") not in (None, b"0"):
            body = FileBodyProducer(request.content)
        d: Deferred[IResponse] = self.agent.request(
            request.method, self.upstream + request.uri, headers, body
        )

        def respond(response: IResponse) -> None:
            request.setResponseCode(response.code)
            for name, values in response.headers.getAllRawHeaders():
                if name.lower() not in HOP:
                    request.responseHeaders.setRawHeaders(name, values)
            # The Agent moves Content-Length into response.length; without it twisted.web
            # would chunk the answer (more work than the gateway does).
            if isinstance(response.length, int):
                request.setHeader(b"content-length", b"%d" % response.length)
            response.deliverBody(_Pump(request))

        def failed(reason: Failure) -> None:
            request.setResponseCode(502)
            request.finish()

        d.addCallbacks(respond, failed)
        return NOT_DONE_YET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("kind", choices=("web", "agent", "lean", "relay"))
    parser.add_argument("--upstream-port", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    factory: Any
    if args.kind == "relay":
        factory = ProxyFactory("127.0.0.1", args.upstream_port)
    else:
        url = b"http://127.0.0.1:%d" % args.upstream_port
        root: Resource = (
            Bare()  # type: ignore[no-untyped-call]
            if args.kind == "web"
            else Forward(url, lean=args.kind == "lean")
        )
        factory = Site(root)
        factory.log = lambda request: None  # no access log: a floor
    reactor.listenTCP(args.port, factory, interface="127.0.0.1", backlog=511)
    reactor.run()


if __name__ == "__main__":
    main()
