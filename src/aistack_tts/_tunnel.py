"""WebSocket passthrough: a slot-guarded byte tunnel for ``Upgrade: websocket`` requests.

The gateway never parses or changes WebSocket messages (it follows frame headers only, to end
an idle session with a close frame between frames). It takes the GPU slot, opens a plain
TCP (or TLS) connection to the upstream, writes the client's handshake itself and reads the
upstream's answer head. A ``101`` goes to the client byte for byte and the client's connection
is taken from twisted.web's channel: from then on bytes are relayed unchanged both ways, each
side registered as the push producer of the other, so a slow reader on either end pauses the
other end's socket instead of filling the gateway's memory. Any other answer is relayed as an
HTTP response (status, reason, end-to-end headers, body), like a proxied call.

States: ``connecting`` → ``handshake`` (request written, waiting for the head) → ``open``
(after a 101) or ``relaying`` (another status, its body going to the client) → ``done``. Every
way out goes through L{ProxiedCall._finish}, the only place that releases the slot.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import (
    HTTPChannel,
    PotentialDataLoss,
    _ChunkedTransferDecoder,
    _IdentityTransferDecoder,
)
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from zope.interface import implementer

from ._accesslog import REQUEST_ID
from ._call import ProxiedCall
from ._context import CallContext
from ._errors import (
    QWEN3_TTS,
    GatewayError,
    UpstreamError,
    UpstreamTimeout,
    describe,
    error_for_upstream_failure,
    failure_cause,
    stall_cause,
)
from ._frames import IDLE_CLOSE, FrameBoundary, close_frame
from ._headers import client_response_headers, header_tokens, wants_websocket, websocket_handshake
from ._protocol import CLIENT_SEND_BUFFER, NO_BODY_STATUS, RETRY_UNAVAILABLE_S
from ._slot import SlotHold
from ._upstream import Watchdog

#: The most the upstream's answer head (status line and headers) may take; a real one is a few
#: hundred bytes, so more means a broken upstream, and the buffer stays bounded.
MAX_HEAD_BYTES = 64 * 1024

#: How long a side the gateway closed politely may take to flush what it was still sending
#: (the peer's last frames, a close frame) before its connection is cut.
CLOSE_GRACE_S = 5.0

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

_log = Logger()


def is_websocket_request(request: Request) -> bool:
    """Whether ``request`` is a WebSocket handshake the gateway tunnels.

    Only HTTP/1.1 can upgrade (an HTTP/2 stream has no connection of its own to hand over).
    """
    return request.clientproto == b"HTTP/1.1" and wants_websocket(request.requestHeaders)


# --- the upstream: where to connect, and its answer ---------------------------------------


@frozen
class TunnelTarget:
    """Where tunnels go: a stream endpoint to the upstream and the ``Host`` it answers to."""

    endpoint: IStreamClientEndpoint
    host: bytes
    #: The upstream's URL (for the access log).
    url: str = ""

    @classmethod
    def for_upstream(cls, reactor: Any, upstream: str, *, connect_timeout: float) -> TunnelTarget:
        """A plain TCP endpoint (TLS for ``https``) to the upstream URL's host and port."""
        parts = urlsplit(upstream)
        hostname = parts.hostname or ""
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, hostname, port, timeout=connect_timeout
        )
        if secure:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(hostname), endpoint)
        return cls(endpoint=endpoint, host=parts.netloc.encode("ascii"), url=upstream)


class BadAnswer(ValueError):
    """The upstream's answer to a WebSocket handshake is not a usable HTTP response head."""


@frozen
class AnswerHead:
    """The upstream's status line and headers, and the bytes they came as."""

    raw: bytes
    status: int
    reason: bytes
    headers: Headers = field(eq=False)


def split_head(buffer: bytes) -> tuple[bytes, bytes] | None:
    """``(head, rest)`` once ``buffer`` holds a whole head, else ``None``.

    Raises L{BadAnswer} when the head is, or would be, longer than L{MAX_HEAD_BYTES}.
    """
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
    if end < 0:
        if len(buffer) >= MAX_HEAD_BYTES:
            raise BadAnswer(f"the answer head is longer than {MAX_HEAD_BYTES} bytes")
        return None
    return buffer[: end + 4], buffer[end + 4 :]


def parse_head(raw: bytes) -> AnswerHead:
    """Parse a response head (status line, header lines, blank line); raise L{BadAnswer}."""
    status_line, *lines = raw[:-4].split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise BadAnswer(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers = Headers()
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise BadAnswer(f"malformed header line: {line[:80]!r}")
        headers.addRawHeader(name, value.strip(b" \t"))
    return AnswerHead(raw, int(match.group(1)), match.group(2) or b"", headers)


def with_request_id(head: AnswerHead, request_id: bytes) -> bytes:
    """``head``'s bytes, with ``X-Request-Id`` added unless the upstream sent its own."""
    if head.headers.hasHeader(REQUEST_ID):
        return head.raw
    return head.raw[:-2] + REQUEST_ID + b": " + request_id + b"\r\n\r\n"


_Decoder = _IdentityTransferDecoder | _ChunkedTransferDecoder


def body_decoder(
    head: AnswerHead, on_data: Callable[[bytes], None], on_end: Callable[[bytes], None]
) -> _Decoder | None:
    """The decoder for the body that follows ``head``; ``None`` when it has none.

    Chunked, ``Content-Length``, or (neither) everything until the upstream closes.
    """
    if head.status in NO_BODY_STATUS:
        return None
    codings = header_tokens(head.headers, b"transfer-encoding")
    if codings:
        if codings[-1] == b"chunked":
            return _ChunkedTransferDecoder(on_data, on_end)
        return _IdentityTransferDecoder(None, on_data, on_end)
    lengths = {v.strip() for v in header_tokens(head.headers, b"content-length")}
    if not lengths:
        return _IdentityTransferDecoder(None, on_data, on_end)
    length = lengths.pop()
    if lengths or not length.isdigit():
        raise BadAnswer("the answer has an invalid Content-Length")
    if int(length) == 0:
        return None
    return _IdentityTransferDecoder(int(length), on_data, on_end)


# --- the two connections ------------------------------------------------------------------


@define
class _Side:
    """One connection of a tunnel: its transport once known, and how it is being closed."""

    name: str
    transport: Any = None
    #: The producer registered with this side's transport (it pauses the other side).
    producer: _Valve | None = None
    closing: bool = False
    lost: bool = False
    _linger: IDelayedCall | None = None

    @property
    def open(self) -> bool:
        """Connected and not being closed."""
        return self.transport is not None and not self.closing and not self.lost

    def close(self, clock: IReactorTime, *, abort: bool) -> None:
        """Close this connection: flush politely (cut after a grace period) or abort now."""
        if self.transport is None or self.lost:
            return
        if self.producer is not None:
            # A transport never closes while a streaming producer is registered with it.
            self.producer = None
            self.transport.unregisterProducer()
        if abort:
            self.closing = True
            self.transport.abortConnection()
        elif not self.closing:
            self.closing = True
            self.transport.loseConnection()
            self._linger = clock.callLater(CLOSE_GRACE_S, self.transport.abortConnection)

    def gone(self) -> None:
        """The connection ended."""
        self.lost = True
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None


@implementer(IPushProducer)
class _Valve:
    """Stops reading from ``side`` while the other side's send buffer is full.

    Registered with the *other* side's transport: that transport pauses it when its buffer
    fills and resumes it when the buffer drains, so unread bytes wait in the kernel's TCP
    window of ``side``, not in the gateway.
    """

    def __init__(self, side: _Side, on_resume: Callable[[], None]) -> None:
        self._side = side
        self._on_resume = on_resume
        self.paused = False

    def pauseProducing(self) -> None:
        """The other side is not keeping up: stop reading from ``side``."""
        self.paused = True
        if self._side.open:
            self._side.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The other side drained its buffer: read from ``side`` again."""
        self.paused = False
        self._on_resume()
        if self._side.open:
            self._side.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The other side's connection is going away.

        Nothing to do here: that connection's ``connectionLost``, which follows at once, ends
        the session.
        """


class _UpstreamProtocol(Protocol):
    def __init__(self, tunnel: WebSocketTunnel) -> None:
        self._tunnel = tunnel

    def dataReceived(self, data: bytes) -> None:
        self._tunnel._upstream_data(self, data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self._tunnel._upstream_lost(self, reason)


class _UpstreamFactory(Factory):
    noisy = False

    def __init__(self, tunnel: WebSocketTunnel) -> None:
        self._tunnel = tunnel

    def buildProtocol(self, addr: Any) -> _UpstreamProtocol:
        return _UpstreamProtocol(self._tunnel)


class _ClientProtocol(Protocol):
    """The client's connection once twisted.web's channel has handed it over."""

    def __init__(self, tunnel: WebSocketTunnel, channel_lost: Callable[[Failure], None]) -> None:
        self._tunnel = tunnel
        self._channel_lost = channel_lost

    def dataReceived(self, data: bytes) -> None:
        self._tunnel._client_data(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self._tunnel._client_lost(reason)
        # Let twisted.web end the request as it would have (notifyFinish, Klein's Deferred).
        self._channel_lost(reason)


def take_over(request: Request, protocol: _ClientProtocol) -> tuple[Any, bytes]:
    """Hand the client's connection from twisted.web's HTTP channel to ``protocol``.

    What Twisted's own WebSocket support does (the private
    ``HTTPChannel._protocolUpgradeForWebsockets``), spelled out so it works on every supported
    Twisted: the channel keeps its place as the transport's protocol but passes every byte and
    the end of the connection on. It had also registered itself as the transport's producer;
    that place is freed for the tunnel. Returns the transport and the bytes the client sent
    after its handshake, which the channel held back while the request was being handled.
    """
    channel = request.channel
    if not isinstance(channel, HTTPChannel):
        raise TypeError(f"cannot take over a {type(channel).__name__} connection")
    transport: Any = channel.transport
    transport.unregisterProducer()
    early = b"".join(channel._dataBuffer)
    channel._dataBuffer = []
    channel.dataReceived = protocol.dataReceived  # type: ignore[method-assign]
    channel.connectionLost = protocol.connectionLost  # type: ignore[method-assign]
    protocol.makeConnection(transport)  # type: ignore[no-untyped-call]
    return transport, early


# --- the session --------------------------------------------------------------------------


class WebSocketTunnel(ProxiedCall):
    """One WebSocket session, from slot taken to slot released, on every path exactly once."""

    def __init__(
        self, context: CallContext, request: Request, hold: SlotHold, target: TunnelTarget
    ) -> None:
        super().__init__(context, request, hold, self._stalled)
        self._target = target
        self._timed_out = False
        self._connecting: Deferred[IProtocol] | None = None
        self._upstream_protocol: _UpstreamProtocol | None = None
        self._buffer = b""
        self._decoder: _Decoder | None = None
        self._relay_valve: _Valve | None = None
        self.client = _Side("client")
        self.upstream = _Side("upstream")
        #: Where frames end in what was relayed each way (for the idle close frame).
        self._to_client = FrameBoundary()
        self._to_upstream = FrameBoundary()
        self.bytes_out = 0
        self.bytes_in = 0
        #: Who sent the first close frame: ``client`` or ``upstream``.
        self._closer: str | None = None

    def _bytes_out(self) -> int:
        return self.bytes_out

    def _upstream_url(self) -> str:
        return self._target.url

    def _to_client_feed(self, data: bytes) -> None:
        self._to_client.feed(data)
        if self._closer is None and self._to_client.closed:
            self._closer = "upstream"

    def _to_upstream_feed(self, data: bytes) -> None:
        self._to_upstream.feed(data)
        if self._closer is None and self._to_upstream.closed:
            self._closer = "client"

    def _closed_by(self, dropped: str) -> str:
        """The outcome for a session whose ``dropped`` side ended its TCP connection first.

        It is put down to the side that sent the first close frame, if one did.
        """
        closer = self._closer
        if closer is None:
            self._cause = f"the {dropped} closed the connection without a close frame"
            return f"ws_closed_by_{dropped}"
        frames = self._to_upstream if closer == "client" else self._to_client
        code = frames.close_code
        self._cause = f"the {closer} sent the first close frame (code {code or 'none'})"
        return f"ws_closed_by_{closer}"

    def start(self) -> Deferred[None]:
        """Connect to the upstream; the returned Deferred fires when an HTTP answer is done."""
        self._request.notifyFinish().addErrback(lambda _: self._client_left())
        self._context.in_flight.track(self)
        self._watchdog.touch("upstream")
        connecting = self._target.endpoint.connect(_UpstreamFactory(self))
        self._connecting = connecting
        connecting.addCallbacks(self._connected, self._connect_failed)
        connecting.addErrback(self._unexpected)
        return self.done

    @property
    def state(self) -> str:
        """``connecting``, ``handshake``, ``open``, ``relaying`` or ``done``."""
        return self._state

    # Before the answer.

    def _connected(self, protocol: IProtocol) -> None:
        self._connecting = None
        # The endpoint (TLS-wrapped or not) hands back the protocol our factory built.
        assert isinstance(protocol, _UpstreamProtocol)
        assert protocol.transport is not None
        if self._state != "connecting":
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._state = "handshake"
        self._upstream_protocol = protocol
        self.upstream.transport = protocol.transport
        request = self._request
        protocol.transport.write(
            websocket_handshake(
                request.method,
                request.uri,
                self._target.host,
                request.requestHeaders,
            )
        )

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self._state != "connecting":
            return  # we cancelled it: the client left
        self._watchdog.stop()
        error = self._cut_short or error_for_upstream_failure(
            failure, timed_out=self._timed_out, retry_after=RETRY_UNAVAILABLE_S
        )
        if self._cut_short is None:
            self._cause = failure_cause(
                failure,
                timed_out=self._timed_out,
                idle_timeout=self._context.idle_timeout,
                connect_timeout=self._context.connect_timeout,
            )
        self._answer_with(error)

    def _upstream_data(self, protocol: _UpstreamProtocol, data: bytes) -> None:
        if protocol is not self._upstream_protocol or self._state == "done":
            return
        if self._state == "open":
            self.bytes_out += len(data)
            self._watchdog.touch("upstream")
            self._to_client_feed(data)
            self.client.transport.write(data)
        elif self._state == "relaying":
            self._watchdog.touch("upstream")
            self._decode(data)
        else:
            self._watchdog.touch("upstream")
            self._buffer += data
            self._read_head()

    def _read_head(self) -> None:
        while self._state == "handshake":
            try:
                split = split_head(self._buffer)
                if split is None:
                    return
                raw, self._buffer = split
                head = parse_head(raw)
                self._provider = QWEN3_TTS
            except BadAnswer as e:
                self.upstream.close(self._clock, abort=True)
                self._answer_with(UpstreamError(describe(e)))
                return
            if 100 <= head.status < 200 and head.status != 101:
                continue  # an interim answer (100 Continue, 103): the real one follows
            self._context.metrics.upstream_headers.observe(self._clock.seconds() - self._started)
            if head.status == 101:
                self._open(head)
            else:
                self._relay(head)

    # After a 101: the tunnel.

    def _open(self, head: AnswerHead) -> None:
        request = self._request
        client = _ClientProtocol(self, request.channel.connectionLost)
        transport, early = take_over(request, client)
        self._state = "open"
        self._status = head.status
        self.client.transport = transport
        self._watchdog.stop()
        self._watchdog = Watchdog(self._clock, self._context.ws_idle_timeout, self._idle)
        upstream = self.upstream.transport
        for side in (transport, upstream):
            if hasattr(side, "bufferSize"):
                side.bufferSize = CLIENT_SEND_BUFFER
        self.client.producer = _Valve(self.upstream, self._touch)
        transport.registerProducer(self.client.producer, True)
        self.upstream.producer = _Valve(self.client, self._touch)
        upstream.registerProducer(self.upstream.producer, True)
        rest, self._buffer = self._buffer, b""
        self.bytes_out += len(rest)
        self._to_client_feed(rest)
        # The client's id comes back on the 101 too (or the upstream's own, if it set one).
        own = head.headers.getRawHeaders(REQUEST_ID)
        if own:
            request.responseHeaders.setRawHeaders(REQUEST_ID, own)
        ours = (request.responseHeaders.getRawHeaders(REQUEST_ID) or [b"-"])[0]
        transport.write(with_request_id(head, ours) + rest)
        if early:
            self.bytes_in += len(early)
            self._to_upstream_feed(early)
            upstream.write(early)
        # The channel may have paused reading while it held bytes back.
        if not self.upstream.producer.paused:
            transport.resumeProducing()
        self._watchdog.touch()

    def _touch(self) -> None:
        self._watchdog.touch()

    def _client_data(self, data: bytes) -> None:
        if self._state != "open":
            return
        self.bytes_in += len(data)
        self._watchdog.touch("client")
        self._to_upstream_feed(data)
        self.upstream.transport.write(data)

    def _idle(self, kind: str) -> None:
        if self._state != "open":
            return
        # Say goodbye in WebSocket terms (1001), so a side does not see an abnormal closure;
        # only between frames, so a side whose stream stopped mid-frame gets the TCP close only.
        code, reason = IDLE_CLOSE
        if self.client.open and self._to_client.at_boundary:
            self.client.transport.write(close_frame(code, reason, masked=False))
        if self.upstream.open and self._to_upstream.at_boundary:
            self.upstream.transport.write(close_frame(code, reason, masked=True))
        self._cause = (
            f"--ws-idle-timeout: no byte either way for {self._context.ws_idle_timeout:g} s"
        )
        self._end("ws_idle", abort=False)

    def _end(self, outcome: str, *, abort: bool) -> None:
        """End an open session: close both connections (a closed one is left alone)."""
        self.client.close(self._clock, abort=abort)
        self.upstream.close(self._clock, abort=abort)
        self._finish(outcome, fired=False)

    # Another answer: relayed as an HTTP response.

    def _relay(self, head: AnswerHead) -> None:
        self._status = head.status
        request = self._request
        try:
            decoder = body_decoder(head, self._relay_data, self._relay_end)
        except BadAnswer as e:
            self.upstream.close(self._clock, abort=True)
            self._answer_with(UpstreamError(describe(e)))
            return
        self._state = "relaying"
        request.setResponseCode(head.status, head.reason)
        client_response_headers(head.headers, request.responseHeaders)
        if isinstance(decoder, _ChunkedTransferDecoder):
            # twisted.web frames the body for the client itself.
            request.responseHeaders.removeHeader(b"content-length")
        if decoder is None:
            self._relay_end(b"")
            return
        self._decoder = decoder
        self._relay_valve = _Valve(self.upstream, self._touch)
        request.registerProducer(self._relay_valve, True)
        rest, self._buffer = self._buffer, b""
        if rest:
            self._decode(rest)

    def _decode(self, data: bytes) -> None:
        assert self._decoder is not None
        try:
            self._decoder.dataReceived(data)
        except Exception as e:  # a malformed chunked body
            self._relay_broken(describe(e))

    def _relay_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self._request.write(data)

    def _relay_end(self, extra: bytes) -> None:
        if self._state != "relaying":
            return
        if self._relay_valve is not None:
            self._request.unregisterProducer()
        # The connection carried a handshake that was refused: it is not reused.
        self.upstream.close(self._clock, abort=False)
        self._cause = f"the upstream answered the handshake with {self._status}"
        self._finish("ws_rejected", then=self._request.finish)

    def _relay_broken(self, why: str) -> None:
        # Truth after headers: a truncated body must never end like a whole one.
        _log.info(
            "upstream failed mid-body for {path}: {why}",
            path=self._request.uri.decode("latin-1"),
            why=why,
        )
        self.upstream.close(self._clock, abort=True)
        self._abort_client()
        self._cause = why
        self._finish("upstream_error_mid_body", fired=False)

    # Either side goes, or time runs out.

    def _upstream_lost(self, protocol: _UpstreamProtocol, reason: Failure) -> None:
        if protocol is not self._upstream_protocol:
            return
        self.upstream.gone()
        if self._state == "handshake":
            self._answer_with(UpstreamError(f"ResponseNeverReceived: {describe(reason.value)}"))
        elif self._state == "relaying":
            assert self._decoder is not None
            try:
                self._decoder.noMoreData()
            except PotentialDataLoss:
                self._relay_end(b"")  # a body delimited by the end of the connection
            except Exception as e:
                self._relay_broken(describe(e))
        elif self._state == "open":
            self._end(self._closed_by("upstream"), abort=False)

    def _client_lost(self, reason: Failure) -> None:
        """The client's connection ended after the 101."""
        self.client.gone()
        if self._state == "open":
            self._end(self._closed_by("client"), abort=False)

    def _client_left(self) -> None:
        """The client went away (or Klein gave up on it) before the tunnel opened."""
        if self._state == "connecting":
            self._finish("client_abort", fired=False)
            if self._connecting is not None:
                self._connecting.cancel()
        elif self._state in ("handshake", "relaying"):
            self.upstream.close(self._clock, abort=True)
            self._finish("client_abort", fired=False)

    def _stalled(self, kind: str) -> None:
        self._timed_out = True
        if self._state == "connecting":
            assert self._connecting is not None
            self._connecting.cancel()  # _connect_failed answers 504
        elif self._state == "handshake":
            self.upstream.close(self._clock, abort=True)
            self._answer_with(
                UpstreamTimeout("the Qwen3-TTS upstream did not answer the handshake in time")
            )
        elif self._state == "relaying":
            self.upstream.close(self._clock, abort=True)
            self._abort_client()
            self._cause = stall_cause(kind, self._context.idle_timeout)
            self._finish(f"{kind}_stalled", fired=False)

    def cut_short(self, error: GatewayError) -> None:
        """End the session now (the gateway is shutting down): both sides closed, slot released.

        A client still waiting for the upstream's answer gets ``error``; a tunnel or an answer
        being relayed is cut.
        """
        if self._state == "connecting":
            assert self._connecting is not None
            self._cut_short = error
            self._connecting.cancel()  # _connect_failed answers with the error
        elif self._state == "handshake":
            self.upstream.close(self._clock, abort=True)
            self._answer_with(error)
        elif self._state == "relaying":
            self.upstream.close(self._clock, abort=True)
            self._abort_client()
            self._finish(f"{error.type}_cut", fired=False)
        elif self._state == "open":
            self._end(f"{error.type}_cut", abort=True)

    def _unexpected(self, failure: Failure) -> None:
        _log.failure("tunnelling {path} failed", failure, path=self._request.uri.decode("latin-1"))
        if self._state in ("connecting", "handshake"):
            self.upstream.close(self._clock, abort=True)
            self._answer_with(GatewayError("the gateway failed; see its log"))
        elif self._state != "done":
            self.upstream.close(self._clock, abort=True)
            self._abort_client()
            self._finish("internal_error", fired=False)

    # The ways out.

    def _abort_client(self) -> None:
        if self.client.transport is not None:
            self.client.close(self._clock, abort=True)
            return
        transport: Any = self._request.transport
        if transport is not None:
            transport.abortConnection()
