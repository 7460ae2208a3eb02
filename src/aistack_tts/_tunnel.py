"""WebSocket passthrough: a slot-guarded byte tunnel for ``Upgrade: websocket`` requests.

The gateway never parses or changes WebSocket messages (it follows frame headers only, to end
an idle session with a close frame between frames). It takes the GPU slot, opens a plain
TCP (or TLS) connection to the upstream, writes the client's handshake itself and reads the
upstream's answer head. A ``101`` goes to the client byte for byte and the client's connection
is taken from twisted.web's channel: from then on bytes are relayed unchanged both ways, each
side registered as the push producer of the other, so a slow reader on either end pauses the
other end's socket instead of filling the gateway's memory. Any other answer is relayed as an
HTTP response (status, reason, end-to-end headers, body), like a proxied call.

States (``Phase``): ``connecting`` → ``handshake`` (request written, waiting for the head) →
``open`` (after a 101) or ``relaying`` (another status, its body going to the client) →
``done``. Every way out goes through ``_finish`` and so ``CallRecord.finish``, the only place
that releases the slot.

This module is the session, which decides; the step below it has the parts it moves bytes
with: ``aistack_tts._tunnel_head`` (the endpoint, the answer head and its body's decoder) and
``aistack_tts._tunnel_sides`` (the two connections, their producers, the hand-over).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss
from twisted.web.server import Request
from zope.interface import implementer

from ._call import CallRecord
from ._context import CallContext, IInFlightCall
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
from ._headers import websocket_handshake
from ._outcome import Outcome, cut_outcome
from ._protocol import RETRY_UNAVAILABLE_S
from ._slot import SlotHold
from ._tunnel_head import (
    AnswerHead,
    BadAnswer,
    BodyDecoder,
    TunnelTarget,
    body_decoder,
    head_for_client,
    parse_head,
    split_head,
    start_response,
)
from ._tunnel_sides import (
    ClientProtocol,
    Frames,
    Side,
    UpstreamFactory,
    UpstreamProtocol,
    Valve,
    abort_client,
    couple,
    take_over,
)
from ._watchdog import Watchdog

_log = Logger()


class Phase(StrEnum):
    """Where a WebSocket session is."""

    CONNECTING = "connecting"
    HANDSHAKE = "handshake"
    OPEN = "open"
    RELAYING = "relaying"
    DONE = "done"


@implementer(IInFlightCall)
class WebSocketTunnel:
    """One WebSocket session, from slot taken to slot released, on every path exactly once."""

    def __init__(
        self, context: CallContext, request: Request, hold: SlotHold, target: TunnelTarget
    ) -> None:
        self._context = context
        self._request = request
        self._clock = context.clock
        self._record = CallRecord(context, request, hold, self, target.url)
        self._state = Phase.CONNECTING
        self._watchdog = Watchdog(self._clock, context.idle_timeout, self._stalled)
        #: Set when the gateway cuts the session short before the answer: what the waiting
        #: client is told.
        self._cut_short: GatewayError | None = None
        # What the router waits on. Fired only once an HTTP answer is finished; on the abort
        # paths (and after a 101) it stays pending and the router cancels it when the
        # connection drops.
        self.done: Deferred[None] = Deferred(lambda _: self._client_left())
        self._target = target
        self._timed_out = False
        self._connecting: Deferred[IProtocol] | None = None
        self._upstream_protocol: UpstreamProtocol | None = None
        self._buffer = b""
        self._decoder: BodyDecoder | None = None
        self._relay_valve: Valve | None = None
        self.client = Side("client")
        self.upstream = Side("upstream")
        #: Where frames end in what was relayed each way (for the idle close frame), and who
        #: sent the first close frame.
        self._frames = Frames()
        self.bytes_out = 0
        self.bytes_in = 0

    def _closed_by(self, dropped: str) -> str:
        """The outcome for a session whose ``dropped`` side ended its TCP connection first."""
        outcome, self._record.cause = self._frames.closed_by(dropped)
        return outcome

    def start(self) -> Deferred[None]:
        """Connect to the upstream; the returned Deferred fires when an HTTP answer is done."""
        self._request.notifyFinish().addErrback(lambda _: self._client_left())
        self._watchdog.touch("upstream")
        connecting = self._target.endpoint.connect(
            UpstreamFactory(self._upstream_data, self._upstream_lost)
        )
        self._connecting = connecting
        connecting.addCallbacks(self._connected, self._connect_failed)
        connecting.addErrback(self._unexpected)
        return self.done

    @property
    def state(self) -> Phase:
        """Where the session is."""
        return self._state

    # Before the answer.

    def _connected(self, protocol: IProtocol) -> None:
        self._connecting = None
        # The endpoint (TLS-wrapped or not) hands back the protocol our factory built.
        assert isinstance(protocol, UpstreamProtocol)
        assert protocol.transport is not None
        if self._state is not Phase.CONNECTING:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._state = Phase.HANDSHAKE
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
        if self._state is not Phase.CONNECTING:
            return  # we cancelled it: the client left
        self._watchdog.stop()
        error = self._cut_short or error_for_upstream_failure(
            failure, timed_out=self._timed_out, retry_after=RETRY_UNAVAILABLE_S
        )
        if self._cut_short is None:
            self._record.cause = failure_cause(
                failure,
                timed_out=self._timed_out,
                idle_timeout=self._context.idle_timeout,
                connect_timeout=self._context.connect_timeout,
            )
        self._answer_with(error)

    def _upstream_data(self, protocol: UpstreamProtocol, data: bytes) -> None:
        if protocol is not self._upstream_protocol or self._state is Phase.DONE:
            return
        if self._state is Phase.OPEN:
            self.bytes_out += len(data)
            self._watchdog.touch("upstream")
            self._frames.to_client_feed(data)
            self.client.transport.write(data)
        elif self._state is Phase.RELAYING:
            self._watchdog.touch("upstream")
            self._decode(data)
        else:
            self._watchdog.touch("upstream")
            self._buffer += data
            self._read_head()

    def _read_head(self) -> None:
        while self._state is Phase.HANDSHAKE:
            try:
                split = split_head(self._buffer)
                if split is None:
                    return
                raw, self._buffer = split
                head = parse_head(raw)
                self._record.provider = QWEN3_TTS
            except BadAnswer as e:
                self.upstream.close(self._clock, abort=True)
                self._answer_with(UpstreamError(describe(e)))
                return
            if 100 <= head.status < 200 and head.status != 101:
                continue  # an interim answer (100 Continue, 103): the real one follows
            waited = self._clock.seconds() - self._record.started
            self._context.metrics.upstream_headers.observe(waited)
            if head.status == 101:
                self._open(head)
            else:
                self._relay(head)

    # After a 101: the tunnel.

    def _open(self, head: AnswerHead) -> None:
        request = self._request
        client = ClientProtocol(
            self._client_data, self._client_lost, request.channel.connectionLost
        )
        transport, early = take_over(request, client)
        self._state = Phase.OPEN
        self._record.status = head.status
        self.client.transport = transport
        self._watchdog.stop()
        self._watchdog = Watchdog(self._clock, self._context.ws_idle_timeout, self._idle)
        upstream = self.upstream.transport
        couple(self.client, self.upstream, self._touch)
        rest, self._buffer = self._buffer, b""
        self.bytes_out += len(rest)
        self._frames.to_client_feed(rest)
        transport.write(head_for_client(head, request) + rest)
        if early:
            self.bytes_in += len(early)
            self._frames.to_upstream_feed(early)
            upstream.write(early)
        # The channel may have paused reading while it held bytes back.
        if self.upstream.producer is not None and not self.upstream.producer.paused:
            transport.resumeProducing()
        self._watchdog.touch()

    def _touch(self) -> None:
        self._watchdog.touch()

    def _client_data(self, data: bytes) -> None:
        if self._state is not Phase.OPEN:
            return
        self.bytes_in += len(data)
        self._watchdog.touch("client")
        self._frames.to_upstream_feed(data)
        self.upstream.transport.write(data)

    def _idle(self, kind: str) -> None:
        if self._state is not Phase.OPEN:
            return
        self._frames.say_goodbye(self.client, self.upstream)
        self._record.cause = (
            f"--ws-idle-timeout: no byte either way for {self._context.ws_idle_timeout:g} s"
        )
        self._end(Outcome.WS_IDLE, abort=False)

    def _end(self, outcome: str, *, abort: bool) -> None:
        """End an open session: close both connections (a closed one is left alone)."""
        self.client.close(self._clock, abort=abort)
        self.upstream.close(self._clock, abort=abort)
        self._finish(outcome, fired=False)

    # Another answer: relayed as an HTTP response.

    def _relay(self, head: AnswerHead) -> None:
        self._record.status = head.status
        request = self._request
        try:
            decoder = body_decoder(head, self._relay_data, self._relay_end)
        except BadAnswer as e:
            self.upstream.close(self._clock, abort=True)
            self._answer_with(UpstreamError(describe(e)))
            return
        self._state = Phase.RELAYING
        start_response(request, head, decoder)
        if decoder is None:
            self._relay_end(b"")
            return
        self._decoder = decoder
        self._relay_valve = Valve(self.upstream, self._touch)
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
        if self._state is not Phase.RELAYING:
            return
        if self._relay_valve is not None:
            self._request.unregisterProducer()
        # The connection carried a handshake that was refused: it is not reused.
        self.upstream.close(self._clock, abort=False)
        self._record.cause = f"the upstream answered the handshake with {self._record.status}"
        self._finish(Outcome.WS_REJECTED, then=self._request.finish)

    def _relay_broken(self, why: str) -> None:
        # Truth after headers: a truncated body must never end like a whole one.
        _log.info(
            "upstream failed mid-body for {path}: {why}",
            path=self._request.uri.decode("latin-1"),
            why=why,
        )
        self.upstream.close(self._clock, abort=True)
        abort_client(self.client, self._request, self._clock)
        self._record.cause = why
        self._finish(Outcome.UPSTREAM_ERROR_MID_BODY, fired=False)

    # Either side goes, or time runs out.

    def _upstream_lost(self, protocol: UpstreamProtocol, reason: Failure) -> None:
        if protocol is not self._upstream_protocol:
            return
        self.upstream.gone()
        if self._state is Phase.HANDSHAKE:
            self._answer_with(UpstreamError(f"ResponseNeverReceived: {describe(reason.value)}"))
        elif self._state is Phase.RELAYING:
            assert self._decoder is not None
            try:
                self._decoder.noMoreData()
            except PotentialDataLoss:
                self._relay_end(b"")  # a body delimited by the end of the connection
            except Exception as e:
                self._relay_broken(describe(e))
        elif self._state is Phase.OPEN:
            self._end(self._closed_by("upstream"), abort=False)

    def _client_lost(self, reason: Failure) -> None:
        """The client's connection ended after the 101."""
        self.client.gone()
        if self._state is Phase.OPEN:
            self._end(self._closed_by("client"), abort=False)

    def _client_left(self) -> None:
        """The client went away (or Klein gave up on it) before the tunnel opened."""
        if self._state is Phase.CONNECTING:
            self._finish(Outcome.CLIENT_ABORT, fired=False)
            if self._connecting is not None:
                self._connecting.cancel()
        elif self._state in (Phase.HANDSHAKE, Phase.RELAYING):
            self.upstream.close(self._clock, abort=True)
            self._finish(Outcome.CLIENT_ABORT, fired=False)

    def _stalled(self, kind: str) -> None:
        self._timed_out = True
        if self._state is Phase.CONNECTING:
            assert self._connecting is not None
            self._connecting.cancel()  # _connect_failed answers 504
        elif self._state is Phase.HANDSHAKE:
            self.upstream.close(self._clock, abort=True)
            self._answer_with(
                UpstreamTimeout("the Qwen3-TTS upstream did not answer the handshake in time")
            )
        elif self._state is Phase.RELAYING:
            self.upstream.close(self._clock, abort=True)
            abort_client(self.client, self._request, self._clock)
            self._record.cause = stall_cause(kind, self._context.idle_timeout)
            self._finish(Outcome.stalled(kind), fired=False)

    def cut_short(self, error: GatewayError) -> None:
        """End the session now (the gateway is shutting down): both sides closed, slot released.

        A client still waiting for the upstream's answer gets ``error``; a tunnel or an answer
        being relayed is cut.
        """
        if self._state is Phase.CONNECTING:
            assert self._connecting is not None
            self._cut_short = error
            self._connecting.cancel()  # _connect_failed answers with the error
        elif self._state is Phase.HANDSHAKE:
            self.upstream.close(self._clock, abort=True)
            self._answer_with(error)
        elif self._state is Phase.RELAYING:
            self.upstream.close(self._clock, abort=True)
            abort_client(self.client, self._request, self._clock)
            self._finish(cut_outcome(error.type), fired=False)
        elif self._state is Phase.OPEN:
            self._end(cut_outcome(error.type), abort=True)

    def _unexpected(self, failure: Failure) -> None:
        _log.failure("tunnelling {path} failed", failure, path=self._request.uri.decode("latin-1"))
        if self._state in (Phase.CONNECTING, Phase.HANDSHAKE):
            self.upstream.close(self._clock, abort=True)
            self._answer_with(GatewayError("the gateway failed; see its log"))
        elif self._state is not Phase.DONE:
            self.upstream.close(self._clock, abort=True)
            abort_client(self.client, self._request, self._clock)
            self._finish(Outcome.INTERNAL_ERROR, fired=False)

    # The ways out.

    def _answer_with(self, error: GatewayError) -> None:
        """End the session with the gateway's envelope for ``error``."""
        self._finish(error.type, then=self._record.answer_with(error))

    def _finish(
        self, outcome: str, *, then: Callable[[], None] | None = None, fired: bool = True
    ) -> None:
        """Stop the watchdog and finish the record.

        On the abort paths (``fired=False``) the router is let go when the connection drops.
        """
        if self._state is Phase.DONE:
            return
        self._state = Phase.DONE
        self._watchdog.stop()
        self._record.finish(outcome, bytes_out=self.bytes_out, then=then)
        if fired and not self.done.called:
            self.done.callback(None)
