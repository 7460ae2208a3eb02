"""The error envelope: failures described and mapped to the gateway's errors."""

from __future__ import annotations

import json

import pytest
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from aistack_tts._errors import describe, error_for_upstream_failure


def test_describe_unwraps_twisted_wrappers() -> None:
    """Wrapper exceptions show their reasons, not a repr of a list."""
    wrapped = ResponseNeverReceived([Failure(ConnectionRefusedError("nope"))])
    assert describe(wrapped).startswith("ResponseNeverReceived: ConnectionRefusedError:")
    assert describe(ValueError()) == "ValueError"


def test_error_mapping() -> None:
    """Connect failures → 503, timeouts → 504, anything else → 502."""
    refused = Failure(ConnectionRefusedError())
    assert error_for_upstream_failure(refused, timed_out=False, retry_after=5).status == 503
    assert error_for_upstream_failure(refused, timed_out=True, retry_after=5).status == 504
    other = Failure(ValueError("bad"))
    error = error_for_upstream_failure(other, timed_out=False, retry_after=5)
    assert (error.status, error.message) == (502, "ValueError: bad")
    assert json.loads(error.envelope())["error"]["provider"] == "qwen3-tts"


@pytest.mark.parametrize("wrapped", [False, True])
def test_out_of_descriptors_is_the_gateways_own_503(wrapped: bool) -> None:
    """EMFILE making the upstream socket: 503 from aistack, not a refusal by the upstream."""
    import errno

    from twisted.internet.error import ConnectBindError

    from aistack_tts._errors import is_connect_failure, local_exhaustion

    bind = Failure(ConnectBindError(errno.EMFILE, "Too many open files"))
    failure = Failure(ResponseNeverReceived([bind])) if wrapped else bind
    assert local_exhaustion(failure) == errno.EMFILE
    assert not is_connect_failure(failure), "so the upstream is not marked down"
    error = error_for_upstream_failure(failure, timed_out=False, retry_after=5)
    assert (error.status, error.type, error.provider) == (
        503,
        "local_resource_exhausted",
        "aistack",
    )
    assert "open file descriptors (EMFILE)" in error.message
    assert dict(error.headers) == {b"Retry-After": b"1"}
    other_bind = Failure(ConnectBindError(errno.EADDRNOTAVAIL, "no address"))
    assert local_exhaustion(other_bind) is None
    assert is_connect_failure(other_bind)
