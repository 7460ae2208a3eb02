"""Hostile input, in memory: looking at one exchange (what the client got, what reached the
upstream) and the parser's own 400, for the test_hostile_* modules.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings

from support.harness import Harness
from support.logs import LogCapture
from support.wire import parse_response


def is_parser_400(answer: bytes) -> bool:
    """The channel's own 400 (not a resource's): an ``invalid_request`` envelope with ``Date``
    and ``Connection: close``, written before any resource saw the request."""
    if not answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"):
        return False
    _status, headers, body = parse_response(answer)
    if headers.get(b"connection") != [b"close"] or b"server" in headers:
        return False
    error = json.loads(body)["error"]
    assert (error["type"], error["provider"]) == ("invalid_request", "aistack"), error
    assert len(headers[b"date"]) == 1
    return True


UPSTREAM_ADDRESS = ("127.0.0.1", 8091)
HYPOTHESIS = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# Looking at one exchange.


class Seen:
    """One request through a fresh gateway: the client's bytes and the upstream's."""

    def __init__(self, raw: bytes, **proxy: Any) -> None:
        self.harness = Harness(**proxy)
        with LogCapture() as logs:
            self.client = self.harness.request(raw)
            self.attempts = [(host, port) for host, port, *_ in self.harness.reactor.tcpClients]
            self.upstream = (
                self.harness.upstream().received() if self.attempts == [UPSTREAM_ADDRESS] else None
            )
        self.failures = logs.failures()

    @property
    def answer(self) -> bytes:
        return self.client.received()

    @property
    def forwarded(self) -> bool:
        return bool(self.attempts)

    def upstream_target(self) -> bytes:
        assert self.upstream is not None
        line = self.upstream.split(b"\r\n", 1)[0]
        _method, target, version = line.split(b" ")
        assert version == b"HTTP/1.1"
        return target

    def upstream_headers(self) -> list[tuple[bytes, bytes]]:
        assert self.upstream is not None
        head = self.upstream.partition(b"\r\n\r\n")[0]
        return [
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        ]

    def upstream_body(self) -> bytes:
        assert self.upstream is not None
        return self.upstream.partition(b"\r\n\r\n")[2]

    def assert_nothing_upstream(self) -> None:
        assert self.attempts == [], f"the gateway connected to {self.attempts}"
        assert self.harness.tokens == 1, "the slot was taken"
        assert not self.failures

    def envelope(self, status: int, kind: str) -> dict[str, Any]:
        got, headers, body = parse_response(self.answer)
        assert got == status, self.answer
        assert headers[b"content-type"] == [b"application/json"]
        error = json.loads(body)["error"]
        assert isinstance(error, dict)
        assert (error["type"], error["code"], error["provider"]) == (kind, kind, "aistack")
        return error


def get(target: bytes, headers: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n" + headers + b"\r\n"


def early(answer: bytes, status: int, kind: str) -> None:
    """A channel's answer before routing: ``status`` with a ``kind`` envelope, Date, close."""
    code, headers, body = parse_response(answer)
    assert code == status, answer[:200]
    assert json.loads(body)["error"]["type"] == kind
    assert headers[b"connection"] == [b"close"]
    assert b"date" in headers
