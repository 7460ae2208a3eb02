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
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from ._accesslog import AccessLog, tag_response
from ._errors import (
    COMPOSE_HINT,
    Draining,
    GatewayError,
    GPUBusy,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    NotReady,
    apply_error,
    write_error,
)
from ._health import ReadinessProbe
from ._metrics import MetricsResource
from ._protocol import ALLOW_HEADER
from ._target import check_target, is_audio_target

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

    @app.route("/v1/audio/<rest:subpath>", methods=["GET", "POST", "DELETE"])
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
        error = failure.value
        assert isinstance(error, GatewayError)
        return self._answer(request, error)

    @app.handle_errors(HTTPException)
    def routing_error(self, request: IRequest, failure: Failure) -> bytes:
        code = getattr(failure.value, "code", 404)
        error: GatewayError
        if code == 405:
            error = MethodNotAllowed(
                f"method {request.method.decode('latin-1')} is not allowed here",
                headers=[ALLOW_HEADER],
            )
        else:
            error = NotFound(f"no route for {request.path.decode('latin-1')}")
        return self._answer(request, error)

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        _log.failure("unexpected error serving {uri}", failure, uri=request.uri)
        return self._answer(request, GatewayError("the gateway failed; see its log"))

    def _answer(self, request: IRequest, error: GatewayError) -> bytes:
        body = apply_error(request, error)
        if isinstance(error, GPUBusy):
            self._proxy.access_log.answered(
                request, error, slot="busy", queue_wait=error.queue_wait
            )
        else:
            self._proxy.access_log.answered(request, error)
        return body


def _json(request: IRequest, body: dict[str, str]) -> bytes:
    data = json.dumps(body).encode("utf-8")
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(data))
    request.setHeader(b"Cache-Control", b"no-store")
    return data


class _Guard(Resource):
    """Checks the raw request-target, then hands over to the Klein routes."""

    isLeaf = True

    def __init__(self, routes: IResource, access_log: AccessLog) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._routes = routes
        self._access_log = access_log

    def render(self, request: Request) -> Any:
        self._access_log.arrived(request)
        tag_response(request)
        try:
            check_target(request.uri)
        except InvalidRequest as error:
            self._access_log.answered(request, error)
            write_error(request, error)
            return NOT_DONE_YET
        return self._routes.render(request)


def build_resource(proxy: Gateway) -> IResource:
    """The gateway's root resource."""
    return _Guard(_Routes(proxy).app.resource(), proxy.access_log)
