"""The decisions of one WebSocket session, without I/O: events in, effects out (sans-IO).

The core of the tunnel step: ``tunnel._session`` is its shell, which turns what Twisted
reports (the connect, bytes from either side, either side's end, the watchdog, the drain's
cut) into ``Event`` values, hands them to ``TunnelMachine.handle`` and applies the ``Effect``
values it returns, in order (both are in ``tunnel._events``). No transport, no
clock, no Deferred: time arrives as ``Stalled``, failures arrive already classified
(``ConnectFailed``). The machine reads the upstream's answer, head and (when it is not a
101) body, with the HTTP client's own parser (``ResponseParser`` with ``upgrade=True``),
and follows frame boundaries both ways (for the idle close frame and to say who closed).

Phases: ``connecting`` → ``handshake`` (request written, waiting for the head) → ``open``
(after a 101) or ``relaying`` (another status, its body going to the client) → ``done``.
Exactly one ``Finish`` ends a session; after it the ends still owed (``RECEIVES``) have no
effect. ``RECEIVES`` says what each phase can be told; any other event is a bug of the
shell's: ignored in production, raised in strict mode (``call._events.Strictness``, on in the
tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from aistack_tts._errors import (
    GatewayError,
    UpstreamError,
    UpstreamTimeout,
    describe,
    internal_error,
    stall_cause,
)
from aistack_tts.call._events import (
    AbortClient,
    AnswerWith,
    Bug,
    ClientLeft,
    Cut,
    Ending,
    Finish,
    Stalled,
    strictness,
)
from aistack_tts.client._events import NEED_DATA, Data, EndOfMessage, Failed
from aistack_tts.client._head import Head
from aistack_tts.client._parser import ResponseParser
from aistack_tts.observe._outcome import Outcome, cut_outcome

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
from ._frames import IDLE_CLOSE, Frames, close_frame

NO_HANDSHAKE_ANSWER = "the Qwen3-TTS upstream did not answer the handshake in time"


class Phase(StrEnum):
    """Where a WebSocket session is."""

    CONNECTING = "connecting"
    HANDSHAKE = "handshake"
    OPEN = "open"
    RELAYING = "relaying"
    DONE = "done"


#: What each phase can be told. After the ``Finish``: the ends still owed (of the connect
#: attempt cancelled, of either side closed, of the request twisted.web still holds) and bytes
#: the upstream sent past the end of its answer.
RECEIVES: Mapping[Phase, tuple[type[Event], ...]] = {
    Phase.CONNECTING: (Connected, ConnectFailed, ClientLeft, Stalled, Cut, Bug),
    Phase.HANDSHAKE: (UpstreamData, UpstreamLost, ClientLeft, Stalled, Cut, Bug),
    Phase.OPEN: (UpstreamData, ClientData, UpstreamLost, ClientLost, Stalled, Cut, Bug),
    Phase.RELAYING: (UpstreamData, UpstreamLost, ClientLeft, Stalled, Cut, Bug),
    Phase.DONE: (ConnectFailed, UpstreamData, UpstreamLost, ClientLost, ClientLeft),
}


class TunnelMachine:
    """The state of one WebSocket session and what each event makes of it.

    ``strict``: raise on an event the phase cannot receive (default: ``call._events.STRICT``).
    """

    def __init__(
        self, idle_timeout: float, ws_idle_timeout: float, *, strict: bool | None = None
    ) -> None:
        self._idle_timeout = idle_timeout
        self._strict = strictness(strict)
        self._ws_idle_timeout = ws_idle_timeout
        self.phase = Phase.CONNECTING
        #: Whether the gateway itself cut the connect attempt short: a stall or a cut.
        self.timed_out = False
        self._cut: GatewayError | None = None
        #: Reads the upstream's answer: its head (interim ones too), then any other body.
        self._parser = ResponseParser(b"GET", upgrade=True)
        self._status: int | None = None
        self.frames = Frames()
        self.bytes_out = 0
        self.bytes_in = 0

    def handle(self, event: Event) -> list[Effect]:
        """What ``event`` changes: the effects for the shell to apply, in order."""
        if not isinstance(event, RECEIVES[self.phase]):
            return self._strict.unexpected("tunnel", self.phase, event)
        match self.phase:
            case Phase.CONNECTING:
                return self._connecting(event)
            case Phase.HANDSHAKE:
                return self._handshake(event)
            case Phase.OPEN:
                return self._open(event)
            case Phase.RELAYING:
                return self._relaying(event)
        return []

    # Before the connection.

    def _connecting(self, event: Event) -> list[Effect]:
        match event:
            case Connected():
                self.phase = Phase.HANDSHAKE
                return [SendHandshake()]
            case ConnectFailed(error, cause):
                if self._cut is not None:
                    return self._answer(self._cut, self._cut.message)
                return self._answer(error, cause)
            case ClientLeft():
                return [CancelConnect(), *self._finish(Outcome.CLIENT_ABORT, None)]
            case Stalled():
                self.timed_out = True
                return [CancelConnect()]  # ConnectFailed answers 504
            case Cut(error):
                self._cut = error
                return [CancelConnect()]  # ConnectFailed answers with the error
            case Bug():
                return [CloseUpstream(abort=True), *self._answer_bug()]
        return []

    # Waiting for the answer head.

    def _handshake(self, event: Event) -> list[Effect]:
        match event:
            case UpstreamData(data):
                if data:  # b"" would say the upstream closed (Twisted never delivers it)
                    self._parser.receive_data(data)
                return self._read_head()
            case UpstreamLost(why):
                error = UpstreamError(f"ResponseNeverReceived: {why}")
                return self._answer(error, error.message)
            case ClientLeft():
                return [CloseUpstream(abort=True), *self._left()]
            case Stalled():
                self.timed_out = True
                return [
                    CloseUpstream(abort=True),
                    *self._answer_error(UpstreamTimeout(NO_HANDSHAKE_ANSWER)),
                ]
            case Cut(error):
                return [CloseUpstream(abort=True), *self._answer_error(error)]
            case Bug():
                return [CloseUpstream(abort=True), *self._answer_bug()]
        return []

    def _read_head(self) -> list[Effect]:
        head = self._parser.next_event()  # interim answers (100, 103) are skipped
        if head is NEED_DATA:
            return []
        if isinstance(head, Failed):
            error = UpstreamError(describe(head.error))
            return [CloseUpstream(abort=True), *self._answer_error(error)]
        assert isinstance(head, Head)
        self._status = head.status
        if head.status == 101:
            return self._open_tunnel(head)
        return self._relay(head)

    # After a 101: the tunnel.

    def _open_tunnel(self, head: Head) -> list[Effect]:
        self.phase = Phase.OPEN
        rest = self._parser.rest()
        self.bytes_out += len(rest)
        self.frames.to_client_feed(rest)
        return [Open(head, rest)]

    def _open(self, event: Event) -> list[Effect]:
        match event:
            case UpstreamData(data):
                self.bytes_out += len(data)
                self.frames.to_client_feed(data)
                return [WriteClient(data)]
            case ClientData(data):
                self.bytes_in += len(data)
                self.frames.to_upstream_feed(data)
                return [WriteUpstream(data)]
            case UpstreamLost():
                return self._end(*self.frames.closed_by("upstream"), abort=False)
            case ClientLost(stuck):
                return self._end(*self.frames.closed_by("client"), abort=stuck)
            case Stalled():
                cause = f"--ws-idle-timeout: no byte either way for {self._ws_idle_timeout:g} s"
                return [*self._goodbyes(), *self._end(Outcome.WS_IDLE, cause, abort=False)]
            case Cut(error):
                return self._end(cut_outcome(error.type), None, abort=True)
            case Bug(why):
                return [
                    CloseUpstream(abort=True),
                    AbortClient(),
                    *self._finish(Outcome.INTERNAL_ERROR, why),
                ]
        return []

    def _goodbyes(self) -> list[Effect]:
        """A close frame (1001) to each side, where its stream is between two frames.

        Said in WebSocket terms, so a side does not see an abnormal closure; only between
        frames, so a side whose stream stopped mid-frame gets the TCP close only.
        """
        code, reason = IDLE_CLOSE
        said: list[Effect] = []
        if self.frames.to_client.at_boundary:
            said.append(WriteClient(close_frame(code, reason, masked=False)))
        if self.frames.to_upstream.at_boundary:
            said.append(WriteUpstream(close_frame(code, reason, masked=True)))
        return said

    def _end(self, outcome: str, cause: str | None, *, abort: bool) -> list[Effect]:
        """End an open session: close both connections (one already closed is left alone)."""
        return [
            CloseClient(abort=abort),
            CloseUpstream(abort=abort),
            *self._finish(outcome, cause),
        ]

    # Another answer: relayed as an HTTP response.

    def _relay(self, head: Head) -> list[Effect]:
        self.phase = Phase.RELAYING
        if head.length == 0:  # none, or a status that has none (204, 304)
            return [StartRelay(head, chunked=False, body=False), *self._relayed()]
        return [StartRelay(head, chunked=head.chunked, body=True), *self._body_events()]

    def _relaying(self, event: Event) -> list[Effect]:
        match event:
            case UpstreamData(data):
                # b"" would say the upstream closed; Twisted never delivers it, so ignore it.
                return self._read_body(data) if data else []
            case UpstreamLost(why, clean=False):
                # Only a clean FIN ends a body delimited by the close (as for a call).
                return self._cut_relay(Outcome.UPSTREAM_ERROR_MID_BODY, why)
            case UpstreamLost():
                # The end of a body delimited by the close, or (any other) a truncated one.
                return self._read_body(b"")
            case ClientLeft():
                return [CloseUpstream(abort=True), *self._left()]
            case Stalled(kind):
                return self._cut_relay(Outcome.stalled(kind), stall_cause(kind, self._idle_timeout))
            case Cut(error):
                return self._cut_relay(cut_outcome(error.type), None)
            case Bug(why):
                return self._cut_relay(Outcome.INTERNAL_ERROR, why)
        return []

    def _read_body(self, data: bytes) -> list[Effect]:
        """Relay what ``data`` (``b""``: the upstream closed) completes of the answer's body."""
        self._parser.receive_data(data)
        return self._body_events()

    def _body_events(self) -> list[Effect]:
        """Relay what the bytes read so far complete of the answer's body."""
        effects: list[Effect] = []
        while True:
            event = self._parser.next_event()
            if isinstance(event, Data):
                self.bytes_out += len(event.data)
                effects.append(WriteClient(event.data, relayed=True))
            elif isinstance(event, EndOfMessage):
                return [*effects, *self._relayed()]
            elif isinstance(event, Failed):
                # Truth after headers: a truncated or malformed body never ends like a whole one.
                why = describe(event.error)
                return [*effects, *self._cut_relay(Outcome.UPSTREAM_ERROR_MID_BODY, why)]
            else:
                return effects  # NEED_DATA

    def _relayed(self) -> list[Effect]:
        """The answer is whole. Its connection carried a refused handshake: it is not reused."""
        cause = f"the upstream answered the handshake with {self._status}"
        return [
            CloseUpstream(abort=False),
            *self._finish(Outcome.WS_REJECTED, cause, ending=Ending.BODY),
        ]

    def _cut_relay(self, outcome: str, cause: str | None) -> list[Effect]:
        return [
            CloseUpstream(abort=True),
            AbortClient(),
            *self._finish(outcome, cause),
        ]

    # The ways out.

    def _left(self) -> list[Effect]:
        return self._finish(Outcome.CLIENT_ABORT, None)

    def _answer_bug(self) -> list[Effect]:
        return self._answer_error(internal_error())

    def _answer_error(self, error: GatewayError) -> list[Effect]:
        return self._answer(error, error.message)

    def _answer(self, error: GatewayError, cause: str) -> list[Effect]:
        """End the session with the gateway's envelope for ``error``."""
        return [AnswerWith(error), *self._finish(error.type, cause, ending=Ending.ENVELOPE)]

    def _finish(
        self, outcome: str, cause: str | None, *, ending: Ending = Ending.NONE
    ) -> list[Effect]:
        """The one way out."""
        self.phase = Phase.DONE
        return [Finish(outcome, cause, ending=ending)]
