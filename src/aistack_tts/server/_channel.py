"""The client connection: request framing rules and client timeouts, before any routing.

twisted.web's ``HTTPChannel`` parses requests; this subclass adds what a proxy in front of a
GPU owes the server behind it and its other clients:

- Deadlines instead of Twisted's one 60 s timer that every byte restarts (a client sending a
  header byte every 55 s held its connection for ever): the request head must be whole within
  ``client_timeout`` of its first byte; a body may not stall for ``client_timeout`` nor fall
  under ``MIN_BODY_RATE`` on average after that grace; a connection with no request under way
  is closed after ``keepalive_timeout``. A request that is being served has no client deadline
  (the call's own ``--idle-timeout`` watches it).
- Framing a trusted proxy enforces (RFC 9112, the rules are ``server._request_rules``, the
  chunk size's ``wire._http``, as for responses): ``chunked``
  is the only transfer coding, an HTTP/1.1 request has exactly one valid ``Host``, a folded
  header line is refused, a chunk size no body can have is a 400 and a chunk that takes the
  body over ``--max-body`` a 413 as soon as its size line is in; ``close`` anywhere in any
  ``Connection`` header ends the connection after the response.
- ``Expect: 100-continue``: ``ClientLimits.preflight`` may answer (a busy GPU's 503) before
  the body is invited, which is then never uploaded. A client that leaves while its body
  arrives leaves an access event (``client_left``, with the body bytes received).
- Early answers, written before the request reaches a resource (400; 408; 413; 414 and 431
  for a request line or header block over 16 KiB, which Twisted closed without a word), are
  the contract's envelope with ``Date`` and ``Connection: close``; the connection is
  half-closed so the client reads the answer, what it still sends is discarded unparsed, and
  after ``LINGER_SECONDS`` it is cut.

The hooks used (``_respondToBadRequestAndDisconnect``, ``_maybeChooseTransferDecoder``,
``_failChooseTransferDecoder``, ``_send100Continue``, ``_receivedHeaderSize``,
``_HTTPChannel__first_line``, ``_handlingRequest``, ``_transferDecoder`` and its ``_buffer``,
``_version``, ``_command``, ``_path``) are twisted.web's private API: it has no public hook for
framing errors, timeouts per phase or the moment the body is invited. Chunk sizes are read
after each read of body bytes from the chunked decoder's ``state`` and ``length`` (its
documented instance variables: the decoder itself is private), not by parsing chunks again.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from aistack_tts._errors import (
    GatewayError,
    GPUBusy,
    HeaderTooLarge,
    InvalidRequest,
    RequestTimeout,
    URITooLong,
    early_answer,
)
from aistack_tts.observe._accesslog import REQUEST_ID, AccessLog, ensure_request_id
from aistack_tts.wire._http import chunk_size_problem
from aistack_tts.wire._socket_state import WatchedReading

from ._connections import ConnectionRegistry
from ._request_rules import (
    host_problem,
    is_folded,
    transfer_coding_problem,
    wants_close,
)

#: How long a refused client may keep sending (discarded) before its connection is cut. Closing
#: at once would reset the connection under a client still writing, and it would never read
#: the answer (a "lingering close", as nginx does).
LINGER_SECONDS = 2.0

#: The slowest mean rate a request body may arrive at once its ``client_timeout`` grace is
#: over (Apache's mod_reqtimeout uses 500 B/s): a body dribbled at 1 byte/s is cut, a
#: 25 MiB upload over a slow link is not.
MIN_BODY_RATE = 1024.0

_LOST = Failure(ConnectionDone())


@frozen
class ClientLimits:
    """What a client connection may take: its deadlines, and where its early answers are logged."""

    clock: IReactorTime
    client_timeout: float
    keepalive_timeout: float
    access_log: AccessLog | None = None
    #: Where the site tracks its open connections; the channel leaves it when it is lost.
    connections: ConnectionRegistry | None = None
    #: Asked, with ``Expect: 100-continue``, before the body is invited: the answer the
    #: request would get at once anyway (a busy GPU's 503), or ``None`` to invite the body.
    #: The request's ``method``, ``uri`` and ``clientproto`` are set; its body has not come.
    preflight: Callable[[Request], GatewayError | None] | None = None


class Phase(enum.Enum):
    """Where a connection is between requests, and which deadline applies."""

    #: No byte of a next request yet: ``keepalive_timeout`` (``client_timeout`` before the first).
    IDLE = "idle"
    #: A request head is arriving: whole within ``client_timeout`` of its first byte.
    HEAD = "head"
    #: A request body is arriving: no stall of ``client_timeout``, at least ``MIN_BODY_RATE``.
    BODY = "body"
    #: The request is being served: no client deadline.
    SERVING = "serving"
    #: An early answer was written (or the connection is going): nothing more is parsed.
    CLOSING = "closing"


class GatewayChannel(HTTPChannel):
    """An ``HTTPChannel`` with per-phase client deadlines and strict request framing."""

    def __init__(self, limits: ClientLimits) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.limits = limits
        self.phase = Phase.IDLE
        self._served = 0
        self._timer: IDelayedCall | None = None
        self._linger: IDelayedCall | None = None
        self._since = 0.0
        self._last_body = 0.0
        self._body_bytes = 0

    # Phases and their deadlines.

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        now = self.limits.clock.seconds()
        self._since = self._last_body = now
        self._body_bytes = 0
        self._disarm()
        if phase in (Phase.SERVING, Phase.CLOSING):
            return
        self._timer = self.limits.clock.callLater(self._deadline() - now, self._check)

    def _deadline(self) -> float:
        limits = self.limits
        if self.phase is Phase.IDLE:
            wait = limits.keepalive_timeout if self._served else limits.client_timeout
            return self._since + wait
        if self.phase is Phase.BODY:
            stall = self._last_body + limits.client_timeout
            rate = self._since + limits.client_timeout + self._body_bytes / MIN_BODY_RATE
            return min(stall, rate)
        return self._since + limits.client_timeout

    def _check(self) -> None:
        self._timer = None
        now = self.limits.clock.seconds()
        deadline = self._deadline()
        if now < deadline:
            # The body kept coming: look again when its deadline can next run out.
            self._timer = self.limits.clock.callLater(deadline - now, self._check)
            return
        if self.phase is Phase.IDLE:
            self.phase = Phase.CLOSING
            self.loseConnection()  # type: ignore[no-untyped-call]
            self._linger = self.limits.clock.callLater(LINGER_SECONDS, self._cut)
            return
        what = "request head" if self.phase is Phase.HEAD else "request body"
        self.refuse(
            RequestTimeout(
                f"the {what} did not arrive in time: a request head must be whole within "
                f"{self.limits.client_timeout:g} s of its first byte, and a body may not stall "
                f"for {self.limits.client_timeout:g} s or arrive slower than "
                f"{MIN_BODY_RATE:g} bytes/s"
            )
        )

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _cut(self) -> None:
        self._linger = None
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    # twisted.web's parser, with the phase kept beside it.

    def connectionMade(self) -> None:
        """Arm the first deadline: a client must send its first request in time.

        While twisted.web stops reading the client (bytes pipelined behind a request being
        served), its socket is watched: a client that resets or closes is cut at once, so the
        call it made ends (and frees the slot) as if its departure had been read.
        """
        super().connectionMade()  # type: ignore[no-untyped-call]
        self._networkProducer = WatchedReading(
            self._networkProducer, self.limits.clock, self.transport
        )
        self._enter(Phase.IDLE)

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the client: nothing after an early answer; a first byte starts the head."""
        if self.phase is Phase.CLOSING:
            return
        if self.phase is Phase.IDLE and data and not self._handlingRequest:
            self._enter(Phase.HEAD)
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def lineReceived(self, line: bytes) -> None:
        """A line of a request head (pipelined heads replay here without ``dataReceived``)."""
        if self.phase is Phase.CLOSING:
            return
        if self.phase is Phase.IDLE:
            self._enter(Phase.HEAD)
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            # Twisted's answer would be its bare 400.
            self._too_long()
            return
        if not getattr(self, "_HTTPChannel__first_line", 1) and is_folded(line):
            # Twisted would join it to the line above.
            self._reject("a header line starts with whitespace (obsolete line folding)")
            return
        super().lineReceived(line)  # type: ignore[no-untyped-call]

    def lineLengthExceeded(self, line: bytes) -> None:
        """One line over 16 KiB: LineReceiver would close without a word."""
        self._too_long()

    def _too_long(self) -> None:
        # twisted.web's name-mangled flag: still waiting for (or reading) the request line.
        if getattr(self, "_HTTPChannel__first_line", 0):
            self.refuse(URITooLong(f"the request line is over {self.totalHeadersSize} bytes"))
        else:
            self.refuse(
                HeaderTooLarge(f"the request's header block is over {self.totalHeadersSize} bytes")
            )

    def rawDataReceived(self, data: bytes) -> None:
        """Body bytes (or bytes pipelined behind a request being served)."""
        if self.phase is Phase.CLOSING:
            return
        if self.phase is Phase.BODY:
            self._last_body = self.limits.clock.seconds()
            self._body_bytes += len(data)
        super().rawDataReceived(data)
        if self.phase is Phase.BODY:
            self._check_chunk()

    def _check_chunk(self) -> None:
        """Judge the chunk being received by its declared size, before its bytes arrive."""
        decoder: Any = self._transferDecoder
        if getattr(decoder, "state", None) != "BODY":
            return
        # Inside a chunk, ``length`` is what is still to come of it.
        left: int = decoder.length
        problem = chunk_size_problem(left)
        if problem is not None:
            self._reject(problem)
            return
        request = self.requests[-1]
        announced: Callable[[int], None] | None = getattr(request, "body_announced", None)
        if announced is not None:
            announced(left)

    def allHeadersReceived(self) -> None:
        """The head is in: check ``Host``, then let the body (if any) arrive under its deadline."""
        hosts = self.requests[-1].requestHeaders.getRawHeaders(b"Host") or []
        problem = host_problem(getattr(self, "_version", b""), hosts)
        if problem is not None:
            self.refuse(InvalidRequest(problem))
            return
        if self.length != 0:
            self._enter(Phase.BODY)
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def allContentReceived(self) -> None:
        """The request is whole: it is served with no client deadline."""
        if self.phase is Phase.CLOSING:
            return
        self._enter(Phase.SERVING)
        self._served += 1
        super().allContentReceived()  # type: ignore[no-untyped-call]

    def requestDone(self, request: IRequest) -> None:
        """A response is finished: a persistent connection waits for the next request."""
        if self.phase is Phase.SERVING:
            if self.persistent:
                # Before the parent replays pipelined bytes, which may start the next head.
                self._enter(Phase.IDLE)
            else:
                # The parent closes once the answer is flushed: a client that never reads
                # the rest of it may not hold the connection for ever.
                self._enter(Phase.CLOSING)
                self._linger = self.limits.clock.callLater(self.limits.client_timeout, self._cut)
        super().requestDone(request)  # type: ignore[no-untyped-call]

    def checkPersistence(self, request: IRequest, version: bytes) -> bool:
        """Whether the connection stays open after ``request``'s response (RFC 9112 section 9.6).

        Twisted's rules (only HTTP/1.1 persists), with ``close`` found in any form.
        """
        if wants_close(request.requestHeaders):
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return version == b"HTTP/1.1"

    def _send100Continue(self) -> None:
        # Twisted invites the body here: a request the gateway would refuse at once anyway
        # is refused now, and the client never uploads it.
        preflight = self.limits.preflight
        if preflight is not None and self.requests:
            request = self._with_request_line(self.requests[-1])
            error = preflight(request)
            if error is not None:
                self.refuse(error, request)
                return
        super()._send100Continue()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = _LOST) -> None:
        """Disarm every deadline; a request whose body was arriving is logged as left."""
        if self.phase is Phase.BODY and self.requests:
            self._log_left(self.requests[-1])
        self.phase = Phase.CLOSING
        self._disarm()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        try:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
        finally:
            if self.limits.connections is not None:
                self.limits.connections.discard(self)

    # Framing rules.

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        if header == b"Transfer-Encoding":
            problem = transfer_coding_problem(data)
            if problem is not None:
                self._reject(problem)
                self.length = None
                return False
        ok: bool = super()._maybeChooseTransferDecoder(header, data)  # type: ignore[no-untyped-call]
        return ok

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own answer is a bare "400 Bad Request" with no Date and no body.
        self._reject("the request is not valid HTTP/1.1 (request line, headers or framing)")

    def _reject(self, why: str) -> None:
        self.refuse(InvalidRequest(why))

    # Early answers.

    def refuse(self, error: GatewayError, request: IRequest | None = None) -> None:
        """Answer ``error`` now, before the request reaches a resource, and close lingering.

        Logged as the request's access event; the request line is borrowed from the parser.
        """
        if self.phase is Phase.CLOSING:
            return
        self._enter(Phase.CLOSING)
        # A refusal from inside the chunked decoder (a body of tiny chunks) would otherwise
        # let it walk the rest of what it holds, chunk by chunk, for nothing.
        undecoded = getattr(self._transferDecoder, "_buffer", None)
        if isinstance(undecoded, bytearray):
            del undecoded[:]
        target = self._with_request_line(request)
        request_id = ensure_request_id(target)
        target.responseHeaders.setRawHeaders(REQUEST_ID, [request_id.encode("ascii")])
        transport: Any = self.transport
        id_header = (REQUEST_ID, request_id.encode("ascii"))
        transport.write(early_answer(error, self.limits.clock.seconds(), [id_header]))
        self.persistent = False
        self._log_refusal(error, target)
        # Half-close so the client sees the end of our answer, keep reading (and dropping)
        # what it still sends for a moment, then cut the connection.
        lose_write: Callable[[], None] | None = getattr(transport, "loseWriteConnection", None)
        if lose_write is not None:
            lose_write()
        else:
            transport.loseConnection()
        self._linger = self.limits.clock.callLater(LINGER_SECONDS, self._cut)

    def _with_request_line(self, request: IRequest | None) -> Any:
        """``request`` (or the one under way) with its request line borrowed from the parser.

        twisted.web sets ``method``, ``uri`` and ``clientproto`` only once the body is in;
        an early answer, its access event and the preflight need them before.
        """
        if request is None:
            # Before its request line is whole, a request has no object yet: make one to log.
            made: Any = self.requests[-1] if self.requests else self.requestFactory(self)
            request = made
        target: Any = request
        target.method = getattr(self, "_command", None) or b"-"
        target.uri = getattr(self, "_path", None) or b"-"
        target.clientproto = getattr(self, "_version", None) or target.clientproto
        return target

    def _log_refusal(self, error: GatewayError, target: IRequest) -> None:
        access_log = self.limits.access_log
        if access_log is None:
            return
        # As the routes log a busy GPU's 503: the slot was asked for, and was busy.
        access_log.answered(target, error, slot="busy" if isinstance(error, GPUBusy) else "none")

    def _log_left(self, request: IRequest) -> None:
        access_log = self.limits.access_log
        if access_log is None:
            return
        # The request's own count is of body bytes; the channel's includes chunk framing.
        received: int = getattr(request, "body_received", self._body_bytes)
        access_log.left(self._with_request_line(request), received=received, declared=self.length)
