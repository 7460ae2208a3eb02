"""The demo answers around its routes as the real server's frameworks do.

vLLM-Omni (vllm_omni/entrypoints/openai/api_server.py @ 005fd8eae138) builds vLLM's FastAPI app
(vllm/entrypoints/openai/api_server.py @ 0001948bc769, ``build_app``) and adds its router;
uvicorn serves it. vLLM registers its ``http_exception_handler`` for FastAPI's
``HTTPException`` only (vllm/entrypoints/openai/server_utils.py @ 029329a8eded), a subclass of
the Starlette one that routing raises, so 404/405 reach FastAPI's default handler:
``{"detail": …}`` (fastapi/exception_handlers.py, fastapi/applications.py @ c3f316b7e814).
"""

from __future__ import annotations

import json
import re

import pytest

from aistack_tts_demo._api_error import render_json
from aistack_tts_demo._routing import unexpected_error
from support.demo import Wire


def exchange(request: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """The status line, the headers (lower-cased names) and the body of one answer."""
    wire = Wire()
    wire.send(request)
    head, _, body = wire.received().partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b": ")
        headers[name.lower()] = value
    return status, headers, body


def get(method: str, path: str, *extra: str) -> tuple[bytes, dict[bytes, bytes], bytes]:
    lines = [f"{method} {path} HTTP/1.1", "Host: demo:8091", *extra, "Content-Length: 0"]
    return exchange(("\r\n".join(lines) + "\r\n\r\n").encode())


@pytest.mark.parametrize("path", ["/", "/v1/audio/nothing-here", "//", "/v1", "//health"])
def test_unknown_path_is_starlettes_404(path: str) -> None:
    """No route: ``Router.not_found`` raises HTTPException(404) (starlette/routing.py @
    cb8f84f5284d); FastAPI renders ``{"detail":"Not Found"}`` as a JSONResponse. ``//`` is not
    merged: with its slashes stripped it is empty, which no route matches."""
    status, headers, body = get("GET", path)
    assert status == b"HTTP/1.1 404 Not Found"
    assert body == b'{"detail":"Not Found"}'
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == b"22"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/audio/speech", b"POST"),
        ("PUT", "/v1/audio/voices", b"GET"),  # the GET route comes first in the router
        ("DELETE", "/v1/audio/voices", b"GET"),
        ("GET", "/v1/audio/voices/someone", b"DELETE"),
        ("POST", "/health", b"GET"),
        ("POST", "/v1/models", b"GET"),
        ("OPTIONS", "/v1/audio/speech", b"POST"),  # no Origin: not a CORS preflight
    ],
)
def test_wrong_method_is_405_allowing_the_first_matching_route(
    method: str, path: str, allow: bytes
) -> None:
    """A path match with another method is ``Match.PARTIAL``; the first such route answers
    405 with ``Allow`` its own methods only (starlette/routing.py @ cb8f84f5284d,
    ``Router.app``/``Route.handle``; vLLM-Omni's router defines GET /v1/audio/voices before
    POST)."""
    status, headers, body = get(method, path)
    assert status == b"HTTP/1.1 405 Method Not Allowed"
    assert headers[b"allow"] == allow
    assert body == b'{"detail":"Method Not Allowed"}'
    assert headers[b"content-type"] == b"application/json"


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/v1/audio/voices"])
def test_head_on_a_get_route_is_405(path: str) -> None:
    """FastAPI's ``APIRoute`` takes the methods it is given and adds no HEAD (unlike
    Starlette's ``Route``) (fastapi/routing.py @ c3f316b7e814): 405, no body on HEAD."""
    status, headers, body = get("HEAD", path)
    assert status == b"HTTP/1.1 405 Method Not Allowed"
    assert headers[b"allow"] == b"GET"
    assert body == b""


@pytest.mark.parametrize(
    ("method", "path", "location"),
    [
        ("GET", "/health/", b"http://demo:8091/health"),
        ("GET", "/health///", b"http://demo:8091/health"),
        ("GET", "/v1/models/?x=1&y=%20", b"http://demo:8091/v1/models?x=1&y=%20"),
        ("POST", "/v1/audio/speech/", b"http://demo:8091/v1/audio/speech"),
        # Partial matches count: the redirect leads to a 405.
        ("GET", "/v1/audio/speech/", b"http://demo:8091/v1/audio/speech"),
        ("DELETE", "/v1/audio/voices/", b"http://demo:8091/v1/audio/voices"),
        ("DELETE", "/v1/audio/voices/a%20b/", b"http://demo:8091/v1/audio/voices/a%20b"),
    ],
)
def test_trailing_slash_is_a_307_to_the_other_form(method: str, path: str, location: bytes) -> None:
    """``redirect_slashes``: no route matched, the path with its slashes stripped (or one
    added) matches some route, fully or partly → RedirectResponse, 307, empty, ``location``
    the absolute URL from the Host header, quoted (starlette/routing.py ``Router.app``,
    starlette/responses.py ``RedirectResponse``, starlette/datastructures.py ``URL`` @
    cb8f84f5284d)."""
    status, headers, body = get(method, path)
    assert status == b"HTTP/1.1 307 Temporary Redirect"
    assert headers[b"location"] == location
    assert (headers[b"content-length"], body) == (b"0", b"")
    assert b"content-type" not in headers


def test_missing_trailing_slash_is_not_redirected_when_no_route_has_it() -> None:
    """Only an existing route's form is a target: ``/v1/audio`` → 404 (no ``/v1/audio/``)."""
    assert get("GET", "/v1/audio")[0] == b"HTTP/1.1 404 Not Found"


def test_percent_encoded_path_matches_decoded() -> None:
    """uvicorn decodes the path before Starlette matches it (``scope["path"]``)."""
    status, _, body = get("GET", "/v1/audio/%76oices")
    assert status == b"HTTP/1.1 200 OK"
    assert json.loads(body)["voices"]


def test_health_is_vllms_empty_200() -> None:
    """vLLM's ``/health`` (vllm/entrypoints/serve/instrumentator/health.py @ 98b137c61dcf),
    ``Response(status_code=200)``, is in the app before vLLM-Omni's JSON one (vLLM-Omni's
    ``omni_run_server_worker`` removes only vLLM's /v1/chat/completions and /v1/models): it
    answers, empty, with no content-type."""
    status, headers, body = get("GET", "/health")
    assert status == b"HTTP/1.1 200 OK"
    assert (headers[b"content-length"], body) == (b"0", b"")
    assert b"content-type" not in headers


def test_models_is_vllms_model_list() -> None:
    """``OpenAIServingModels.show_available_models`` (vllm/entrypoints/openai/models/serving.py
    @ 4fe4500477d5): one ``ModelCard`` with ``max_model_len`` and one ``ModelPermission``
    (vllm/entrypoints/openai/engine/protocol.py @ d7e52523a55c), in field order; 4096 is the
    talker stage's max_model_len (vllm_omni/model_executor/stage_configs/
    qwen3_tts_no_async_chunk.yaml @ e9fb4356d154), the stage AsyncOmni takes its model_config
    from (vllm_omni/entrypoints/async_omni.py @ 87769a210d48)."""
    status, _, body = get("GET", "/v1/models")
    assert status == b"HTTP/1.1 200 OK"
    listing = json.loads(body)
    # Starlette's JSONResponse: compact separators (starlette/responses.py @ cb8f84f5284d).
    assert body == render_json(listing)
    assert b": " not in body
    assert list(listing) == ["object", "data"]
    [card] = listing["data"]
    name = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
    assert list(card) == [
        "id",
        "object",
        "created",
        "owned_by",
        "root",
        "parent",
        "max_model_len",
        "permission",
    ]
    assert card["id"] == card["root"] == name
    assert (card["object"], card["owned_by"], card["parent"]) == ("model", "vllm", None)
    assert card["max_model_len"] == 4096
    [permission] = card["permission"]
    assert re.fullmatch(r"modelperm-[0-9a-f]{32}", permission.pop("id"))
    assert isinstance(permission.pop("created"), int)
    assert permission == {
        "object": "model_permission",
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }


def test_json_answers_are_starlettes_rendering() -> None:
    """``JSONResponse.render``: ``ensure_ascii=False``, ``separators=(",", ":")`` (starlette/
    responses.py @ cb8f84f5284d); the voices list is one (vLLM-Omni's ``list_voices``)."""
    assert render_json({"a": ["é", None]}) == '{"a":["é",null]}'.encode()
    _, headers, body = get("GET", "/v1/audio/voices")
    assert body.startswith(b'{"voices":["aiden","dylan",')
    assert headers[b"content-type"] == b"application/json"


def test_delete_of_an_unknown_voice_is_compact_json() -> None:
    """vLLM-Omni's ``delete_voice`` answers its own 404 with a JSONResponse."""
    status, _, body = get("DELETE", "/v1/audio/voices/nobody")
    assert status == b"HTTP/1.1 404 Not Found"
    assert body == b'{"success":false,"error":"Voice \'nobody\' not found"}'


def test_server_header_is_uvicorns() -> None:
    """uvicorn sends ``server: uvicorn`` (its ``server_header`` default; vLLM's ``serve_http``
    does not change it, vllm/entrypoints/launcher.py @ 6cfc259b541d)."""
    assert get("GET", "/health")[1][b"server"] == b"uvicorn"
    assert get("GET", "/nowhere")[1][b"server"] == b"uvicorn"


def test_cors_preflight_is_answered_before_routing() -> None:
    """vLLM adds CORSMiddleware with every origin, method and header allowed (vllm/entrypoints/
    openai/cli_args.py @ 789340fbad95 defaults; api_server.py ``build_app``); a preflight is
    answered by it, "OK" as text (starlette/middleware/cors.py @ cb8f84f5284d)."""
    status, headers, body = get(
        "OPTIONS",
        "/v1/audio/speech",
        "Origin: http://app.example",
        "Access-Control-Request-Method: POST",
        "Access-Control-Request-Headers: content-type, x-custom",
    )
    assert status == b"HTTP/1.1 200 OK"
    assert body == b"OK"
    assert headers[b"access-control-allow-origin"] == b"*"
    assert (
        headers[b"access-control-allow-methods"] == b"DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
    )
    assert headers[b"access-control-max-age"] == b"600"
    assert headers[b"access-control-allow-headers"] == b"content-type, x-custom"
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"


def test_cors_preflight_of_an_unknown_method_is_400() -> None:
    status, _, body = get(
        "OPTIONS", "/health", "Origin: http://a", "Access-Control-Request-Method: FETCH"
    )
    assert (status, body) == (b"HTTP/1.1 400 Bad Request", b"Disallowed CORS method")


def test_an_origin_gets_allow_origin_on_every_answer() -> None:
    """``simple_response``: ``*``, or the origin itself with ``Vary`` when cookies come."""
    assert get("GET", "/nowhere", "Origin: http://a")[1][b"access-control-allow-origin"] == b"*"
    _, headers, _ = get("GET", "/v1/models", "Origin: http://a", "Cookie: c=1")
    assert (headers[b"access-control-allow-origin"], headers[b"vary"]) == (b"http://a", b"Origin")
    assert b"access-control-allow-origin" not in get("GET", "/v1/models")[1]


@pytest.mark.parametrize(
    ("exception", "status", "body"),
    [
        # serve_http's RuntimeError handler: an empty 500 (vllm/entrypoints/launcher.py @
        # 6cfc259b541d, _add_shutdown_handlers); NotImplementedError is a RuntimeError.
        (RuntimeError("x"), 500, None),
        (NotImplementedError("x"), 500, None),
        # vLLM's exception_handler → create_error_response (vllm/entrypoints/openai/
        # server_utils.py @ 029329a8eded; vllm/entrypoints/utils.py's mapping).
        (ValueError("bad <obj at 0xdeadbeef>"), 400, b"BadRequestError"),
        (KeyError("k"), 500, b"InternalServerError"),
    ],
)
def test_unexpected_errors_are_answered_as_vllm_does(
    exception: BaseException, status: int, body: bytes | None
) -> None:
    got_status, got_body = unexpected_error(exception)
    assert got_status == status
    if body is None:
        assert got_body is None
        return
    assert got_body is not None
    error = json.loads(got_body)["error"]
    assert list(error) == ["message", "type", "param", "code"]
    assert (error["type"].encode(), error["code"], error["param"]) == (body, status, None)
    assert "0x" not in error["message"]  # sanitize_message
