"""The proxied route's fast path: it takes exactly the requests Klein would route to it.

``_Guard`` forwards ``GET``/``POST``/``DELETE`` under ``/v1/audio/`` without Klein's route
match; every other request still goes through Klein. Each target below is checked against
the werkzeug map Klein itself matches with, so the two can never disagree.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.test.requesthelper import DummyChannel
from werkzeug.exceptions import HTTPException

from aistack_tts.server._routes import _Routes, proxied_directly
from aistack_tts.server._site import GatewayRequest
from aistack_tts.server._target import is_audio_target


def request(method: bytes, uri: bytes) -> GatewayRequest:
    channel: Any = DummyChannel()
    r = GatewayRequest(channel, max_body=1024)
    r.method, r.uri = method, uri
    return r


def klein_routes_to_audio(method: bytes, uri: bytes) -> bool:
    path = unquote(uri.split(b"?", 1)[0].decode("ascii"))
    adapter = _Routes.app.url_map.bind("gateway", path_info=path, default_method=method.decode())
    try:
        rule, _ = adapter.match(return_rule=True)
    except HTTPException:
        return False
    return str(rule.endpoint).endswith("audio")


TARGETS = [
    b"/v1/audio/speech",
    b"/v1/audio/voices?x=1",
    b"/v1/audio/",
    b"/v1/audio/?x=1",
    b"/v1/audio/a%0Ab",
    b"/v1/audio/%0a",
    b"/v1/audio/%2F",
    b"/v1/audio//x",
    b"/v1/audio/speech/stream",
    b"/v1/audiox",
    b"/v1/%61udio/speech",
    b"/healthz",
]


@pytest.mark.parametrize("uri", TARGETS)
@pytest.mark.parametrize("method", [b"GET", b"POST", b"DELETE", b"HEAD", b"OPTIONS", b"PUT"])
def test_the_fast_path_takes_only_what_the_audio_route_takes(method: bytes, uri: bytes) -> None:
    fast = proxied_directly(request(method, uri))
    if fast:
        assert klein_routes_to_audio(method, uri)
    # The route itself refuses a raw target that only decodes to /v1/audio/ (``%61udio``).
    routed = klein_routes_to_audio(method, uri) and is_audio_target(uri)
    assert fast == (routed and method in (b"GET", b"POST", b"DELETE"))


@given(st.text(alphabet="abc/%0aA2F?=.", max_size=12), st.sampled_from([b"GET", b"POST"]))
def test_any_path_under_the_prefix_agrees_with_the_router(rest: str, method: bytes) -> None:
    uri = b"/v1/audio/" + rest.encode()
    try:
        unquote(uri.decode(), errors="strict")
    except UnicodeDecodeError:
        return  # check_target refuses it before either path
    if proxied_directly(request(method, uri)):
        assert klein_routes_to_audio(method, uri)
