"""One proxied call, from slot taken to slot released: the shell around its sans-IO core.

The call step of a request's way, below ``aistack_tts._proxy``. The decisions are
``call._exchange_core``'s; this module does the I/O it asks for: the request through
the ``IAgent``, the ``StreamBridge`` relaying the body, the ``Watchdog``, the upstream pool
(whether a spare is free, and the move to it on the machine's fail-over), and the
``CallRecord`` whose ``finish`` (the machine's one ``Finish``) releases the slot exactly once,
before the response ends. What Twisted reports (a response, a ``Failure``, the body's end, the
client leaving) is classified here and fed in as events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, assert_never

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from twisted.web.server import Request
from zope.interface import implementer

from aistack_tts._errors import (
    GatewayError,
    describe,
    error_for_upstream_failure,
    failure_cause,
    is_connect_failure,
)
from aistack_tts.client._agent import body_producer, upstream_url
from aistack_tts.observe._outcome import Outcome
from aistack_tts.wire._http import (
    CLIENT_SEND_BUFFER,
    NO_BODY_STATUS,
    RETRY_UNAVAILABLE_S,
    client_response_headers,
    upstream_request_headers,
)
from aistack_tts.wire._socket_state import unsent

from ._admission import Verdict, refusal
from ._bridge import StreamBridge
from ._context import CallContext, IInFlightCall
from ._events import (
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
from ._exchange_core import (
    BodyEnded,
    CallFailed,
    CancelCall,
    Effect,
    Event,
    ExchangeMachine,
    MarkDown,
    Requeue,
    Response,
    Send,
    Start,
    StartResponse,
    StopUpstream,
    TakeSpare,
)
from ._record import CallRecord
from ._slot import SlotHold
from ._upstreams import Grant, Upstream, WaitTimedOut
from ._watchdog import Watchdog

_log = Logger()


def classify(
    failure: Failure,
    *,
    idle_timeout: float,
    connect_timeout: float,
    spare: Callable[[], bool] = lambda: False,
    requeue: Callable[[], bool] = lambda: False,
) -> CallFailed:
    """What a request that failed before its head means: may it fail over, what to answer.

    ``spare`` says whether another upstream could take the call now, ``requeue`` whether it
    could wait for one; each asked only when it may.
    """
    refused = is_connect_failure(failure)
    spared = refused and spare()
    return CallFailed(
        refused=refused,
        error=error_for_upstream_failure(failure, timed_out=False, retry_after=RETRY_UNAVAILABLE_S),
        cause=failure_cause(
            failure, timed_out=False, idle_timeout=idle_timeout, connect_timeout=connect_timeout
        ),
        spare=spared,
        requeue=refused and not spared and requeue(),
    )


@implementer(IInFlightCall)
class _Exchange:
    """One proxied HTTP call: the request to one upstream, its answer relayed to the client."""

    def __init__(
        self, context: CallContext, request: Request, upstream: Upstream, hold: SlotHold | None
    ) -> None:
        self._context = context
        self._request = request
        self._record = CallRecord(context, request, hold, self, upstream.url)
        self._machine = ExchangeMachine(context.idle_timeout)
        self._loop: EffectLoop[Event, Effect] = EffectLoop(self._machine.handle, self._apply)
        self._watchdog = Watchdog(
            context.clock,
            context.idle_timeout,
            self._stalled,
            unsent=lambda: unsent(self._request.transport),
        )
        self._upstream = upstream
        self._tried: list[Upstream] = []
        #: The request that is out, or the wait for a slot before it (``Requeue``).
        self._call: Deferred[Any] | None = None
        self._response: IResponse | None = None
        self._bridge: StreamBridge | None = None
        #: What writes the envelope of an ``AnswerWith``, for the ``Finish`` after it.
        self._answer: Callable[[], None] | None = None
        # What the router waits on. Fired only once an HTTP answer is finished; on the abort
        # paths it stays pending and the router cancels it when the connection drops.
        self.done: Deferred[None] = Deferred(lambda _: self._client_left())

    def start(self) -> Deferred[None]:
        """Send the request upstream; the returned Deferred fires when the client has its answer."""
        self._request.notifyFinish().addErrback(lambda _: self._client_left())
        self._feed(Start())
        return self.done

    def cut_short(self, error: GatewayError) -> None:
        """End the call now (the gateway is shutting down): upstream closed, slot released.

        A client still waiting for headers gets ``error``; one receiving the body is aborted.
        """
        self._feed(Cut(error))

    # What Twisted reports, as events.

    def _feed(self, event: Event) -> None:
        # An effect may raise another event at once (a cancel fires the call's errback): the
        # loop feeds it once the effects before it are all applied.
        self._loop.feed(event)

    def _got_response(self, response: IResponse) -> None:
        self._response = response
        # It answered: whatever its cool-down said, it is up.
        self._context.pool.mark_up(self._upstream)
        self._feed(Response(response.code))

    def _call_failed(self, failure: Failure) -> None:
        self._watchdog.stop()
        context = self._context
        self._feed(
            classify(
                failure,
                idle_timeout=context.idle_timeout,
                connect_timeout=context.connect_timeout,
                spare=lambda: self._spare() is not None,
                requeue=self._may_requeue,
            )
        )

    def _body_ended(self, reason: Failure) -> None:
        whole = reason.check(ResponseDone, PotentialDataLoss) is not None
        self._feed(BodyEnded(None if whole else describe(reason.value)))

    def _client_left(self) -> None:
        self._feed(ClientLeft())

    def _stalled(self, kind: str) -> None:
        self._feed(Stalled(kind))

    def _unexpected(self, failure: Failure) -> None:
        _log.failure("proxying {path} failed", failure, path=self._path)
        self._feed(Bug(describe(failure.value)))

    # The effects, as I/O.

    def _apply(self, effect: Effect) -> None:
        match effect:
            case Send():
                self._send()
            case StartResponse():
                self._start_response()
            case CancelCall():
                assert self._call is not None
                # The agent aborts the connection (or the connect attempt); the call's errback
                # feeds the failure back.
                self._call.cancel()
            case MarkDown():
                self._context.pool.mark_down(self._upstream)
                self._tried.append(self._upstream)
            case TakeSpare():
                self._take_spare()
            case Requeue():
                self._requeue()
            case StopUpstream():
                if self._bridge is not None:
                    self._bridge.stop_upstream()
            case AbortClient():
                transport: Any = self._request.transport
                if transport is not None:
                    transport.abortConnection()
            case AnswerWith(error):
                self._answer = self._record.answer_with(error)
            case Finish():
                self._finish(effect)
            case _:
                assert_never(effect)

    def _send(self) -> None:
        request = self._request
        self._watchdog.touch("upstream")
        call = self._context.agent.request(
            request.method,
            upstream_url(self._upstream.base, request.uri),
            upstream_request_headers(request.requestHeaders),
            body_producer(request.content, self._context.cooperator),
        )
        self._call = call
        call.addCallbacks(self._got_response, self._call_failed)
        call.addErrback(self._unexpected)

    def _spare(self) -> Upstream | None:
        """Another upstream for the call: up, not tried yet, and free if the call holds a slot.

        What ``TakeSpare`` then takes (nothing runs in between); ``None`` if there is none.
        """
        pool = self._context.pool
        tried = [*self._tried, self._upstream]
        if self._record.hold is None:
            now = self._context.clock.seconds()
            return next((u for u in pool.upstreams if u not in tried and u.is_up(now)), None)
        return pool.spare(exclude=tried)

    def _take_spare(self) -> None:
        """The upstream refused the connection (nothing was sent): take another GPU instead.

        Its slot token is given back and one on a free, reachable upstream taken in its place.
        """
        refused = self._tried[-1]
        if self._record.hold is None:
            upstream = self._spare()
            assert upstream is not None, "the spare upstream went away"
        else:
            grant = self._context.pool.try_take(exclude=self._tried)
            assert grant is not None, "the spare upstream's slot went away"
            self._record.swap_hold(grant.hold)
            upstream = grant.upstream
        _log.info(
            "upstream {refused} refused the connection; trying {next}",
            refused=refused.url,
            next=upstream.url,
        )
        self._upstream = upstream
        self._record.upstream = upstream.url

    def _may_requeue(self) -> bool:
        """Whether the call holds a slot and another upstream is up: it may wait for one."""
        if self._record.hold is None:
            return False
        return bool(self._context.pool.live(exclude=[*self._tried, self._upstream]))

    def _requeue(self) -> None:
        """The upstream refused and every other one that is up is busy: wait for a slot there.

        The refused slot token goes back (not counted as a call); the wait is what is left of
        the queue timeout since the request arrived.
        """
        context = self._context
        hold = self._record.hold
        assert hold is not None
        hold.give_back()
        waited = context.access_log.since_arrival(self._request)
        waiting = context.pool.wait(max(context.queue_timeout - waited, 0.0))
        self._call = waiting
        waiting.addCallbacks(self._regranted, self._requeue_failed)
        waiting.addErrback(self._unexpected)

    def _regranted(self, grant: Grant) -> None:
        refused = self._tried[-1]
        self._record.requeued(grant.hold)
        _log.info(
            "upstream {refused} refused the connection; waited for {next}",
            refused=refused.url,
            next=grant.upstream.url,
        )
        self._upstream = grant.upstream
        self._record.upstream = grant.upstream.url
        self._send()

    def _requeue_failed(self, failure: Failure) -> None:
        if not failure.check(WaitTimedOut):
            self._call_failed(failure)
            return
        pool = self._context.pool
        refused = self._tried[-1].url
        self._feed(
            CallFailed(
                refused=False,
                error=refusal(Verdict.BUSY, pool.retry_after()),
                cause=f"upstream {refused} refused the connection and no other GPU freed "
                "within --queue-timeout",
            )
        )

    def _start_response(self) -> None:
        response = self._response
        assert response is not None
        self._watchdog.touch("upstream")
        self._record.answered(response.code)
        request = self._request
        transport: Any = request.transport
        if transport is not None and hasattr(transport, "bufferSize"):
            transport.bufferSize = CLIENT_SEND_BUFFER
        request.setResponseCode(response.code, response.phrase)
        client_response_headers(response.headers, request.responseHeaders)
        # An IAgent (Twisted's Agent and the lean client alike) moves Content-Length out of
        # response.headers into response.length.
        if isinstance(response.length, int) and response.code not in NO_BODY_STATUS:
            request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % response.length])
        self._bridge = StreamBridge(request, self._watchdog, self._body_ended, self._client_left)
        relay = getattr(response, "relay_framing", None)
        if (
            relay is not None
            and getattr(response, "chunked", False)
            and request.clientproto == b"HTTP/1.1"
        ):
            # twisted.web picks the client's framing as it writes the head: write it now, and
            # pass the upstream's chunks on as they are where it picked chunked too.
            request.write(b"")
            if request.chunked:
                relay()
        response.deliverBody(self._bridge)

    def _finish(self, finish: Finish) -> None:
        """Stop the watchdog and finish the record: the slot goes back, then the response ends."""
        self._watchdog.stop()
        if finish.outcome == Outcome.UPSTREAM_ERROR_MID_BODY:
            _log.info(
                "upstream failed mid-body for {path}: {why}", path=self._path, why=finish.cause
            )
        then: Callable[[], None] | None = None
        flush = True
        if finish.ending is Ending.BODY:
            request = self._request
            request.unregisterProducer()
            then = request.finish
            # Ending a body writes the head of an empty one, or a chunked one's last chunk, and
            # else nothing: the bridge sent every byte as it came.
            flush = bool(request.chunked or not request.startedWriting)
        elif finish.ending is Ending.ENVELOPE:
            then = self._answer
        bytes_out = self._bridge.bytes_out if self._bridge is not None else 0
        self._record.finish(
            finish.outcome, bytes_out=bytes_out, cause=finish.cause, then=then, flush=flush
        )
        if self._lets_go(finish) and not self.done.called:
            self.done.callback(None)

    def _lets_go(self, finish: Finish) -> bool:
        """Whether the router's Deferred fires now, or when the client's connection drops.

        It fires once the response is ended here (a whole body, an envelope), and for a client
        that left before the head, which nothing more can reach; a response cut short (the
        client aborted, or gone after the head) is let go when the connection drops.
        """
        if finish.ending is not Ending.NONE:
            return True
        return finish.outcome == Outcome.CLIENT_ABORT and self._bridge is None

    @property
    def _path(self) -> str:
        return self._request.uri.decode("latin-1")
