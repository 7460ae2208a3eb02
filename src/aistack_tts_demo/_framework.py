"""What the real server gets from its frameworks: FastAPI's request body, vLLM's error answers.

The lowest floor of the demo, with ``_api_error``. vLLM-Omni declares its routes with FastAPI
and validates bodies with pydantic v2; vLLM's handlers turn what fails into its
``ErrorResponse``. The demo validates with pydantic itself (so coercion and each error dict
come from the same library) and words the answer as those layers do:

- ``read_json_body``: FastAPI's body reading (``fastapi/routing.py``, ``get_request_handler``):
  parsed as JSON when the content type is JSON, left as bytes otherwise; an empty
  body is no body; bad JSON is a ``json_invalid`` error at the character it stopped.
- ``require_json``: vLLM's ``validate_json_request`` dependency (``vllm/entrypoints/openai/
  utils.py``), run after the body is read and before it is validated: a media type other
  than ``application/json`` is a validation error whose only entry is a sentence.
- ``validate``: the body against a pydantic model, errors located under ``"body"`` as FastAPI
  locates them (``include_url=False``).
- ``validation_error``: vLLM's ``validation_exception_handler``
  (``vllm/entrypoints/openai/server_utils.py`` @ 029329a8eded): ``str(exc)`` of FastAPI's
  ``RequestValidationError`` (``fastapi/exceptions.py``: "N validation error(s):", one line
  per error, the endpoint's context) then, when different, ``str(exc.errors())``; type
  ``"Bad Request"``, code 400, ``param`` null; ``sanitize_message`` drops object addresses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from email.message import Message
from typing import Any, TypeVar

import pydantic
from attrs import frozen

from ._api_error import APIError

M = TypeVar("M", bound=pydantic.BaseModel)

#: What ``read_json_body`` returns for a request without a body (FastAPI's ``None``).
NO_BODY: Any = None

#: vLLM's ``validate_json_request``: the one entry of its validation error.
_NOT_JSON = "Unsupported Media Type: Only 'application/json' is allowed"
_ADDRESS = re.compile(r" at 0x[0-9a-f]+>")

#: Where vLLM is installed in the ``vllm/vllm-omni`` image (vLLM's own image: Python 3.12,
#: ``/usr/local/lib/python3.12/dist-packages``). FastAPI names the file of the endpoint's
#: function, and vLLM-Omni's routes are wrapped by vLLM's ``with_cancellation``
#: (``functools.wraps``): ``inspect.getsourcefile`` does not unwrap, so the file is vLLM's
#: ``entrypoints/utils.py``, while ``getsourcelines`` does, so the line is the route's first
#: decorator in vLLM-Omni's ``api_server.py``.
VLLM_UTILS_FILE = "/usr/local/lib/python3.12/dist-packages/vllm/entrypoints/utils.py"


@frozen
class Endpoint:
    """A route as FastAPI names it in a validation error: function, file, line, method, path."""

    function: str
    line: int
    method: str
    path: str
    file: str = VLLM_UTILS_FILE

    def context(self) -> str:
        """FastAPI's ``_format_endpoint_context``."""
        where = f'  File "{self.file}", line {self.line}, in {self.function}'
        return f"\n{where}\n    {self.method} {self.path}"


class RequestInvalid(Exception):
    """FastAPI's ``RequestValidationError``: the error entries, and where they were found."""

    def __init__(self, errors: Sequence[Any], endpoint: Endpoint | None = None) -> None:
        super().__init__(errors)
        self.errors = list(errors)
        self.endpoint = endpoint

    def __str__(self) -> str:
        count = len(self.errors)
        lines = "".join(f"  {error}\n" for error in self.errors)
        context = self.endpoint.context() if self.endpoint is not None else ""
        return f"{count} validation error{'s' if count != 1 else ''}:\n{lines}{context}".rstrip()


def sanitize_message(message: str) -> str:
    """The message as vLLM's ``sanitize_message`` leaves it: no memory addresses."""
    return _ADDRESS.sub(">", message)


def validation_error(invalid: RequestInvalid) -> APIError:
    """The ``APIError`` vLLM's ``validation_exception_handler`` makes of a validation error."""
    text, listed = str(invalid), str(invalid.errors)
    message = f"{text} {listed}" if invalid.errors and listed != text else text
    return APIError(sanitize_message(message), type="Bad Request")


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        # FastAPI's ``strict_content_type`` (on by default in 0.136, the FastAPI that vLLM
        # 0.30 pins): a body without a content type is not parsed as JSON.
        return False
    message = Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def read_json_body(raw: bytes, content_type: str | None, endpoint: Endpoint) -> Any:
    """The body as FastAPI hands it on: parsed JSON, the bytes themselves, or ``NO_BODY``."""
    if not raw:
        return NO_BODY
    if not _is_json(content_type):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        error = {
            "type": "json_invalid",
            "loc": ("body", e.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": e.msg},
        }
        raise RequestInvalid([error], endpoint) from None
    except UnicodeDecodeError:
        # Starlette's ``Request.json`` decodes the bytes before parsing; FastAPI answers a
        # body it cannot decode as a 400 of its own ("There was an error parsing the body").
        raise APIError("There was an error parsing the body", type="Bad Request") from None


def require_json(content_type: str | None) -> None:
    """Refuse, as vLLM's ``validate_json_request``, a body not declared ``application/json``."""
    media_type = (content_type or "").lower().split(";", maxsplit=1)[0]
    if media_type != "application/json":
        raise RequestInvalid([_NOT_JSON])


def validate(model: type[M], body: Any, endpoint: Endpoint) -> M:
    """``body`` as ``model``, or the ``RequestInvalid`` FastAPI raises, located under "body"."""
    if body is NO_BODY:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestInvalid([missing], endpoint)
    try:
        # FastAPI's field validation reads attributes too, hence its "object to extract
        # fields from" for a body that is not a JSON object.
        return model.model_validate(body, from_attributes=True)
    except pydantic.ValidationError as e:
        errors = [
            {**error, "loc": ("body", *error["loc"])} for error in e.errors(include_url=False)
        ]
        raise RequestInvalid(errors, endpoint) from None


def json_request(model: type[M], raw: bytes, content_type: str | None, endpoint: Endpoint) -> M:
    """A JSON route's body checked as the real one is: read, media type, then the model.

    Raises ``APIError`` in vLLM's words for each way it can fail.
    """
    try:
        body = read_json_body(raw, content_type, endpoint)
        require_json(content_type)
        return validate(model, body, endpoint)
    except RequestInvalid as invalid:
        raise validation_error(invalid) from None
