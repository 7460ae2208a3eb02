"""The raw request-target checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aistack_tts import InvalidRequest
from aistack_tts.server._target import check_target


@given(st.binary(max_size=60))
def test_check_target_never_lets_a_climb_out(suffix: bytes) -> None:
    """Whatever follows /v1/audio/, a forwarded target never resolves outside it."""
    from posixpath import normpath
    from urllib.parse import unquote_to_bytes

    target = b"/v1/audio/" + suffix
    try:
        check_target(target)
    except InvalidRequest:
        return
    path = unquote_to_bytes(target.split(b"?")[0]).replace(b"\\", b"/")
    assert normpath(path.decode("latin-1")).startswith("/v1/audio")


def test_check_target_outside_audio_only_checks_bytes() -> None:
    """Other paths are the router's business (404), unless they hold forbidden bytes."""
    assert check_target(b"/v1/models") == b"/v1/models"
    with pytest.raises(InvalidRequest):
        check_target(b"/x\x00")
