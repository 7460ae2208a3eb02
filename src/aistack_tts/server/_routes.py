"""Routes: Klein serves ``/v1/audio/<path>``; every other answer is an envelope.

The router sees percent-decoded paths, so the raw request-target is checked first (bytes a
URL may not hold, dot-segments climbing out of ``/v1/audio/``) and is what goes upstream.
Klein and werkzeug answer unknown routes with HTML and may redirect; those answers are turned
into envelopes here and never reach a client.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from klein import Klein
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from aistack_tts._config import ConfigError
from aistack_tts._errors import (
    COMPOSE_HINT,
    Draining,
    GatewayError,
    GPUBusy,
    InvalidRequest,
    NotFound,
    NotReady,
    apply_error,
    internal_error,
    method_not_allowed,
    write_error,
)
from aistack_tts.observe._accesslog import AccessLog, tag_response
from aistack_tts.observe._health import ReadinessProbe
from aistack_tts.observe._metrics import MetricsResource
from aistack_tts.wire._http import ALLOWED_METHODS
from aistack_tts.wire._send_now import send_now

from ._target import PREFIX, check_target, is_audio_target, owns_target

_log = Logger()


class Gateway(Protocol):
    """What the routes take from the gateway (``TTSProxy`` is one)."""

    @property
    def health_routes(self) -> bool:
        """Whether ``/healthz`` and ``/readyz`` are served."""

    @property
    def draining(self) -> bool:
        """Whether the gateway is shutting down."""

    @property
    def readiness(self) -> Sequence[ReadinessProbe]:
        """One probe per upstream."""

    @property
    def metrics_route(self) -> MetricsResource | None:
        """``/metrics``, or ``None`` when it is off."""

    @property
    def access_log(self) -> AccessLog:
        """Where each request's end is recorded."""

    def forward(self, request: Request) -> Deferred[None]:
        """Proxy one request (raising a ``GatewayError`` when the gateway answers itself)."""


#: The methods of the ``/v1/audio/`` route, the ones the gateway proxies (Klein adds HEAD, and
#: OPTIONS, to them).
_PROXIED = frozenset(ALLOWED_METHODS)


class _Rest(BaseConverter):
    """The rest of the path, whatever it holds (``%2F`` decodes to a slash, too)."""

    regex = ".+"
    part_isolating = False


class _Routes:
    app = Klein()
    app.url_map.converters["rest"] = _Rest
    # werkzeug would otherwise redirect ``//`` and missing trailing slashes (308, HTML).
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False

    def __init__(self, proxy: Gateway) -> None:
        self._proxy = proxy

    @app.route("/v1/audio/<rest:subpath>", methods=sorted(m.decode() for m in _PROXIED))
    def audio(self, request: Request, subpath: str) -> Deferred[None]:
        # The router matched the percent-decoded path; the raw request.uri is what is
        # forwarded, so it must itself name /v1/audio/ (not "/v1/%61udio/..", "//v1/..", or
        # "8/v1/..", which the upstream would read differently).
        if not is_audio_target(request.uri):
            raise NotFound(f"no route for {request.uri.decode('latin-1')}")
        return self._proxy.forward(request)

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Request) -> bytes:
        """The process is up (it answers); never touches the upstream or the slot."""
        if not self._proxy.health_routes:
            raise NotFound("no route for /healthz")
        return _json(request, {"status": "ok"})

    @app.route("/readyz", methods=["GET"])
    async def readyz(self, request: Request) -> bytes:
        """The upstream accepts connections (a probe cached for a few seconds)."""
        if not self._proxy.health_routes:
            raise NotFound("no route for /readyz")
        if self._proxy.draining:
            raise Draining("the gateway is shutting down")
        answers = await gatherResults([probe.check() for probe in self._proxy.readiness])
        if not any(answers):
            raise NotReady(f"the Qwen3-TTS upstream cannot be reached; {COMPOSE_HINT}")
        return _json(request, {"status": "ready"})

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: Request) -> bytes:
        """Prometheus metrics."""
        if self._proxy.metrics_route is None:
            raise NotFound("no route for /metrics")
        # A scrape is a reading of now: no cache between here and Prometheus may keep it.
        request.setHeader(b"Cache-Control", b"no-store")
        return self._proxy.metrics_route.render_GET(request)

    @app.handle_errors(GatewayError)
    def gateway_error(self, request: IRequest, failure: Failure) -> bytes:
        return self.answer_failure(request, failure)

    @app.handle_errors(HTTPException)
    def routing_error(self, request: IRequest, failure: Failure) -> bytes:
        code = getattr(failure.value, "code", 404)
        error: GatewayError
        if code == 405:
            error = method_not_allowed(request.method)
        else:
            error = NotFound(f"no route for {request.path.decode('latin-1')}")
        return self.answer_error(request, error)

    @app.handle_errors(Exception)
    def unexpected_error(self, request: IRequest, failure: Failure) -> bytes:
        return self.answer_failure(request, failure)

    def forward(self, request: Request) -> Deferred[None]:
        """Proxy ``request`` (the fast path's way in: no route match, same checks)."""
        return self._proxy.forward(request)

    def answer_failure(self, request: IRequest, failure: Failure) -> bytes:
        """The envelope for ``failure``: a ``GatewayError``'s, else (logged) the internal one."""
        error = failure.value
        if not isinstance(error, GatewayError):
            _log.failure("unexpected error serving {uri}", failure, uri=request.uri)
            error = internal_error()
        return self.answer_error(request, error)

    def answer_error(self, request: IRequest, error: GatewayError) -> bytes:
        """``error``'s envelope (status and headers set on ``request``), its answer logged."""
        body = apply_error(request, error)
        self.log_error(request, error)
        return body

    def log_error(self, request: IRequest, error: GatewayError) -> None:
        """The access event of a request the gateway answered with ``error``."""
        if isinstance(error, GPUBusy):
            self._proxy.access_log.answered(
                request, error, slot="busy", queue_wait=error.queue_wait
            )
        else:
            self._proxy.access_log.answered(request, error)


def _json(request: IRequest, body: dict[str, str]) -> bytes:
    data = json.dumps(body).encode("utf-8")
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(data))
    request.setHeader(b"Cache-Control", b"no-store")
    return data


def proxied_directly(request: Request) -> bool:
    """Whether Klein would route ``request`` to ``_Routes.audio``: then it is forwarded directly.

    The route matches the percent-decoded path against ``/v1/audio/.+``: a raw path longer than
    the prefix matches unless it decodes to a newline (``.`` does not match one), which is
    left to the router, as are HEAD and OPTIONS.
    """
    if request.method not in _PROXIED:
        return False
    path = request.uri.split(b"?", 1)[0]
    return len(path) > len(PREFIX) and is_audio_target(path) and b"%0a" not in path.lower()


class _Guard(Resource):
    """Checks the raw request-target, then forwards a proxied call or hands over to Klein.

    The proxied route skips Klein (werkzeug's route match, the mapper, prepath bookkeeping: a
    large share of a small request's CPU, BENCHMARKS.rst "Where the time goes") but keeps what Klein
    does for it: a ``GatewayError`` answered with its envelope, any other failure logged and
    answered with the internal envelope, the call cancelled when the client goes away.

    With an embedder's ``root``, a target that is none of the gateway's paths (``owned``) is
    that tree's, served as a plain ``Site`` would serve it. The gateway's routes are at fixed
    paths from the site root: mounted below it (a ``putChild``) every request is refused.
    """

    isLeaf = True

    def __init__(
        self,
        routes: _Routes,
        access_log: AccessLog,
        root: IResource | None = None,
        owned: frozenset[bytes] = frozenset(),
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._routes = routes
        self._klein = routes.app.resource()
        self._access_log = access_log
        self._root = root
        self._owned = owned
        self._told_mount = False

    def owns(self, target: bytes) -> bool:
        """Whether ``target`` is the gateway's to answer (always, without a root)."""
        return self._root is None or owns_target(target, self._owned)

    def render(self, request: Request) -> Any:
        if request.prepath:
            return self._mounted_below_root(request)
        if self._root is not None and not owns_target(request.uri, self._owned):
            return getChildForRequest(self._root, request).render(request)
        self._access_log.arrived(request)
        tag_response(request)
        try:
            check_target(request.uri)
        except InvalidRequest as error:
            self._access_log.answered(request, error)
            write_error(request, error)
            return NOT_DONE_YET
        if proxied_directly(request):
            return self._forward(request)
        return self._klein.render(request)

    def _mounted_below_root(self, request: Request) -> Any:
        if not self._told_mount:
            self._told_mount = True
            mount = b"/" + b"/".join(request.prepath or []) + b"/"
            _log.error(
                "proxy.resource() is mounted at {mount}, below the site root: the gateway's "
                "routes are at fixed paths from the root (/v1/audio/*, /metrics, /healthz, "
                "/readyz); serve your own routes beside them with proxy.site(root=your_resource)",
                mount=mount.decode("latin-1"),
            )
        tag_response(request)
        error = GatewayError("the gateway is mounted below the site root; see its log")
        self._access_log.answered(request, error)
        write_error(request, error)
        return NOT_DONE_YET

    def _forward(self, request: Request) -> Any:
        over: list[bool] = []
        calls: list[Deferred[None]] = []

        def finished(result: object) -> None:
            over.append(True)
            if isinstance(result, Failure) and calls:
                # The client went away first (Klein's rule): cancelled, the router's Deferred
                # lets the call go (or leaves the queue).
                calls[0].cancel()

        request.notifyFinish().addBoth(finished)
        try:
            call = self._routes.forward(request)
        except GatewayError as error:
            # A refusal (the 503 of a busy GPU above all) is answered without a Failure (its
            # traceback would be made for nobody), and sent before it is logged.
            self._answer(request, apply_error(request, error))
            self._routes.log_error(request, error)
            return NOT_DONE_YET
        except Exception:
            self._failed(request, Failure(), over)
            return NOT_DONE_YET
        calls.append(call)
        call.addErrback(lambda failure: self._failed(request, failure, over))
        return NOT_DONE_YET

    def _failed(self, request: Request, failure: Failure, over: list[bool]) -> None:
        if over:
            return  # nothing can reach a client that has its answer or left
        self._answer(request, self._routes.answer_failure(request, failure))

    @staticmethod
    def _answer(request: Request, body: bytes) -> None:
        request.write(body)
        request.finish()
        send_now(request.transport)


def gateway_paths(proxy: Gateway) -> frozenset[bytes]:
    """The exact paths of the gateway's routes besides ``/v1/audio/*``: those it serves."""
    paths = set()
    if proxy.metrics_route is not None:
        paths.add(b"/metrics")
    if proxy.health_routes:
        paths |= {b"/healthz", b"/readyz"}
    return frozenset(paths)


def check_root(root: IResource, owned: frozenset[bytes]) -> None:
    """Refuse a ``root`` with a child where a gateway route is: it would never be reached."""
    for path in sorted(owned | {PREFIX.rstrip(b"/")}):
        node: object = root
        for name in path.strip(b"/").split(b"/"):
            children = getattr(node, "children", None)
            if not isinstance(children, dict) or name not in children:
                break
            node = children[name]
        else:
            where = path.decode("ascii")
            raise ConfigError(
                f"site(root=...): the root's own {where} would never be reached, the gateway "
                f"serves {where}; move it to another path"
            )


def build_resource(proxy: Gateway, root: IResource | None = None) -> _Guard:
    """The gateway's root resource; with ``root``, the paths it does not own go to that tree."""
    owned = gateway_paths(proxy)
    if root is not None:
        check_root(root, owned)
    return _Guard(_Routes(proxy), proxy.access_log, root, owned)
