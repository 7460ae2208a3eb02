"""The gateway in this process on a real port, and a raw Twisted client that talks to it.

For the real-socket suites that run ``TTSProxy(...).site()`` on pytest-twisted's reactor in
front of the scriptable upstream process (``testbed.upstream_server``): ``http_request``
builds exact request bytes, ``RawClient`` keeps every byte of the answer and how the
connection ended, ``InProcessGateway`` is one gateway (its slot's tokens, ``exchange``,
``slot_released``), ``Gateways`` starts them for one test and takes each down, checking no
DelayedCall is left. ``upstream_event`` waits for an upstream event without blocking the
reactor. The fixtures (``inprocess_gateways``, ``inprocess_gateway``) are in conftest.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from aistack_tts import TTSProxy
from support.reactor import disconnected, listen_tracking, new_delayed_calls, reactor, until
from support.wire import dechunk
from testbed.processes import Event, UpstreamProcess

MiB = 1024 * 1024
#: Everything a test waits for normally happens in milliseconds; this only bounds a hang.
PATIENCE = 10.0


def tcp(transport: object) -> ITCPTransport:
    """A client protocol's transport, as the TCP transport it is."""
    assert transport is not None
    return cast(ITCPTransport, transport)


def new_id() -> str:
    return uuid.uuid4().hex[:12]


# The upstream process: the ``upstream`` fixture (conftest.py).


async def upstream_event(
    upstream: UpstreamProcess, ident: str, kinds: set[str], timeout: float = PATIENCE
) -> Event:
    """The first of ``kinds`` for request ``ident``, waiting for it without blocking the reactor."""
    await until(
        lambda: upstream.first(ident, kinds) is not None,
        f"upstream event {sorted(kinds)} for {ident} (saw {upstream.events(ident)})",
        timeout=timeout,
    )
    event = upstream.first(ident, kinds)
    assert event is not None
    return event


# A raw HTTP/1.1 client: exact bytes out, exact bytes in, and how the connection ended.


def http_request(
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> bytes:
    """Request bytes; ``Connection: close`` unless the caller sends its own Connection."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: gateway.test"]
    if not any(name.lower() == b"connection" for name, _ in headers):
        lines.append(b"Connection: close")
    lines += [name + b": " + value for name, value in headers]
    if body or method == b"POST":
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass
class Response:
    status: int | None
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    #: The framing says the body is whole (Content-Length reached, or the last chunk seen).
    complete: bool

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def header_names(self) -> set[bytes]:
        return {n.lower() for n, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(raw: bytes) -> Response:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return Response(None, b"", [], b"", complete=False)
    status_line, *lines = head.split(b"\r\n")
    _version, status, *reason = status_line.split(b" ", 2)
    headers = [
        (name.strip(), value.strip()) for name, value in (line.split(b":", 1) for line in lines)
    ]
    response = Response(int(status), reason[0] if reason else b"", headers, rest, True)
    if any(v.lower() == b"chunked" for v in response.header(b"transfer-encoding")):
        response.body, response.complete = dechunk(rest)
    elif response.header(b"content-length"):
        length = int(response.header(b"content-length")[0])
        response.body, response.complete = rest[:length], len(rest) >= length
    return response


class RawClient(Protocol):
    """Sends one request as given and keeps every byte of the answer."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = bytearray()
        self.reason: Failure | None = None
        self._watchers: list[tuple[Callable[[], bool], str, Deferred[None]]] = []

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.reason = reason
        self._check()

    def _check(self) -> None:
        for item in list(self._watchers):
            predicate, what, waiting = item
            if waiting.called:
                self._watchers.remove(item)
            elif predicate():
                self._watchers.remove(item)
                waiting.callback(None)
            elif self.reason is not None:
                self._watchers.remove(item)
                waiting.errback(
                    AssertionError(
                        f"the connection ended ({self.reason.getErrorMessage()}) before "
                        f"{what}; got {bytes(self.received[:400])!r}"
                    )
                )

    def when(self, predicate: Callable[[], bool], what: str) -> Deferred[None]:
        """Fires once ``predicate`` holds; fails if the connection ends first or in PATIENCE."""
        waiting: Deferred[None] = Deferred()
        self._watchers.append((predicate, what, waiting))
        self._check()
        waiting.addTimeout(PATIENCE, reactor)
        return waiting

    def body_received(self) -> int | None:
        head_end = self.received.find(b"\r\n\r\n")
        return None if head_end < 0 else len(self.received) - head_end - 4

    def headers_and(self, body_bytes: int) -> Deferred[None]:
        """Fires once the response headers and ``body_bytes`` raw body bytes are in."""
        return self.when(
            lambda: (self.body_received() or -1) >= body_bytes,
            f"headers and {body_bytes} body bytes",
        )

    def closed(self) -> Deferred[None]:
        return self.when(lambda: self.reason is not None, "the end of the connection")

    @property
    def closed_cleanly(self) -> bool:
        return self.reason is not None and self.reason.check(ConnectionDone) is not None

    def response(self) -> Response:
        return parse_response(bytes(self.received))


# The gateway in this process.


@dataclass
class InProcessGateway:
    proxy: TTSProxy
    listening: IListeningPort
    channels: list[Any] = field(default_factory=list)
    clients: list[RawClient] = field(default_factory=list)

    @property
    def port(self) -> int:
        return cast(int, self.listening.getHost().port)  # type: ignore[attr-defined]

    @property
    def tokens(self) -> int:
        return self.proxy.slot.semaphore.tokens

    async def connect(self, request: bytes) -> RawClient:
        client = RawClient(request)
        self.clients.append(client)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        return client

    async def exchange(
        self, request: bytes, *, until_closed: bool = True
    ) -> tuple[RawClient, Response]:
        """Send ``request``, wait for the connection to end (or for a whole response), and
        return what came back."""
        client = await self.connect(request)
        if until_closed:
            await client.closed()
        else:
            await client.when(lambda: client.response().complete, "a whole response")
        return client, client.response()

    async def slot_released(self) -> None:
        limit = self.proxy.slot.semaphore.limit
        await until(
            lambda: self.tokens == limit,
            f"the slot's {limit} token(s) to be back",
            timeout=PATIENCE,
        )

    async def close(self) -> None:
        for client in self.clients:
            if client.reason is None and client.transport is not None:
                tcp(client.transport).abortConnection()
        await until(
            lambda: all(c.reason is not None for c in self.clients),
            "client connections to end",
            timeout=PATIENCE,
        )
        await until(
            lambda: all(disconnected(channel) for channel in self.channels),
            "the gateway's client connections to end",
            timeout=PATIENCE,
        )
        await self.slot_released()
        await maybeDeferred(self.listening.stopListening)
        await self.proxy.close()


class Gateways:
    """Starts in-process gateways for one test; ``close`` takes every one of them down."""

    def __init__(self) -> None:
        self.started: list[InProcessGateway] = []
        self._calls_before = set(reactor.getDelayedCalls())

    def __call__(self, upstream: str, **options: Any) -> InProcessGateway:
        proxy = TTSProxy(upstream, reactor=reactor, **options)
        site = proxy.site()
        listening, channels = listen_tracking(site)
        gateway = InProcessGateway(proxy, listening, channels)
        self.started.append(gateway)
        return gateway

    async def close(self) -> None:
        for gateway in self.started:
            await gateway.close()
        left = new_delayed_calls(self._calls_before)
        assert not left, f"DelayedCalls left behind: {left}"


def assert_envelope(response: Response, status: int, kind: str, provider: str) -> dict[str, Any]:
    assert response.status == status, response
    assert response.header(b"content-type") == [b"application/json"]
    error = response.json()["error"]
    assert error["type"] == kind
    assert error["code"] == kind
    assert error["provider"] == provider
    assert error["param"] is None
    assert isinstance(error["message"], str)
    assert error["message"]
    return cast(dict[str, Any], error)
