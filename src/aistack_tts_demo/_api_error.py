"""The demo's errors, in vLLM's shape: where every check of a request may end.

The lowest floor of the demo: each request check (speech, voices, batch) raises ``APIError``,
and the routes answer it as vLLM does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class APIError(Exception):
    """An error answered in vLLM's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "BadRequestError",  # the envelope's name for it
        param: str | None = None,
        headers: Mapping[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        """The JSON body, with ``code`` an integer as vLLM sends it."""
        error = {"message": self.message, "type": self.type, "param": self.param}
        return render_json({"error": {**error, "code": self.status}})


def render_json(payload: Any) -> bytes:
    """JSON as Starlette's ``JSONResponse`` renders it: compact, UTF-8, no NaN."""
    return json.dumps(
        payload, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def not_found(message: str, param: str | None = None) -> APIError:
    return APIError(message, status=404, type="NotFoundError", param=param)
