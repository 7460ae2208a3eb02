"""A small upstream HTTP server for the real-socket tests and the benchmarks.

Run it as a process (``testbed.processes.UpstreamProcess`` starts it and collects its
events)::

    python -m testbed.upstream_server --port 0 --port-file PATH

It listens on 127.0.0.1, writes the bound port to ``PATH`` (atomically) and prints one line
per event to stdout, flushed, so a test reads what happened instead of guessing with sleeps::

    LISTENING - <t> <port>
    START <id> <t> <method> <raw-uri>     a request arrived (body already read)
    HEADERS <id> <t>                      /stream sent its response headers
    STALLED <id> <t> <sent>               /stream has been paused by its consumer for 0.2 s
    DONE <id> <t> <sent>                  the response was finished
    CLOSED <id> <t> <sent>                the client connection was lost before the response
                                          was finished (the proxy hung up on us)
    FAULT <id> <t> <sent> <kind>          this server broke the connection (or the protocol,
                                          or went silent) on purpose

With ``--connection-events`` it also reports each TCP connection, so a test can tell that the
proxy closed its upstream connection (not just that one response ended)::

    CONNECTED c<n> <t> <peer-port>       a connection was accepted
    ON <id> <t> c<n>                     request <id> arrived on connection c<n>
    DISCONNECTED c<n> <t>                that connection is gone (either side closed it)

``<t>`` is ``time.monotonic()`` (CLOCK_MONOTONIC, comparable across processes on one Linux
machine), ``<sent>`` the body bytes written so far, ``<id>`` the ``id`` query parameter
(``r<n>`` when absent). Endpoints, all under ``/v1/audio/``:

- ``stream?bytes=N&chunk=65536`` streams N bytes through an ``IPushProducer`` registered on the
  request: only as fast as the consumer takes them, never buffered whole. ``delay=S`` waits
  before the headers, ``rate=B`` caps the rate at B bytes/s, ``length=1`` sends a
  Content-Length instead of chunking, ``status=S`` answers status S (reason ``Upstream
  Exploded`` and ``X-Upstream-Error: yes`` when S >= 400). Faults: ``reset=K`` aborts the
  connection (RST) after K body bytes, ``close_after_headers=1`` closes the connection right
  after the headers, ``reset_before_headers=1`` aborts it (RST) instead of answering,
  ``garbage=1`` answers bytes that are not HTTP and keeps the connection open, ``hang=K``
  stops sending after K body bytes and keeps the connection open, ``short=K`` (with
  ``length=1``) declares the full Content-Length, sends K body bytes and closes cleanly (FIN).
  Each fault reports FAULT; ``delay=S`` postpones it like the headers.
- ``error?status=500`` answers that status with reason ``Upstream Exploded`` and a JSON body.
- ``redirect?status=302&to=URL`` answers a redirect (``Location: URL``).
- ``gzip?bytes=N`` answers a gzip body with ``Content-Encoding: gzip`` and ``X-Body-Sha256``.
- ``cookie`` sets a cookie, then echoes.
- ``hop`` answers with hop-by-hop response headers (and end-to-end ones that must survive).
- anything else (``echo``, ``a%2Fb``, ...) echoes method, raw uri, headers (in order) and the
  body's length and sha256 as JSON (and the body itself when it is at most 64 KiB).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource
from zope.interface import implementer

#: What ``garbage=1`` answers instead of HTTP (an SSH banner, then nonsense).
GARBAGE = b"SSH-2.0-OpenSSH_9.6\r\nthis is not HTTP at all\r\n\r\n\x00\xff\xfe"
#: How long /stream must stay paused before it reports STALLED.
STALL_REPORT_S = 0.2
#: Echo includes the body itself up to this size.
ECHO_BODY_MAX = 64 * 1024
COOKIE = b"aistack_test=secret-from-upstream; Path=/"
_ID_OK = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_counter = 0


def emit(kind: str, ident: str, *fields: object) -> None:
    """Print one event line and flush it."""
    parts = [kind, ident, f"{time.monotonic():.6f}", *(str(f) for f in fields)]
    sys.stdout.write(" ".join(parts) + "\n")
    sys.stdout.flush()


def pattern(size: int) -> bytes:
    """``size`` deterministic body bytes."""
    block = bytes(range(256))
    return (block * (size // len(block) + 1))[:size]


def _transport(request: server.Request) -> ITCPTransport:
    return cast(ITCPTransport, request.channel.transport)


def _params(request: server.Request) -> dict[str, str]:
    uri: bytes = request.uri
    query = uri.split(b"?", 1)[1] if b"?" in uri else b""
    return dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))


def _ident(params: dict[str, str]) -> str:
    global _counter
    given = params.get("id", "")
    if _ID_OK.fullmatch(given):
        return given
    _counter += 1
    return f"r{_counter}"


class _Tracker:
    """Reports START, then DONE or CLOSED (or nothing after a FAULT) for one request."""

    def __init__(self, request: server.Request, ident: str) -> None:
        self.ident = ident
        self.sent = 0
        self.fault = False
        self.on_lost: list[Callable[[], None]] = []
        emit("START", ident, request.method.decode("latin-1"), request.uri.decode("latin-1"))
        connection = getattr(request.channel, "upstream_connection", None)
        if connection is not None:
            emit("ON", ident, connection)
        request.notifyFinish().addCallbacks(self._done, self._lost)

    def broke(self, kind: str) -> None:
        self.fault = True
        emit("FAULT", self.ident, self.sent, kind)

    def _done(self, _: object) -> None:
        emit("DONE", self.ident, self.sent)

    def _lost(self, _: Failure) -> None:
        if not self.fault:
            emit("CLOSED", self.ident, self.sent)
        for callback in self.on_lost:
            callback()


@implementer(IPushProducer)
class _Stream:
    """The body of ``/stream``: written while the consumer is not paused, never buffered."""

    def __init__(
        self,
        request: server.Request,
        tracker: _Tracker,
        clock: IReactorTime,
        params: dict[str, str],
    ) -> None:
        self._request = request
        self._tracker = tracker
        self._clock = clock
        self._total = int(params.get("bytes", "1048576"))
        chunk = max(1, int(params.get("chunk", "65536")))
        self._chunk = pattern(chunk)
        rate = float(params.get("rate", "0"))
        self._rate = rate if rate > 0 else None
        reset = params.get("reset")
        self._reset_at = int(reset) if reset is not None else None
        self._close_after_headers = params.get("close_after_headers") == "1"
        self._length = params.get("length") == "1"
        self._status = int(params.get("status", "200"))
        self._reset_before_headers = params.get("reset_before_headers") == "1"
        self._garbage = params.get("garbage") == "1"
        hang = params.get("hang")
        self._hang_at = int(hang) if hang is not None else None
        short = params.get("short")
        self._short_at = int(short) if short is not None else None
        self._paused = False
        self._stopped = False
        self._producing = False
        self._timer: IDelayedCall | None = None
        self._stall: IDelayedCall | None = None
        tracker.on_lost.append(self._halt)
        delay = float(params.get("delay", "0"))
        if delay > 0:
            self._timer = clock.callLater(delay, self._begin)
        else:
            self._begin()

    def _begin(self) -> None:
        self._timer = None
        request = self._request
        if self._reset_before_headers:
            self._tracker.broke("reset_before_headers")
            self._stopped = True
            _transport(request).abortConnection()
            return
        if self._garbage:
            self._tracker.broke("garbage")
            self._stopped = True
            _transport(request).write(GARBAGE)
            return
        if self._status != 200:
            phrase = b"Upstream Exploded" if self._status >= 400 else None
            request.setResponseCode(self._status, phrase)
            if self._status >= 400:
                request.setHeader(b"X-Upstream-Error", b"yes")
        request.setHeader(b"Content-Type", b"application/octet-stream")
        if self._length:
            request.setHeader(b"Content-Length", b"%d" % self._total)
        request.write(b"")  # the status line and headers
        emit("HEADERS", self._tracker.ident)
        if self._close_after_headers:
            self._tracker.broke("close_after_headers")
            self._stopped = True
            _transport(request).loseConnection()
            return
        request.registerProducer(self, True)
        self._produce()

    def _produce(self) -> None:
        if self._producing or (self._timer is not None and self._timer.active()):
            return
        self._producing = True
        try:
            self._write_some()
        finally:
            self._producing = False

    def _write_some(self) -> None:
        tracker = self._tracker
        while not (self._paused or self._stopped):
            size = min(len(self._chunk), self._total - tracker.sent)
            for stop_at in (self._reset_at, self._hang_at, self._short_at):
                if stop_at is not None:
                    size = min(size, stop_at - tracker.sent)
            if size > 0:
                self._request.write(self._chunk if size == len(self._chunk) else self._chunk[:size])
                tracker.sent += size
            if self._reset_at is not None and tracker.sent >= self._reset_at:
                tracker.broke("reset")
                self._halt()
                _transport(self._request).abortConnection()
                return
            if self._hang_at is not None and tracker.sent >= self._hang_at:
                tracker.broke("hang")
                self._halt()
                return
            if self._short_at is not None and tracker.sent >= self._short_at:
                tracker.broke("short")
                self._halt()
                _transport(self._request).loseConnection()
                return
            if tracker.sent >= self._total:
                self._halt()
                self._request.unregisterProducer()
                self._request.finish()
                return
            if self._rate is not None:
                self._timer = self._clock.callLater(size / self._rate, self._tick)
                return

    def _tick(self) -> None:
        self._timer = None
        self._produce()

    def _report_stall(self) -> None:
        self._stall = None
        emit("STALLED", self._tracker.ident, self._tracker.sent)

    def _halt(self) -> None:
        self._stopped = True
        for call in (self._timer, self._stall):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._stall = None

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True
        if self._stall is None and not self._stopped:
            self._stall = self._clock.callLater(STALL_REPORT_S, self._report_stall)

    def resumeProducing(self) -> None:
        self._paused = False
        if self._stall is not None:
            if self._stall.active():
                self._stall.cancel()
            self._stall = None
        if not self._stopped:
            self._produce()

    def stopProducing(self) -> None:
        self._halt()


def _finish(request: server.Request, tracker: _Tracker, body: bytes) -> None:
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    tracker.sent = len(body)
    request.finish()


def _echo(request: server.Request, tracker: _Tracker) -> None:
    content = request.content
    body = content.read() if content is not None else b""
    headers = [
        [name.decode("latin-1"), value.decode("latin-1")]
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
    ]
    answer = {
        "method": request.method.decode("latin-1"),
        "uri": request.uri.decode("latin-1"),
        "version": request.clientproto.decode("latin-1"),
        "headers": headers,
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body": body.decode("latin-1") if len(body) <= ECHO_BODY_MAX else None,
    }
    request.setHeader(b"Content-Type", b"application/json")
    _finish(request, tracker, json.dumps(answer).encode("utf-8"))


class Upstream(Resource):
    """The whole server: one leaf resource dispatching on the raw path."""

    isLeaf = True

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._clock = clock

    def render(self, request: server.Request) -> int | bytes:
        path: bytes = request.uri.split(b"?", 1)[0]
        if not path.startswith(b"/v1/audio/"):
            request.setResponseCode(404)
            return b"not here\n"
        params = _params(request)
        tracker = _Tracker(request, _ident(params))
        name = path[len(b"/v1/audio/") :]
        if name == b"stream":
            _Stream(request, tracker, self._clock, params)
        elif name == b"error":
            request.setResponseCode(int(params.get("status", "500")), b"Upstream Exploded")
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"X-Upstream-Error", b"yes")
            _finish(request, tracker, b'{"detail": "the upstream exploded"}')
        elif name == b"redirect":
            request.setResponseCode(int(params.get("status", "302")))
            request.setHeader(b"Location", params.get("to", "/v1/audio/echo?followed=1"))
            _finish(request, tracker, b"redirecting")
        elif name == b"gzip":
            plain = pattern(int(params.get("bytes", "100000")))
            packed = gzip.compress(plain, mtime=0)
            request.setHeader(b"Content-Type", b"audio/wav")
            request.setHeader(b"Content-Encoding", b"gzip")
            request.setHeader(b"X-Body-Sha256", hashlib.sha256(packed).hexdigest())
            _finish(request, tracker, packed)
        elif name == b"cookie":
            request.responseHeaders.addRawHeader(b"Set-Cookie", COOKIE)
            _echo(request, tracker)
        elif name == b"hop":
            headers = request.responseHeaders
            headers.addRawHeader(b"Connection", b"X-Up-Hop")
            headers.addRawHeader(b"X-Up-Hop", b"must-not-reach-the-client")
            headers.addRawHeader(b"Keep-Alive", b"timeout=5")
            headers.addRawHeader(b"Proxy-Authenticate", b"Basic realm=upstream")
            headers.addRawHeader(b"X-Multi", b"first")
            headers.addRawHeader(b"X-Multi", b"second")
            headers.addRawHeader(b"X-Multi", b"third")
            headers.addRawHeader(b"X-End-To-End", b"kept")
            _finish(request, tracker, b"hop")
        else:
            _echo(request, tracker)
        return server.NOT_DONE_YET


class _QuietSite(server.Site):
    noisy = False

    def __init__(self, resource: Resource, *, connection_events: bool = False) -> None:
        super().__init__(resource)  # type: ignore[no-untyped-call]
        self._connection_events = connection_events
        self._connections = 0

    def log(self, request: http.Request) -> None:
        pass

    def buildProtocol(self, addr: object) -> Any:
        protocol = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        if not self._connection_events or protocol is None:
            return protocol
        self._connections += 1
        name = f"c{self._connections}"
        emit("CONNECTED", name, getattr(addr, "port", "-"))
        # The request finds its connection's name through its channel (see _Tracker).
        protocol._channel.upstream_connection = name
        lost = protocol.connectionLost

        def connectionLost(reason: Failure) -> None:
            emit("DISCONNECTED", name)
            lost(reason)

        protocol.connectionLost = connectionLost
        return protocol


def main(argv: list[str] | None = None) -> None:
    """Run the server until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, default=None)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument(
        "--connection-events",
        action="store_true",
        help="also report CONNECTED, ON and DISCONNECTED events for each TCP connection",
    )
    args = parser.parse_args(argv)

    from twisted.internet import reactor as _reactor
    from twisted.internet.address import IPv4Address
    from twisted.internet.posixbase import PosixReactorBase
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # Twisted's own log goes to stderr: stdout carries only events.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    reactor = cast(PosixReactorBase, _reactor)
    site = _QuietSite(Upstream(reactor), connection_events=args.connection_events)
    port = reactor.listenTCP(args.port, site, interface=args.interface)
    number = cast(IPv4Address, port.getHost()).port
    if args.port_file is not None:
        temporary = args.port_file.with_name(args.port_file.name + ".tmp")
        temporary.write_text(f"{number}\n")
        os.replace(temporary, args.port_file)
    emit("LISTENING", "-", number)
    reactor.run()


if __name__ == "__main__":
    main()
