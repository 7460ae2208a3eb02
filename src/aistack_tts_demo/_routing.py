"""What the real server's frameworks answer around its routes: Starlette, FastAPI, uvicorn.

vLLM-Omni is a FastAPI app (vLLM's ``build_app`` plus vLLM-Omni's router), served by uvicorn.
Before a route runs, Starlette's router decides between the route (a full match), 405 (the path
matches, the method does not), a 307 to the path with or without its trailing slash, or 404;
FastAPI answers the last ones with ``{"detail": …}``. vLLM adds CORS (every origin) in front.
This module says the same for the demo, so ``DemoRoot`` hands Klein only what the real app
would hand a route.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import quote, unquote

from attrs import frozen
from twisted.web.iweb import IRequest

from ._api_error import render_json

#: uvicorn names itself in every answer (``server_header`` on by default).
SERVER = b"uvicorn"


@frozen
class Route:
    """One HTTP route of the real app: its path and its methods, as ``Allow`` lists them."""

    path: str
    methods: tuple[str, ...]

    @property
    def regex(self) -> re.Pattern[str]:
        # Starlette's ``{name}`` is ``[^/]+``; nothing else in these paths is special.
        return re.compile("^" + re.sub(r"\{[a-z_]+\}", "[^/]+", self.path) + "$")


#: The demo's HTTP routes in the real app's order (``app.routes``): vLLM's ``build_app`` first
#: (its ``/health``, which shadows vLLM-Omni's), then vLLM-Omni's router, whose ``/v1/models``
#: replaces vLLM's. The WebSocket ``/v1/audio/speech/stream`` never matches plain HTTP.
ROUTES: tuple[Route, ...] = (
    Route("/health", ("GET",)),
    Route("/v1/audio/speech", ("POST",)),
    Route("/v1/audio/speech/batch", ("POST",)),
    Route("/v1/audio/voices", ("GET",)),
    Route("/v1/audio/voices", ("POST",)),
    Route("/v1/audio/voices/{name}", ("DELETE",)),
    Route("/v1/models", ("GET",)),
)

Match = Literal["full", "partial", "none"]


def route_path(request: IRequest) -> str:
    """The path Starlette matches: the request target's path, percent-decoded (uvicorn)."""
    raw = (request.uri or b"/").partition(b"?")[0]
    return unquote(raw.decode("latin-1"))


def match(path: str, method: str) -> tuple[Match, Route | None]:
    """Starlette's ``Router``: the first full match, else the first partial one (405)."""
    partial: Route | None = None
    for route in ROUTES:
        if route.regex.match(path):
            if method in route.methods:
                return "full", route
            partial = partial or route
    return ("partial", partial) if partial else ("none", None)


def respond(
    request: IRequest,
    status: int,
    body: bytes,
    content_type: bytes | None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """Answer as a Starlette ``Response``: given headers, then length, then type."""
    request.setResponseCode(status)
    for name, value in headers:
        request.setHeader(name, value)
    request.setHeader(b"content-length", b"%d" % len(body))
    if content_type is None:
        # Starlette sends no content-type for an empty Response; Twisted would add text/html.
        request.defaultContentType = None  # type: ignore[attr-defined]
    else:
        request.setHeader(b"content-type", content_type)
    return body


def detail(request: IRequest, status: int, text: str, *headers: tuple[bytes, bytes]) -> bytes:
    """FastAPI's handler for Starlette's ``HTTPException``: ``{"detail": …}``."""
    return respond(request, status, render_json({"detail": text}), b"application/json", headers)


def redirect_target(request: IRequest, path: str) -> str | None:
    """Starlette's ``redirect_slashes``: the URL with the slash toggled, if a route would match.

    Any match counts, a partial one too (the redirect may lead to a 405).
    """
    if path == "/":
        return None
    other = path.rstrip("/") if path.endswith("/") else path + "/"
    method = request.method.decode("latin-1")
    if match(other, method)[0] == "none":
        return None
    hosts = request.requestHeaders.getRawHeaders(b"host")
    if hosts:
        url = f"http://{hosts[0].decode('latin-1')}{other}"
    else:
        address = request.getHost()
        port = "" if address.port == 80 else f":{address.port}"
        url = f"http://{address.host}{port}{other}"
    query = (request.uri or b"").partition(b"?")[2]
    if query:
        url += "?" + query.decode()
    return quote(url, safe=":/%#?=@[]!$&'()*+,;")


# --- CORS: vLLM's CORSMiddleware with its defaults (every origin, method and header) ---------

_CORS_METHODS = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"


def cors_preflight(request: IRequest) -> bytes | None:
    """Answer a CORS preflight as Starlette's ``CORSMiddleware`` does, or ``None`` if not one."""
    headers = request.requestHeaders
    if request.method != b"OPTIONS" or not headers.hasHeader(b"origin"):
        return None
    methods = headers.getRawHeaders(b"access-control-request-method")
    if not methods:
        return None
    answer: list[tuple[bytes, bytes]] = [
        (b"access-control-allow-origin", b"*"),
        (b"access-control-allow-methods", _CORS_METHODS.encode()),
        (b"access-control-max-age", b"600"),
    ]
    requested = headers.getRawHeaders(b"access-control-request-headers")
    if requested:
        answer.append((b"access-control-allow-headers", requested[0]))
    allowed = methods[0].decode("latin-1") in _CORS_METHODS.split(", ")
    status, body = (200, b"OK") if allowed else (400, b"Disallowed CORS method")
    return respond(request, status, body, b"text/plain; charset=utf-8", tuple(answer))


def cors_simple(request: IRequest) -> None:
    """Add the header any answer to a request with an ``Origin`` carries.

    ``*``, or the origin itself with ``Vary`` when the request also sends cookies.
    """
    headers = request.requestHeaders
    origins = headers.getRawHeaders(b"origin")
    if not origins:
        return
    if headers.hasHeader(b"cookie"):
        request.setHeader(b"access-control-allow-origin", origins[0])
        request.setHeader(b"vary", b"Origin")
    else:
        request.setHeader(b"access-control-allow-origin", b"*")


# --- unexpected errors: vLLM's handlers ------------------------------------------------------


def unexpected_error(exception: BaseException) -> tuple[int, bytes | None]:
    """What vLLM answers for an exception no route caught: status and JSON body.

    ``RuntimeError`` (``NotImplementedError`` is one) meets ``serve_http``'s handler, an empty
    500; the rest meet ``exception_handler`` (``create_error_response``): a ``ValueError``,
    ``TypeError`` or ``OverflowError`` is a 400, anything else a 500, the message ``str(exc)``.
    """
    if isinstance(exception, RuntimeError):
        return 500, None
    if isinstance(exception, (ValueError, TypeError, OverflowError)):
        status, kind = 400, "BadRequestError"
    else:
        status, kind = 500, "InternalServerError"
    # vLLM's sanitize_message: no memory addresses from object reprs.
    message = re.sub(r" at 0x[0-9a-f]+>", ">", str(exception))
    error = {"message": message, "type": kind, "param": None, "code": status}
    return status, render_json({"error": error})
