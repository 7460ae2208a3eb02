"""WebSocket passthrough: a slot-guarded byte tunnel for ``Upgrade: websocket`` requests.

The gateway never parses or changes WebSocket messages (it follows frame headers only, to end
an idle session with a close frame between frames). It takes the GPU slot, opens a plain
TCP (or TLS) connection to the upstream, writes the client's handshake itself and reads the
upstream's answer head. A ``101`` goes to the client byte for byte and the client's connection
is taken from twisted.web's channel: from then on bytes are relayed unchanged both ways, each
side registered as the push producer of the other, so a slow reader on either end pauses the
other end's socket instead of filling the gateway's memory. Any other answer is relayed as an
HTTP response (status, reason, end-to-end headers, body), like a proxied call.

This module is the shell of the tunnel step: it turns what Twisted reports into events for
``tunnel._session_core`` (which decides, without I/O) and applies the effects it
returns. Every way out is the machine's one ``Finish``, applied as ``CallRecord.finish``, the
only place that releases the slot. The parts it moves bytes with are a step below:
``tunnel._head`` (the answer head) and ``tunnel._sides``
(the two connections, their producers, the hand-over).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from aistack_tts._config import Origin
from aistack_tts._errors import GatewayError, describe, error_for_upstream_failure, failure_cause
from aistack_tts.call._context import CallContext, IInFlightCall
from aistack_tts.call._events import (
    AbortClient,
    AnswerWith,
    Bug,
    ClientLeft,
    Cut,
    EffectLoop,
    Ending,
    Finish,
    Stalled,
)
from aistack_tts.call._record import CallRecord
from aistack_tts.call._slot import SlotHold
from aistack_tts.call._watchdog import Watchdog
from aistack_tts.wire._http import RETRY_UNAVAILABLE_S, websocket_handshake
from aistack_tts.wire._socket_state import unsent

from ._events import (
    CancelConnect,
    ClientData,
    ClientLost,
    CloseClient,
    CloseUpstream,
    Connected,
    ConnectFailed,
    Effect,
    Event,
    Open,
    SendHandshake,
    StartRelay,
    UpstreamData,
    UpstreamLost,
    WriteClient,
    WriteUpstream,
)
from ._head import head_for_client, start_response
from ._session_core import Phase, TunnelMachine
from ._sides import (
    ClientProtocol,
    Side,
    UpstreamFactory,
    UpstreamProtocol,
    Valve,
    abort_client,
    couple,
    take_over,
)

_log = Logger()


@implementer(IInFlightCall)
class WebSocketTunnel:
    """One WebSocket session, from slot taken to slot released, on every path exactly once."""

    def __init__(
        self,
        context: CallContext,
        request: Request,
        hold: SlotHold,
        origin: Origin,
        endpoint: IStreamClientEndpoint,
    ) -> None:
        self._context = context
        self._request = request
        self._clock = context.clock
        #: The upstream (its ``Host``) and the endpoint to it (TLS for https) made from it.
        self._origin = origin
        self._endpoint = endpoint
        self._record = CallRecord(context, request, hold, self, origin.url)
        self._machine = TunnelMachine(context.idle_timeout, context.ws_idle_timeout)
        self._loop: EffectLoop[Event, Effect] = EffectLoop(self._machine.handle, self._apply)
        self._watchdog = Watchdog(self._clock, context.idle_timeout, self._stalled)
        self._connecting: Deferred[IProtocol] | None = None
        self._upstream_protocol: UpstreamProtocol | None = None
        self._relay_valve: Valve | None = None
        #: What writes the envelope of the machine's last ``AnswerWith``.
        self._envelope: Callable[[], None] | None = None
        self.client = Side("client")
        self.upstream = Side("upstream")
        # What the router waits on. Fired only once an HTTP answer is finished; on the abort
        # paths (and after a 101) it stays pending and the router cancels it when the
        # connection drops.
        self.done: Deferred[None] = Deferred(lambda _: self._client_left())

    @property
    def state(self) -> Phase:
        """Where the session is."""
        return self._machine.phase

    @property
    def bytes_out(self) -> int:
        """Bytes relayed to the client: after a 101 the tunnel's, else the answer's body."""
        return self._machine.bytes_out

    @property
    def bytes_in(self) -> int:
        """Bytes relayed from the client to the upstream after the 101."""
        return self._machine.bytes_in

    def start(self) -> Deferred[None]:
        """Connect to the upstream; the returned Deferred fires when an HTTP answer is done."""
        self._request.notifyFinish().addErrback(lambda _: self._client_left())
        self._watchdog.touch("upstream")
        connecting = self._endpoint.connect(
            UpstreamFactory(self._upstream_data, self._upstream_lost)
        )
        self._connecting = connecting
        connecting.addCallbacks(self._connected, self._connect_failed)
        connecting.addErrback(self._unexpected)
        return self.done

    def cut_short(self, error: GatewayError) -> None:
        """End the session now (the gateway is shutting down): both sides closed, slot released.

        A client still waiting for the upstream's answer gets ``error``; a tunnel or an answer
        being relayed is cut.
        """
        self._feed(Cut(error))

    # What Twisted reports, as events.

    def _connected(self, protocol: IProtocol) -> None:
        self._connecting = None
        # The endpoint (TLS-wrapped or not) hands back the protocol our factory built.
        assert isinstance(protocol, UpstreamProtocol)
        assert protocol.transport is not None
        if self._machine.phase is not Phase.CONNECTING:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._upstream_protocol = protocol
        self.upstream.transport = protocol.transport
        self._feed(Connected())

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        timed_out = self._machine.timed_out
        error = error_for_upstream_failure(
            failure, timed_out=timed_out, retry_after=RETRY_UNAVAILABLE_S
        )
        cause = failure_cause(
            failure,
            timed_out=timed_out,
            idle_timeout=self._context.idle_timeout,
            connect_timeout=self._context.connect_timeout,
        )
        self._feed(ConnectFailed(error, cause))

    def _upstream_data(self, protocol: UpstreamProtocol, data: bytes) -> None:
        if protocol is not self._upstream_protocol or self._machine.phase is Phase.DONE:
            return
        self._watchdog.touch("upstream")
        self._feed(UpstreamData(data))

    def _client_data(self, data: bytes) -> None:
        if self._machine.phase is Phase.OPEN:
            self._watchdog.touch("client")
        self._feed(ClientData(data))

    def _upstream_lost(self, protocol: UpstreamProtocol, reason: Failure) -> None:
        if protocol is not self._upstream_protocol:
            return
        self.upstream.gone()
        self._feed(UpstreamLost(describe(reason.value), clean=bool(reason.check(ConnectionDone))))

    def _client_lost(self, reason: Failure) -> None:
        """The client's connection ended after the 101."""
        self.client.gone()
        # The upstream's valve is paused while its send buffer is full: it is not reading.
        to_upstream = self.upstream.producer
        self._feed(ClientLost(stuck=to_upstream is not None and to_upstream.paused))

    def _client_left(self) -> None:
        """The client went away (or the router gave up on it) before the tunnel opened."""
        self._feed(ClientLeft())

    def _stalled(self, kind: str) -> None:
        self._feed(Stalled(kind))

    def _unexpected(self, failure: Failure) -> None:
        _log.failure("tunnelling {path} failed", failure, path=self._request.uri.decode("latin-1"))
        self._feed(Bug(describe(failure.value)))

    # The effects, applied in order.

    def _feed(self, event: Event) -> None:
        # Closing or aborting a side may report it lost at once: the loop feeds that once the
        # effects before it are all applied.
        self._loop.feed(event)

    def _apply(self, effect: Effect) -> None:
        request = self._request
        match effect:
            case SendHandshake():
                self.upstream.transport.write(
                    websocket_handshake(
                        request.method, request.uri, self._origin.host, request.requestHeaders
                    )
                )
            case CancelConnect():
                if self._connecting is not None:
                    self._connecting.cancel()
            case Open(head, rest):
                self._open(head_for_client(head, request) + rest, head.status)
            case StartRelay(head, chunked, body):
                self._record.answered(head.status)
                start_response(request, head, chunked=chunked)
                if body:
                    self._relay_valve = Valve(self.upstream, self._touch)
                    request.registerProducer(self._relay_valve, True)
            case WriteClient(data, relayed):
                if relayed:
                    request.write(data)
                elif self.client.open:
                    self.client.transport.write(data)
            case WriteUpstream(data):
                if self.upstream.open:
                    self.upstream.transport.write(data)
            case CloseUpstream(abort):
                self.upstream.close(self._clock, abort=abort)
            case CloseClient(abort):
                self.client.close(self._clock, abort=abort)
            case AbortClient():
                abort_client(self.client, request, self._clock)
            case AnswerWith(error):
                self._envelope = self._record.answer_with(error)
            case Finish():
                self._finish(effect)

    def _touch(self) -> None:
        # A side's producer may resume after the session ended: no timer is armed again.
        if self._machine.phase is not Phase.DONE:
            self._watchdog.touch()

    def _client_slow(self) -> None:
        # The client's send buffer is full: from now on its reading is what counts.
        if self._machine.phase is not Phase.DONE:
            self._watchdog.touch("client")

    def _open(self, head: bytes, status: int) -> None:
        """A 101: take the client's connection from twisted.web and couple both sides."""
        request = self._request
        self._record.answered(status)
        client = ClientProtocol(
            self._client_data, self._client_lost, request.channel.connectionLost
        )
        transport, early = take_over(request, client)
        self.client.transport = transport
        self._watchdog.stop()
        # A client reading what it was sent is active, however long its buffers take.
        self._watchdog = Watchdog(
            self._clock,
            self._context.ws_idle_timeout,
            self._stalled,
            unsent=lambda: unsent(transport),
        )
        couple(
            self.client,
            self.upstream,
            self._touch,
            clock=self._clock,
            client_slow=self._client_slow,
        )
        transport.write(head)
        if early:
            self._feed(ClientData(early))  # fed once the Open is applied
        # The channel may have paused reading while it held bytes back.
        if self.upstream.producer is not None and not self.upstream.producer.paused:
            transport.resumeProducing()
        self._watchdog.touch()

    def _finish(self, finish: Finish) -> None:
        """Stop the watchdog and finish the record: the slot is released here, once."""
        self._watchdog.stop()
        then = None
        if finish.ending is Ending.ENVELOPE:
            then = self._envelope
        elif finish.ending is Ending.BODY:
            then = self._end_relay
        bytes_out = self._machine.bytes_out
        self._record.finish(finish.outcome, bytes_out=bytes_out, cause=finish.cause, then=then)
        # The router's Deferred fires once an HTTP answer is ended here (an envelope, a refusal
        # relayed whole); after a 101, and on the abort paths, it is let go when the client's
        # connection drops.
        if finish.ending is not Ending.NONE and not self.done.called:
            self.done.callback(None)

    def _end_relay(self) -> None:
        if self._relay_valve is not None:
            self._request.unregisterProducer()
        self._request.finish()
