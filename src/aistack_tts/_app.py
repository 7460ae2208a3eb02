"""Routes: Klein serves ``/v1/audio/<path>``; every other answer is an envelope.

The router sees percent-decoded paths, so the raw request-target is checked first (bytes a
URL may not hold, dot-segments climbing out of ``/v1/audio/``) and is what goes upstream.
Klein and werkzeug answer unknown routes with HTML and may redirect; those answers are turned
into envelopes here and never reach a client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from ._accesslog import log_request
from ._errors import (
    GatewayError,
    GPUBusy,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    apply_error,
    write_error,
)
from ._target import check_target

if TYPE_CHECKING:
    from ._proxy import TTSProxy

_log = Logger()


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

    def __init__(self, proxy: TTSProxy) -> None:
        self._proxy = proxy

    @app.route("/v1/audio/<rest:subpath>", methods=["GET", "POST", "DELETE"])
    def audio(self, request: Request, subpath: str) -> Deferred[None]:
        # ``subpath`` is decoded; the raw request.uri is what is forwarded.
        return self._proxy.forward(request)

    @app.handle_errors(GatewayError)
    def gateway_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, GatewayError)
        return _answer(request, error)

    @app.handle_errors(HTTPException)
    def routing_error(self, request: IRequest, failure: Failure) -> bytes:
        from ._proxy import ALLOW_HEADER

        code = getattr(failure.value, "code", 404)
        error: GatewayError
        if code == 405:
            error = MethodNotAllowed(
                f"method {request.method.decode('latin-1')} is not allowed here",
                headers=[ALLOW_HEADER],
            )
        else:
            error = NotFound(f"no route for {request.path.decode('latin-1')}")
        return _answer(request, error)

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        _log.failure("unexpected error serving {uri}", failure, uri=request.uri)
        return _answer(request, GatewayError("the gateway failed; see its log"))


def _answer(request: IRequest, error: GatewayError) -> bytes:
    log_request(
        request,
        status=error.status,
        outcome=error.type,
        slot="busy" if isinstance(error, GPUBusy) else "none",
    )
    return apply_error(request, error)


class _Guard(Resource):
    """Checks the raw request-target, then hands over to the Klein routes."""

    isLeaf = True

    def __init__(self, routes: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._routes = routes

    def render(self, request: Request) -> Any:
        try:
            check_target(request.uri)
        except InvalidRequest as error:
            log_request(request, status=error.status, outcome=error.type, slot="none")
            write_error(request, error)
            return NOT_DONE_YET
        return self._routes.render(request)


def build_resource(proxy: TTSProxy) -> IResource:
    """The gateway's root resource."""
    return _Guard(_Routes(proxy).app.resource())
