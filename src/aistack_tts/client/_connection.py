"""One upstream connection of the lean client: a request out, its response in, one at a time.

A step below ``client._agent`` (which picks the connection) and above ``client._parser`` (which
frames what arrives). ``UpstreamConnection`` writes a request (head and a small body in one
send, or the head then a streamed body), feeds every byte to a ``ResponseParser`` and turns
its events into an ``IResponse`` (``UpstreamResponse``) and the body protocol's calls. The
body protocol's transport is ``BodyTransport``: pause, resume and stop reach the TCP
transport, until the body ends.

How a response ends, as the Agent said it (``call._exchange`` and treq rely on it): the request's
Deferred fails with ``ResponseNeverReceived([reason])`` when the connection went before any
response byte, ``ResponseFailed([reason])`` when it went inside the head or the head was
invalid (an ``UpstreamProtocolError`` in the reasons), ``CancelledError`` when cancelled
(the connection is aborted). The body ends with ``ResponseDone``, ``PotentialDataLoss`` (a
close-delimited body, only on a clean close: FIN), or ``ResponseFailed`` (a reset, a short
body, invalid framing).

After the end of a message the connection goes back to its pool only if the parser says it
may be reused and the upstream took the whole request (``wire._socket_state.unsent`` is 0): one
that answered before reading a body is aborted, not flushed, as the next request would wait
behind bytes nobody reads. ``Keep-Alive: timeout=N`` is kept for the pool (``keep_alive``).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

from aistack_tts.wire._send_now import abort_now, send_now
from aistack_tts.wire._socket_state import unsent

from ._events import CONNECTION_CLOSED, NEED_DATA, Data, EndOfMessage, Failed, Framed
from ._head import Head, IncompleteResponse
from ._parser import ResponseParser
from ._request import BodyWriter, ClientRequest, WrongBodyLength

#: How every whole body ends: made once, as ``twisted.internet.protocol.connectionDone`` is
#: (a Failure without a traceback; building one per response showed in the profile).
_RESPONSE_DONE = Failure(ResponseDone())
_RESPONSE_DONE.cleanFailure()


class Keeper(Protocol):
    """Where a connection goes between requests (``ConnectionPool``)."""

    def release(self, connection: UpstreamConnection) -> None:
        """``connection`` may carry another request."""

    def forget(self, connection: UpstreamConnection) -> None:
        """``connection`` is gone or unusable."""


@implementer(IPushProducer)
class BodyTransport:
    """The transport a body protocol gets: the TCP transport's flow control, while a body lasts."""

    __slots__ = ("_connection", "paused")

    def __init__(self, connection: UpstreamConnection) -> None:
        self._connection: UpstreamConnection | None = connection
        self.paused = False

    def pauseProducing(self) -> None:
        """Stop reading from the upstream (the client is not keeping up)."""
        if self._connection is not None and not self.paused:
            self.paused = True
            self._connection.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """Read from the upstream again."""
        if self._connection is not None and self.paused:
            self.paused = False
            self._connection.transport.resumeProducing()

    def stopProducing(self) -> None:
        """Close the upstream connection (the body is not wanted any more)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.give_up(abort=True)

    def detach(self) -> None:
        """The body ended: from now on nothing reaches the connection (it may be pooled)."""
        connection, self._connection = self._connection, None
        if connection is not None and self.paused:
            connection.transport.resumeProducing()


@implementer(IResponse)
class UpstreamResponse:
    """The upstream's response: head now, body to the protocol ``deliverBody`` is given."""

    previousResponse = None

    def __init__(
        self, head: Head, request: ClientRequest, transport: BodyTransport, parser: ResponseParser
    ) -> None:
        self.version = (b"HTTP", 1, head.minor)
        self.code = head.status
        self.phrase = head.reason
        # Connection-named headers are hop-by-hop (RFC 9110 section 7.6.1): dropped here, as
        # nobody past this point could tell which they were. Grouped by lower-cased name, as
        # ``Set-Cookie`` and ``set-cookie`` are one header whose values all pass, in order.
        named = head.connection
        raw: dict[bytes, list[bytes]] = {}
        for name, value in head.headers:
            lower = name.lower()
            if lower not in named:
                raw.setdefault(lower, []).append(value)
        self.headers = Headers(raw)
        self.length: Any = UNKNOWN_LENGTH if head.length is None else head.length
        #: The body is chunked (``relay_framing`` may pass its framing on).
        self.chunked = head.chunked
        self.request = request
        self._transport = transport
        self._parser = parser
        self._protocol: Any = None
        #: What came before ``deliverBody``: decoded bytes (size None) or framed ones.
        self._early: list[tuple[bytes, int | None]] = []
        self._reason: Failure | None = None

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    def relay_framing(self) -> bool:
        """Ask for a chunked body with its framing: ``chunksReceived(framed, size)`` calls.

        True only for a chunked body none of which was read yet; the protocol given to
        ``deliverBody`` then gets the upstream's chunk-size lines and chunk data as they came
        (never the last chunk or the trailers), ``size`` saying how much of it is body.
        """
        return self._protocol is None and not self._early and self._parser.relay_framing()

    def deliverBody(self, protocol: Any) -> None:
        """Give the body to ``protocol``: what came already, then the rest as it comes."""
        if self._protocol is not None:
            raise RuntimeError("the body of a response can be delivered only once")
        self._protocol = protocol
        protocol.makeConnection(self._transport)
        early, self._early = self._early, []
        for data, size in early:
            if size is None:
                protocol.dataReceived(data)
            else:
                protocol.chunksReceived(data, size)
        if self._reason is not None:
            protocol.connectionLost(self._reason)

    def data(self, data: bytes) -> None:
        """Body bytes from the connection."""
        if self._protocol is not None:
            self._protocol.dataReceived(data)
        else:
            self._early.append((data, None))

    def framed(self, event: Framed) -> None:
        """Chunked body bytes with their framing (``relay_framing``)."""
        if self._protocol is not None:
            self._protocol.chunksReceived(event.data, event.size)
        else:
            self._early.append((event.data, event.size))

    def end(self, reason: Failure) -> None:
        """The body ended with ``reason`` (the transport is detached first)."""
        self._transport.detach()
        if self._reason is not None:
            return
        self._reason = reason
        if self._protocol is not None:
            self._protocol.connectionLost(reason)


class UpstreamConnection(TwistedProtocol):
    """One HTTP/1.1 connection to the upstream; ``request`` once at a time."""

    transport: Any

    def __init__(self, key: bytes, keeper: Keeper) -> None:
        self.key = key
        self._keeper = keeper
        #: Whether it has carried a request already (a stale one may be retried).
        self.reused = False
        self.lost = False
        self.lost_waiters: list[Deferred[None]] = []
        #: When it was put in the pool (``ConnectionPool``'s idle timer reads it).
        self.idle_since = 0.0
        self.idle_timer: Any = None
        #: How long the upstream said it keeps an idle connection (``Keep-Alive: timeout``).
        self.keep_alive: float | None = None
        self._parser: ResponseParser | None = None
        self._head: Head | None = None
        self._waiting: Deferred[IResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._request: ClientRequest | None = None
        self._producer: IBodyProducer | None = None
        self._writer: BodyWriter | None = None

    @property
    def busy(self) -> bool:
        """A request is under way on it."""
        return self._parser is not None

    def request(
        self,
        head: bytes,
        body: bytes | None,
        producer: IBodyProducer | None,
        request: ClientRequest,
    ) -> Deferred[IResponse]:
        """Send ``head`` and the body (``body`` whole, or ``producer`` streamed)."""
        if self._parser is not None or self.lost:
            raise RuntimeError("one request at a time on an open upstream connection")
        self._parser = ResponseParser(request.method)
        self._request = request
        self._response = None
        waiting: Deferred[IResponse] = Deferred(self._cancel)
        self._waiting = waiting
        transport = self.transport
        if body is not None:
            transport.write(head + body if body else head)
            send_now(transport)
        else:
            assert producer is not None
            transport.write(head)
            self._stream(producer)
        return waiting

    def _stream(self, producer: IBodyProducer) -> None:
        writer = self._writer = BodyWriter(self.transport, producer.length)
        self._producer = producer
        writer.registerProducer(producer, True)
        producing = producer.startProducing(writer)
        producing.addCallbacks(lambda _: self._written(writer), lambda f: self._written(writer, f))

    def _written(self, writer: BodyWriter, failure: Failure | None = None) -> None:
        """The body producer is done (or failed): end the body's framing."""
        if self._writer is not writer:
            # Given up already: a response that ended before its request body was all
            # written gave the connection up too (``_ended``), and stopped the producer.
            return
        self._writer = self._producer = None
        writer.unregisterProducer()
        if failure is None:
            try:
                writer.finish()
            except WrongBodyLength:
                failure = Failure()
        if failure is not None:
            if self._response is None:
                self._fail_before_head(ResponseFailed([failure]), abort=True)
            else:
                self._parser = None
                self.give_up(abort=True)
                self._response.end(Failure(ResponseFailed([failure])))

    # The response.

    def dataReceived(self, data: bytes) -> None:
        """Response bytes; any byte while no request is under way closes the connection."""
        parser = self._parser
        if parser is None:
            # Unsolicited bytes on an idle connection: no response can be trusted on it.
            self._keeper.forget(self)
            self.transport.abortConnection()
            return
        parser.receive_data(data)
        self._events(parser)

    def _events(self, parser: ResponseParser) -> None:
        next_event = parser.next_event
        while self._parser is parser:
            event = next_event()
            kind = type(event)
            if kind is Data:
                response = self._response
                assert response is not None
                response.data(event.data)  # type: ignore[union-attr]
            elif kind is Framed:
                response = self._response
                assert response is not None
                response.framed(event)  # type: ignore[arg-type]
            elif event is NEED_DATA:
                return
            elif kind is Head:
                self._got_head(event)  # type: ignore[arg-type]
            elif kind is EndOfMessage:
                self._ended(event.reusable)  # type: ignore[union-attr]
            elif kind is Failed:
                self._failed(event.error)  # type: ignore[union-attr]
            else:
                assert event is CONNECTION_CLOSED
                return

    def _got_head(self, head: Head) -> None:
        assert self._request is not None
        assert self._parser is not None
        self._head = head
        self._response = UpstreamResponse(head, self._request, BodyTransport(self), self._parser)
        waiting, self._waiting = self._waiting, None
        assert waiting is not None
        waiting.callback(self._response)

    def _ended(self, reusable: bool) -> None:
        response = self._response
        assert response is not None
        self._parser = None
        self.reused = True
        # Bytes of the request the upstream has not taken: the next request would wait behind
        # them on a socket nobody reads (an early answer that never read the body).
        untaken = self._writer is not None or bool(unsent(self.transport))
        if untaken:
            self.give_up(abort=True)
        elif not reusable:
            self.give_up()
        else:
            assert self._head is not None
            self.keep_alive = self._head.keep_alive_timeout
            self._keeper.release(self)
        response.end(_RESPONSE_DONE)

    def _failed(self, error: Exception) -> None:
        self._parser = None
        if self._response is None:
            self._fail_before_head(ResponseFailed([Failure(error)]), abort=True)
            return
        self.give_up(abort=True)
        self._response.end(Failure(ResponseFailed([Failure(error)])))

    def _fail_before_head(self, error: Exception, *, abort: bool) -> None:
        self._parser = None
        if abort:
            self.give_up(abort=True)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(Failure(error))

    def _cancel(self, waiting: Deferred[IResponse]) -> None:
        # Cancelled before the head (after it, the Deferred has fired and this never runs).
        if self._waiting is waiting:
            self._fail_before_head(CancelledError(), abort=True)

    def give_up(self, *, abort: bool = False) -> None:
        """Close the connection (``abort``: at once, dropping what is unsent).

        A response under way ends as the loss says, in ``connectionLost``.
        """
        self._keeper.forget(self)
        if self._producer is not None:
            producer, self._producer, self._writer = self._producer, None, None
            self.transport.unregisterProducer()
            producer.stopProducing()
        if abort:
            # At once, not on the reactor's next turn (``abort_now``): the upstream stops
            # generating for a client that left before the gateway's bookkeeping is done.
            abort_now(self.transport)
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        """The connection went: end what was under way as the way it went says."""
        self.lost = True
        self._keeper.forget(self)
        if self._producer is not None:
            self._producer.stopProducing()
            self._producer = self._writer = None
        parser, self._parser = self._parser, None
        response = self._response
        if parser is not None and response is None:
            cut = ResponseFailed([reason]) if parser.started else ResponseNeverReceived([reason])
            self._fail_before_head(cut, abort=False)
        elif parser is not None and response is not None:
            self._parser = parser
            if reason.check(ConnectionDone):
                parser.receive_data(b"")
                event = parser.next_event()
                if type(event) is EndOfMessage:
                    self._parser = None
                    response.end(Failure(PotentialDataLoss()))
                    self._lost(reason)
                    return
                lost = [reason, Failure(getattr(event, "error", IncompleteResponse()))]
            else:
                lost = [reason]
            self._parser = None
            response.end(Failure(ResponseFailed(lost)))
        self._lost(reason)

    def _lost(self, reason: Failure) -> None:
        waiters, self.lost_waiters = self.lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)
