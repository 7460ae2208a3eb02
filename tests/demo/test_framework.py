"""The demo's framework layer: FastAPI's body reading and vLLM's validation answer.

Expectations are what FastAPI 0.136 (vLLM 0.30 and 0.32 pin ``fastapi>=0.133,<0.137``;
``fastapi/routing.py`` ``get_request_handler``,
``fastapi/exceptions.py`` ``ValidationException.__str__``) with vLLM's
``validation_exception_handler`` (``vllm/entrypoints/openai/server_utils.py`` @ 029329a8eded)
and ``validate_json_request`` (``vllm/entrypoints/openai/utils.py``) answered for the same
bodies, checked side by side against a FastAPI app with the same pydantic model.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pydantic
import pytest

from aistack_tts_demo._api_error import APIError, render_json
from aistack_tts_demo._framework import Endpoint, json_request

ENDPOINT = Endpoint(function="create_speech", line=24, method="POST", path="/v1/audio/speech")
WHERE = (
    '\n\n  File "/usr/local/lib/python3.12/dist-packages/vllm/entrypoints/utils.py", line 24, '
    "in create_speech\n    POST /v1/audio/speech"
)


class Body(pydantic.BaseModel):
    input: str
    response_format: Literal["wav", "pcm"] = "wav"
    speed: float = pydantic.Field(default=1.0, ge=0.25, le=4.0)
    stream: bool = False


def refusal(raw: bytes, content_type: str | None = "application/json") -> dict[str, Any]:
    with pytest.raises(APIError) as caught:
        json_request(Body, raw, content_type, ENDPOINT)
    assert caught.value.status == 400
    error: dict[str, Any] = json.loads(caught.value.body())["error"]
    assert error["type"] == "Bad Request"
    assert error["code"] == 400
    assert error["param"] is None
    return error


def test_lax_mode_coerces_as_pydantic_does() -> None:
    body = json_request(
        Body, b'{"input": "hi", "speed": "2", "stream": "false"}', "application/json", ENDPOINT
    )
    assert (body.speed, body.stream) == (2.0, False)


def test_missing_field_message_is_fastapi_str_then_the_error_list() -> None:
    entry = "{'type': 'missing', 'loc': ('body', 'input'), 'msg': 'Field required', 'input': {}}"
    assert refusal(b"{}")["message"] == f"1 validation error:\n  {entry}{WHERE} [{entry}]"


def test_two_errors_are_counted_and_listed() -> None:
    message = refusal(b'{"input": 5, "stream": "nope"}')["message"]
    assert message.startswith(
        "2 validation errors:\n  {'type': 'string_type', 'loc': ('body', 'input')"
    )
    assert "'type': 'bool_parsing', 'loc': ('body', 'stream')" in message


def test_bad_json_is_located_at_the_character() -> None:
    entry = (
        "{'type': 'json_invalid', 'loc': ('body', 9), 'msg': 'JSON decode error', "
        "'input': {}, 'ctx': {'error': 'Expecting value'}}"
    )
    assert refusal(b'{"input":')["message"] == f"1 validation error:\n  {entry}{WHERE} [{entry}]"


def test_body_not_an_object() -> None:
    assert "'type': 'model_attributes_type', 'loc': ('body',)" in refusal(b"[1]")["message"]


def test_empty_body_is_no_body() -> None:
    assert (
        "{'type': 'missing', 'loc': ('body',), 'msg': 'Field required', 'input': None}"
        in (refusal(b"")["message"])
    )


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_media_type_other_than_json_is_refused(content_type: str | None) -> None:
    # vLLM's validate_json_request: a validation error whose only entry is a sentence, so no
    # endpoint context; the list's repr uses double quotes around the quoted media type.
    sentence = "Unsupported Media Type: Only 'application/json' is allowed"
    assert refusal(b'{"input": "hi"}', content_type)["message"] == (
        f'1 validation error:\n  {sentence} ["{sentence}"]'
    )


def test_json_with_parameters_is_json() -> None:
    assert json_request(Body, b'{"input": "hi"}', "Application/JSON; charset=utf-8", ENDPOINT)


def test_a_body_that_cannot_be_decoded() -> None:
    # FastAPI's HTTPException(400, "There was an error parsing the body"), which vLLM's
    # http_exception_handler answers with the status phrase as the type.
    assert refusal(b"\xff\xfe{")["message"] == "There was an error parsing the body"


def test_render_json_is_starlettes() -> None:
    # starlette/responses.py JSONResponse.render
    assert render_json({"a": "é", "b": [1, None]}) == '{"a":"é","b":[1,null]}'.encode()
