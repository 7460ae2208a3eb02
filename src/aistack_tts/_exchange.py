"""One proxied call, from slot taken to slot released, on every path exactly once.

States (``Phase``): ``connecting`` (request sent, no response headers yet) → ``streaming``
(headers sent to the client, body flowing) → ``done``. Every way out — completed, upstream
error before or after headers, client gone before or after headers, stall — goes through
``_finish`` and so ``CallRecord.finish``, the only place that releases the slot.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from twisted.web.server import Request
from zope.interface import implementer

from ._bridge import StreamBridge
from ._call import CallRecord
from ._context import CallContext, IInFlightCall
from ._errors import (
    QWEN3_TTS,
    GatewayError,
    describe,
    error_for_upstream_failure,
    failure_cause,
    is_connect_failure,
    stall_cause,
)
from ._headers import client_response_headers, upstream_request_headers
from ._outcome import Outcome, cut_outcome
from ._pool import Upstream
from ._protocol import CLIENT_SEND_BUFFER, NO_BODY_STATUS, RETRY_UNAVAILABLE_S
from ._slot import SlotHold
from ._upstream import Watchdog, body_producer, upstream_url

_log = Logger()


class Phase(StrEnum):
    """Where a proxied call is."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    DONE = "done"


@implementer(IInFlightCall)
class _Exchange:
    """One proxied HTTP call: the request to one upstream, its answer relayed to the client."""

    def __init__(
        self, context: CallContext, request: Request, upstream: Upstream, hold: SlotHold | None
    ) -> None:
        self._context = context
        self._request = request
        self._record = CallRecord(context, request, hold, self, upstream.url)
        self._phase = Phase.CONNECTING
        self._watchdog = Watchdog(context.clock, context.idle_timeout, self._stalled)
        self._upstream = upstream
        self._tried: list[Upstream] = []
        self._client_gone = False
        self._timed_out = False
        #: Set when the gateway cuts the call short (drain timeout) before the headers: what
        #: the waiting client is told.
        self._cut_short: GatewayError | None = None
        self._bridge: StreamBridge | None = None
        self._call: Deferred[IResponse] | None = None
        # What the router waits on. Fired only once an HTTP answer is finished; on the abort
        # paths it stays pending and the router cancels it when the connection drops.
        self.done: Deferred[None] = Deferred(lambda _: self._client_left())

    def start(self) -> Deferred[None]:
        """Send the request upstream; the returned Deferred fires when the client has its answer."""
        self._request.notifyFinish().addErrback(lambda _: self._client_left())
        self._send()
        return self.done

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

    def _fail_over(self) -> bool:
        """The upstream refused the connection (nothing was sent): try another GPU instead.

        Its slot token is given back and one on a free, reachable upstream taken in its place.
        """
        pool = self._context.pool
        pool.mark_down(self._upstream)
        self._tried.append(self._upstream)
        now = self._context.clock.seconds()
        if self._record.hold is None:
            others = [u for u in pool.upstreams if u not in self._tried and u.is_up(now)]
            if not others:
                return False
            upstream = others[0]
        else:
            grant = pool.try_take(exclude=self._tried)
            if grant is None:
                return False
            self._record.swap_hold(grant.hold)
            upstream = grant.upstream
        _log.info(
            "upstream {refused} refused the connection; trying {next}",
            refused=self._upstream.url,
            next=upstream.url,
        )
        self._upstream = upstream
        self._record.upstream = upstream.url
        self._send()
        return True

    # Before headers.

    def _got_response(self, response: IResponse) -> None:
        self._watchdog.touch("upstream")
        self._phase = Phase.STREAMING
        self._record.status = response.code
        self._record.provider = QWEN3_TTS
        self._context.metrics.upstream_headers.observe(
            self._context.clock.seconds() - self._record.started
        )
        request = self._request
        transport: Any = request.transport
        if transport is not None and hasattr(transport, "bufferSize"):
            transport.bufferSize = CLIENT_SEND_BUFFER
        request.setResponseCode(response.code, response.phrase)
        client_response_headers(response.headers, request.responseHeaders)
        # The Agent moves Content-Length out of response.headers into response.length.
        if isinstance(response.length, int) and response.code not in NO_BODY_STATUS:
            request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % response.length])
        self._bridge = StreamBridge(request, self._watchdog, self._body_ended, self._client_left)
        response.deliverBody(self._bridge)

    def _call_failed(self, failure: Failure) -> None:
        self._watchdog.stop()
        if self._client_gone:
            # We cancelled the call ourselves because the client left.
            self._record.cause = "the client closed the connection before the upstream answered"
            self._finish(Outcome.CLIENT_ABORT)
            return
        if self._cut_short is None and is_connect_failure(failure) and self._fail_over():
            return
        self._record.cause = (
            self._cut_short.message
            if self._cut_short is not None
            else failure_cause(
                failure,
                timed_out=self._timed_out,
                idle_timeout=self._context.idle_timeout,
                connect_timeout=self._context.connect_timeout,
            )
        )
        error = self._cut_short or error_for_upstream_failure(
            failure, timed_out=self._timed_out, retry_after=RETRY_UNAVAILABLE_S
        )
        self._answer_with(error)

    # After headers.

    def _body_ended(self, reason: Failure) -> None:
        if self._phase is Phase.DONE:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._request.unregisterProducer()
            self._finish(Outcome.OK, then=self._request.finish)
        else:
            # Truth after headers: a truncated body must never end like a whole one.
            _log.info(
                "upstream failed mid-body for {path}: {why}",
                path=self._request.uri.decode("latin-1"),
                why=describe(reason.value),
            )
            self._abort_client()
            self._record.cause = describe(reason.value)
            self._finish(Outcome.UPSTREAM_ERROR_MID_BODY, fired=False)

    # Either side.

    def _client_left(self) -> None:
        if self._client_gone or self._phase is Phase.DONE:
            return
        self._client_gone = True
        if self._phase is Phase.CONNECTING:
            assert self._call is not None
            # The Agent aborts the connection (or the connect attempt); _call_failed finishes.
            self._call.cancel()
        else:
            assert self._bridge is not None
            self._bridge.stop_upstream()
            self._record.cause = "the client closed the connection during the body"
            self._finish(Outcome.CLIENT_ABORT, fired=False)

    def _stalled(self, kind: str) -> None:
        self._timed_out = True
        if self._phase is Phase.CONNECTING:
            assert self._call is not None
            self._call.cancel()  # _call_failed answers 504
        elif self._phase is Phase.STREAMING:
            self._stop_both()
            self._record.cause = stall_cause(kind, self._context.idle_timeout)
            self._finish(Outcome.stalled(kind), fired=False)

    def cut_short(self, error: GatewayError) -> None:
        """End the call now (the gateway is shutting down): upstream closed, slot released.

        A client still waiting for headers gets ``error``; one receiving the body is aborted.
        """
        if self._phase is Phase.CONNECTING:
            assert self._call is not None
            self._cut_short = error
            self._call.cancel()  # _call_failed answers with the error
        elif self._phase is Phase.STREAMING:
            self._stop_both()
            self._record.cause = error.message
            self._finish(cut_outcome(error.type), fired=False)

    def _unexpected(self, failure: Failure) -> None:
        _log.failure("proxying {path} failed", failure, path=self._request.uri.decode("latin-1"))
        if self._phase is Phase.DONE:
            return
        if self._phase is Phase.CONNECTING and not self._client_gone:
            self._answer_with(GatewayError("the gateway failed; see its log"))
            return
        self._stop_both()
        self._record.cause = describe(failure.value)
        self._finish(Outcome.INTERNAL_ERROR, fired=False)

    # The ways out.

    def _answer_with(self, error: GatewayError) -> None:
        """End the call with the gateway's envelope for ``error``."""
        self._finish(error.type, then=self._record.answer_with(error))

    def _finish(
        self, outcome: str, *, then: Callable[[], None] | None = None, fired: bool = True
    ) -> None:
        """Stop the watchdog and finish the record.

        On the abort paths (``fired=False``) the router is let go when the connection drops.
        """
        if self._phase is Phase.DONE:
            return
        self._phase = Phase.DONE
        self._watchdog.stop()
        bytes_out = self._bridge.bytes_out if self._bridge is not None else 0
        self._record.finish(outcome, bytes_out=bytes_out, then=then)
        if fired and not self.done.called:
            self.done.callback(None)

    def _stop_both(self) -> None:
        """Close the upstream body and abort the client (a cut, a stall, a bug after headers)."""
        if self._bridge is not None:
            self._bridge.stop_upstream()
        self._abort_client()

    def _abort_client(self) -> None:
        if not self._client_gone:
            self._client_gone = True
            transport: Any = self._request.transport
            if transport is not None:
                transport.abortConnection()
