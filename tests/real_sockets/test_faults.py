"""The fault matrix: every upstream fault against every client behaviour, over real sockets.

The upstream is ``testbed/upstream_server.py`` in its own process, with ``--connection-events``
so it reports each TCP connection it accepts and loses; the gateway runs in this process
(pytest-twisted's reactor, a real listening port) so a test can read its slot. Each cell runs
one request through a fresh gateway and checks, whatever happened:

- the slot was taken once and given back once (a counting semaphore), never above its limit;
- every upstream connection the cell opened is closed: by the gateway on its own for a
  broken or abandoned call (within 0.25 s of the client leaving, so not by a timeout), or,
  for a whole response, when the pool is closed;
- nothing unhandled was logged (no ``log_failure``/``isError`` event), one access event;
- no timer is left on the reactor;
- the client got the contract's answer: an envelope (503 ``upstream_unavailable``, 502
  ``upstream_error``, 504 ``upstream_timeout``), the upstream's 500 verbatim, or, once the
  gateway has committed to the upstream's 200, a connection that is not ended cleanly (never
  the clean end of a short body).

RELIABILITY.rst has the matrix as a table. ``AISTACK_FAULT_MATRIX=path.json`` makes this module
write what the client saw in each cell to that file.
"""

from __future__ import annotations

import gc
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred, DeferredSemaphore, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from aistack_tts import TTSProxy
from support.logs import LogCapture
from support.reactor import (
    blockon,
    disconnected,
    listen_tracking,
    new_delayed_calls,
    reactor,
    twisted_test,
    until,
)
from support.wire import dechunk
from testbed.processes import Event, UpstreamProcess
from testbed.upstream_server import pattern

pytestmark = [pytest.mark.real_sockets]

KiB = 1024
MiB = 1024 * KiB
#: The gateway's --idle-timeout in this module: what turns a hang into a 504 or an abort.
IDLE_TIMEOUT = 0.4
#: Bounds a wait for something that normally takes milliseconds.
PATIENCE = 10.0
#: A client that leaves makes the gateway close the upstream within this (well under
#: IDLE_TIMEOUT, so it was the departure that closed it, not the watchdog).
CLOSE_WITHIN = 0.25
#: The upstream streams at this rate, so a client can leave mid-body before a fault strikes.
RATE = 4_000_000
STREAM = f"bytes={2 * MiB}&chunk={16 * KiB}&rate={RATE}"
#: Where the mid-body faults strike (about 130 ms into the body at RATE).
MID = 512 * KiB
#: The size of the upstream's 500 body (streamed at RATE, with Content-Length).
ERROR_BODY = 512 * KiB
#: A mid-body-aborting client leaves once it has this much body (about 8 ms at RATE).
ABORT_AFTER = 32 * KiB
#: A slow client pauses this long after every read.
SLOW_PAUSE = 0.05
#: In the "aborts before headers" column the upstream holds its answer (and its fault) this
#: long, and the client leaves as soon as the upstream has the request.
HOLD = 0.3


@dataclass(frozen=True)
class Fault:
    """One way the upstream misbehaves, and what a client that reads to the end must get."""

    name: str
    #: The /v1/audio/stream query that makes the upstream do it ("" for the refused one).
    query: str
    #: "envelope" (status and type below), "verbatim" (the upstream's 500) or "truncated"
    #: (the gateway had committed to a 200: the client's connection must not end cleanly).
    expect: str
    status: int | None = None
    kind: str | None = None

    @property
    def reaches_upstream(self) -> bool:
        return bool(self.query)


FAULTS = [
    Fault("refused", "", "envelope", 503, "upstream_unavailable"),
    Fault("reset_before_headers", "reset_before_headers=1", "envelope", 502, "upstream_error"),
    Fault("reset_mid_body", f"{STREAM}&reset={MID}", "truncated"),
    Fault("hang_before_headers", "delay=30", "envelope", 504, "upstream_timeout"),
    Fault("hang_mid_body", f"{STREAM}&hang={MID}", "truncated"),
    Fault("not_http", "garbage=1", "envelope", 502, "upstream_error"),
    Fault(
        "500_with_body",
        f"status=500&bytes={ERROR_BODY}&chunk={16 * KiB}&rate={RATE}&length=1",
        "verbatim",
        500,
    ),
    Fault("close_after_headers", "close_after_headers=1", "truncated"),
    Fault("short_content_length", f"{STREAM}&length=1&short={MID}", "truncated"),
]
CLIENTS = ["reads", "aborts_before_headers", "aborts_mid_body", "reads_slowly"]


# The slot, counted.


class CountingSemaphore(DeferredSemaphore):
    """A DeferredSemaphore that counts takes and gives, and notes any give beyond its limit."""

    def __init__(self, tokens: int) -> None:
        super().__init__(tokens)
        self.acquired = 0
        self.released = 0
        self.over_released = 0

    def acquire(self) -> Deferred[CountingSemaphore]:
        self.acquired += 1
        return super().acquire()

    def release(self) -> None:
        self.released += 1
        if self.tokens >= self.limit:
            self.over_released += 1
        super().release()


@implementer(IAgent)
class SpyAgent:
    """The gateway's own agent, telling the test when the gateway sends its upstream call."""

    def __init__(self, agent: IAgent) -> None:
        self._agent = agent
        self.calls = 0
        self.on_call: Callable[[], None] | None = None

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        self.calls += 1
        called: Deferred[IResponse] = self._agent.request(method, uri, headers, bodyProducer)
        if self.on_call is not None:
            self.on_call()
        return called


# The client.


def post(target: str) -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    ).encode()


class Client(Protocol):
    """Sends one request, then reads as ``behaviour`` says, keeping every byte it got."""

    def __init__(self, request: bytes, behaviour: str) -> None:
        self.request = request
        self.behaviour = behaviour
        self.received = bytearray()
        self.reason: Failure | None = None
        self.aborted_at: float | None = None
        self.ended: Deferred[None] = Deferred()
        self._resume: IDelayedCall | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def body_received(self) -> int:
        head_end = self.received.find(b"\r\n\r\n")
        return -1 if head_end < 0 else len(self.received) - head_end - 4

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.behaviour == "aborts_mid_body" and self.body_received() >= ABORT_AFTER:
            self.abort()
        elif self.behaviour == "reads_slowly" and self._resume is None:
            producer = IPushProducer(self.transport)
            producer.pauseProducing()
            self._resume = reactor.callLater(SLOW_PAUSE, self._read_again, producer)

    def _read_again(self, producer: IPushProducer) -> None:
        self._resume = None
        producer.resumeProducing()

    def abort(self) -> None:
        """Leave at once: the connection is reset, not closed."""
        if self.aborted_at is None and self.reason is None:
            self.aborted_at = time.monotonic()
            cast(ITCPTransport, self.transport).abortConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.reason = reason
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        self.ended.callback(None)

    @property
    def closed_cleanly(self) -> bool:
        return self.reason is not None and self.reason.check(ConnectionDone) is not None


@dataclass
class Seen:
    """The client's view of the response: status, headers, body and whether framing says whole."""

    status: int | None
    reason: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False
    chunked: bool = False

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def parse(raw: bytes) -> Seen:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return Seen(None)
    status_line, *lines = head.split(b"\r\n")
    _version, status, *reason = status_line.split(b" ", 2)
    headers = [(n.strip(), v.strip()) for n, v in (line.split(b":", 1) for line in lines)]
    seen = Seen(int(status), reason[0] if reason else b"", headers, rest, True)
    if any(v.lower() == b"chunked" for v in seen.header(b"transfer-encoding")):
        seen.chunked = True
        seen.body, seen.complete = dechunk(rest)
    elif seen.header(b"content-length"):
        length = int(seen.header(b"content-length")[0])
        seen.body, seen.complete = rest[:length], len(rest) >= length
    return seen


def describe(client: Client) -> str:
    """What the client saw, in a few words (for the matrix in RELIABILITY.rst)."""
    seen = parse(bytes(client.received))
    ending = (
        "it left"
        if client.aborted_at is not None
        else ("clean close" if client.closed_cleanly else "reset")
    )
    if seen.status is None:
        return "nothing, client left" if client.aborted_at is not None else f"no bytes, {ending}"
    if seen.header(b"content-type") == [b"application/json"] and seen.status != 500:
        kind = json.loads(seen.body)["error"]["type"]
        return f"{seen.status} {kind} envelope"
    if seen.complete:
        return f"{seen.status} verbatim, whole body"
    framing = "chunked, no last chunk" if seen.chunked else "short of Content-Length"
    return f"{seen.status}, part of body ({framing}), {ending}"


# The upstream, and what it saw of one cell.


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    process = UpstreamProcess.start(
        tmp_path_factory.mktemp("upstream-faults"), connection_events=True
    )
    yield process
    process.stop()


class UpstreamView:
    """The upstream's events from one point on (one cell's)."""

    def __init__(self, upstream: UpstreamProcess) -> None:
        self._upstream = upstream
        self._mark = len(upstream.events())

    def events(self) -> list[Event]:
        return self._upstream.events()[self._mark :]

    def first(self, ident: str, kinds: set[str]) -> Event | None:
        return next((e for e in self.events() if e.ident == ident and e.kind in kinds), None)

    def opened(self) -> list[str]:
        return [e.ident for e in self.events() if e.kind == "CONNECTED"]

    def open_now(self) -> list[str]:
        gone = {e.ident for e in self.events() if e.kind == "DISCONNECTED"}
        return [name for name in self.opened() if name not in gone]

    def disconnected_at(self) -> list[float]:
        return [e.t for e in self.events() if e.kind == "DISCONNECTED"]


# The gateway of one cell.


@dataclass
class Gateway:
    proxy: TTSProxy
    semaphore: CountingSemaphore
    agent: SpyAgent
    listening: IListeningPort
    channels: list[Any]
    clients: list[Client] = field(default_factory=list)
    closed: bool = False

    @property
    def port(self) -> int:
        return cast(int, self.listening.getHost().port)  # type: ignore[attr-defined]

    async def connect(self, request: bytes, behaviour: str) -> Client:
        client = Client(request, behaviour)
        self.clients.append(client)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        return client

    def slot_free(self) -> bool:
        return self.semaphore.tokens == self.semaphore.limit

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for client in self.clients:
            if client.reason is None and client.transport is not None:
                cast(ITCPTransport, client.transport).abortConnection()
        await until(
            lambda: (
                all(c.reason is not None for c in self.clients)
                and all(disconnected(ch) for ch in self.channels)
            ),
            "the cell's connections to end",
            timeout=PATIENCE,
        )
        await maybeDeferred(self.listening.stopListening)
        await self.proxy.close()


@pytest.fixture
def gateways() -> Iterator[Callable[[str], Gateway]]:
    started: list[Gateway] = []

    def start(upstream_url: str) -> Gateway:
        semaphore = CountingSemaphore(1)
        proxy = TTSProxy(upstream_url, reactor=reactor, slot=semaphore, idle_timeout=IDLE_TIMEOUT)
        spy = SpyAgent(proxy.agent)
        proxy.agent = spy
        listening, channels = listen_tracking(proxy.site())
        gateway = Gateway(proxy, semaphore, spy, listening, channels)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        blockon(Deferred.fromCoroutine(gateway.close()))


#: What each cell's client saw, written out when AISTACK_FAULT_MATRIX names a file.
_SEEN: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_matrix() -> Iterator[None]:
    yield
    path = os.environ.get("AISTACK_FAULT_MATRIX")
    if path:
        with open(path, "w") as out:
            json.dump(_SEEN, out, indent=2)


# The client's view, checked.


def check_envelope(seen: Seen, client: Client, fault: Fault) -> None:
    assert seen.status == fault.status, seen
    assert seen.header(b"content-type") == [b"application/json"]
    error = json.loads(seen.body)["error"]
    assert (error["type"], error["code"]) == (fault.kind, fault.kind)
    assert error["provider"] == "qwen3-tts"
    assert error["param"] is None
    assert error["message"]
    if fault.status == 503:
        assert seen.header(b"retry-after")
    assert seen.complete
    assert client.closed_cleanly


def check_truncated(seen: Seen, client: Client) -> None:
    """After the gateway committed to a 200, the client must never see a clean end."""
    assert seen.status in (None, 200), seen
    assert not client.closed_cleanly, "a broken response ended like a whole one"
    if seen.status is not None:
        assert not seen.complete, "the framing says whole, but the upstream broke"
        if not seen.chunked:
            assert seen.header(b"content-length") == [b"%d" % (2 * MiB)]


def check_client(fault: Fault, behaviour: str, client: Client) -> None:
    seen = parse(bytes(client.received))
    if behaviour == "aborts_before_headers":
        assert client.aborted_at is not None
        assert client.received == b"", "the client left before any answer"
        return
    left = client.aborted_at is not None
    if fault.expect == "envelope":
        # A small envelope arrives whole before a mid-body-aborting client could leave.
        assert not left
        check_envelope(seen, client, fault)
    elif fault.expect == "verbatim":
        assert seen.status == 500
        assert seen.reason == b"Upstream Exploded"
        assert seen.header(b"x-upstream-error") == [b"yes"]
        assert seen.header(b"content-length") == [b"%d" % ERROR_BODY]
        if behaviour == "aborts_mid_body":
            assert left
            assert ABORT_AFTER <= len(seen.body) < ERROR_BODY
        else:
            assert seen.complete
            assert seen.body == pattern(ERROR_BODY)
            assert client.closed_cleanly
    elif behaviour == "aborts_mid_body" and left:
        assert seen.status == 200
        assert not seen.complete
    else:
        check_truncated(seen, client)


# The matrix.


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def target_for(fault: Fault, behaviour: str, ident: str) -> str:
    query = fault.query
    if behaviour == "aborts_before_headers" and "delay=" not in query:
        query += f"&delay={HOLD}"
    return f"/v1/audio/stream?{query}&id={ident}"


@pytest.mark.parametrize("behaviour", CLIENTS)
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
@twisted_test
async def test_fault_matrix_cell(
    upstream: UpstreamProcess,
    gateways: Callable[[str], Gateway],
    fault: Fault,
    behaviour: str,
    refused_upstream: str,
) -> None:
    """One cell: slot released once, upstream connection closed, nothing unhandled logged,
    the client sees the contract's answer (or, after the gateway committed to a 200, a
    connection that is not ended cleanly)."""
    calls_before = set(reactor.getDelayedCalls())
    view = UpstreamView(upstream)
    gateway = gateways(upstream.url if fault.reaches_upstream else refused_upstream)
    ident = new_id()
    with LogCapture() as logs:
        client = await gateway.connect(post(target_for(fault, behaviour, ident)), behaviour)
        if behaviour == "aborts_before_headers":
            if fault.reaches_upstream:
                await until(
                    lambda: view.first(ident, {"START"}) is not None,
                    "the upstream to have the request",
                    timeout=PATIENCE,
                )
                client.abort()
            elif gateway.agent.calls:
                client.abort()
            else:
                gateway.agent.on_call = client.abort
        await until(lambda: client.reason is not None, "the client's end", timeout=PATIENCE)
        await until(gateway.slot_free, "the slot to be back", timeout=PATIENCE)

        # The upstream connection: closed by the gateway itself unless the response was whole
        # (then the pool may keep it), and promptly when it was the client that left.
        pooled_ok = fault.expect == "verbatim" and client.aborted_at is None
        if fault.reaches_upstream:
            assert view.first(ident, {"START"}) is not None
            if not pooled_ok:
                await until(
                    lambda: not view.open_now(),
                    "the upstream connection to close",
                    timeout=PATIENCE,
                )
            if client.aborted_at is not None:
                # The gateway hung up on the upstream before it finished or broke on its own.
                ended = view.first(ident, {"CLOSED", "DONE", "FAULT"})
                assert ended is not None
                assert ended.kind == "CLOSED", view.events()
                assert view.disconnected_at(), "no upstream connection was closed"
                assert max(view.disconnected_at()) - client.aborted_at < CLOSE_WITHIN
            if behaviour == "aborts_before_headers":
                assert view.first(ident, {"HEADERS"}) is None, view.events()
        else:
            assert view.opened() == []

        await gateway.close()
        await until(lambda: not view.open_now(), "the pool to close", timeout=PATIENCE)
        # Late double releases, and Deferreds garbage-collected with an unhandled failure.
        gc.collect()
    _SEEN.setdefault(fault.name, {})[behaviour] = describe(client)

    assert (gateway.semaphore.acquired, gateway.semaphore.released) == (1, 1)
    assert gateway.semaphore.over_released == 0
    assert gateway.semaphore.tokens == gateway.semaphore.limit
    assert not logs.failures(), [e.get("log_format") for e in logs.failures()]
    access = logs.access()
    assert len(access) == 1, access
    assert not new_delayed_calls(calls_before), "timers left behind"
    check_client(fault, behaviour, client)
