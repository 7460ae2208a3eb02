"""Hostile paths, in memory: what the upstream could make of a forwarded target.

Each test drives the gateway through the Harness (a StringTransport client, the real Agent over
a MemoryReactorClock) and looks at what the client got and what reached the upstream. Requests
Twisted's HTTP parser answers itself (a 400 ``invalid_request`` envelope with ``Date`` and a
close) never reach the gateway's code; RELIABILITY.rst lists them.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from aistack_tts import TTSProxy
from support.hostile import HYPOTHESIS, UPSTREAM_ADDRESS, Seen, early, get, is_parser_400
from support.wire import parse_response

# Paths: what the upstream could make of a forwarded target.


def resolve(target: bytes) -> bytes:
    """The path an upstream could take ``target`` to mean: the query dropped, percent-decoded
    once, backslashes read as slashes, dot-segments removed (RFC 3986 section 5.2.4)."""
    path = unquote_to_bytes(target.split(b"?", 1)[0]).replace(b"\\", b"/")
    out: list[bytes] = []
    for segment in path.split(b"/")[1:]:
        if segment == b"..":
            if out:
                out.pop()
        elif segment != b".":
            out.append(segment)
    trailing = path.endswith((b"/", b"/.", b"/.."))
    return b"/" + b"/".join(out) + (b"/" if trailing and out else b"")


def check_path_property(target: bytes) -> None:
    """Either the upstream gets ``target`` byte-exact and it stays under /v1/audio/, or
    nothing reaches the upstream and the client gets a 400/404 envelope (the parser's 400 for
    bytes it refuses)."""
    seen = Seen(get(target))
    assert not seen.failures
    if seen.forwarded:
        assert seen.attempts == [UPSTREAM_ADDRESS], f"connected to {seen.attempts}"
        forwarded = seen.upstream_target()
        assert forwarded == target
        assert forwarded.startswith(b"/v1/audio/")
        assert resolve(forwarded).startswith(b"/v1/audio/"), resolve(forwarded)
        return
    seen.assert_nothing_upstream()
    if is_parser_400(seen.answer):
        assert re.search(rb"[^\x21-\x7e]", target), "only raw bytes reach the parser's 400"
        return
    status = parse_response(seen.answer)[0]
    assert status in (400, 404), seen.answer
    seen.envelope(status, "invalid_request" if status == 400 else "not_found")


SEGMENTS = st.sampled_from(
    [
        b"..",
        b".",
        b"%2e%2e",
        b"%2E%2E",
        b"%2e.",
        b".%2E",
        b"%2e",
        b"...",
        b"..;x",
        b"a;v=1",
        b"a",
        b"voices",
        b"speech",
        b"%2f",
        b"%2F",
        b"%5c",
        b"%5C",
        b"\\",
        b"%00",
        b"a%00b",
        b"caf%c3%a9",
        b"%252e%252e",
        b"x%20y",
        b"%3f",
        b"%23",
        b"%",
        b"%zz",
        b"",
        b"\xff",
        b"\xc3\xa9",
        b"\x7f",
        b"\t",
    ]
)
SEPARATORS = st.sampled_from([b"/", b"\\", b"%2f", b"%5C", b"//"])
QUERIES = st.sampled_from([b"", b"?a=1", b"?x=/../../admin", b"?%00", b"?a=%2e%2e/"])


@st.composite
def audio_targets(draw: st.DrawFn) -> bytes:
    """A request-target starting with /v1/audio/, then dot-segments, encodings and odd bytes.

    Left out (each has its own test below): a last segment ending in ``;`` and
    percent-encoded bytes that are not UTF-8.
    """
    first = draw(SEGMENTS)
    rest = draw(st.lists(st.tuples(SEPARATORS, SEGMENTS), max_size=7))
    path = first + b"".join(sep + seg for sep, seg in rest)
    return b"/v1/audio/" + path + draw(QUERIES)


PREFIXES = st.sampled_from(
    [
        b"/v1/audio/",
        b"//v1/audio/",
        b"///v1/audio/",
        b"/v1//audio/",
        b"/./v1/audio/",
        b"/v1/audio/../audio/",
        b"/v1/%61udio/",
        b"/%761/audio/",
        b"/v1%2faudio/",
        b"/v1/audio%2f",
        b"@v1/audio/",
        b"1/v1/audio/",
        b"./v1/audio/",
        b":/v1/audio/",
        b"Xv1/audio/",
        b"v1/audio/",
        b"http://evil.test/v1/audio/",
        b"%2fv1/audio/",
    ]
)


@st.composite
def any_targets(draw: st.DrawFn) -> bytes:
    """Like audio_targets, with the /v1/audio/ prefix itself mangled or encoded."""
    return draw(PREFIXES) + draw(audio_targets())[len(b"/v1/audio/") :]


@HYPOTHESIS
@given(audio_targets())
@example(b"/v1/audio/../../etc/passwd")
@example(b"/v1/audio/%2e%2e/%2E%2E/admin")
@example(b"/v1/audio/voices%2f..%2f..%2fmetrics")
@example(b"/v1/audio/..\\..\\win")
@example(b"/v1/audio/%5c..%5c..%5cwin")
@example(b"/v1/audio/x%00.wav")
@example(b"/v1/audio/\xff\xfe")
@example(b"/v1/audio/..;x/..;x/admin")
def test_generated_paths_never_reach_upstream_outside_v1_audio(target: bytes) -> None:
    """Dot-segments (plain and percent-encoded), encoded slashes and backslashes, NUL, raw
    non-UTF-8 bytes: the upstream only ever gets the target byte-exact and inside
    /v1/audio/; everything else is a 400/404 envelope (the parser's 400 for raw bytes)."""
    check_path_property(target)


@HYPOTHESIS
@given(any_targets())
@example(b"/v1/%61udio/../../admin")
def test_generated_targets_with_any_prefix_never_leave_v1_audio(target: bytes) -> None:
    """As above with the prefix mangled too: nothing but /v1/audio/... ever goes upstream,
    and the gateway connects to nothing but its upstream."""
    check_path_property(target)


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/audio/../admin",
        b"/v1/audio/voices/../../../admin",
        b"/v1/audio/%2e%2e/admin",
        b"/v1/audio/%2E%2e/admin",
        b"/v1/audio/.%2e/admin",
        b"/v1/audio/x/%2e%2e%2f%2e%2e%2fadmin",
        b"/v1/audio/x%2f..%2f..%2fadmin",
        b"/v1/audio/..\\admin",
        b"/v1/audio/x\\..\\..\\admin",
        b"/v1/audio/x%5c..%5c..%5cadmin",
        b"/v1/audio/%00",
        b"/v1/audio/speech%00.wav",
        # "..;x" is ".." to servers that strip path parameters: refused too.
        b"/v1/audio/..;/..;/admin",
        b"/v1/audio/..;x/admin",
    ],
)
def test_climbing_or_nul_paths_are_400_envelopes(target: bytes) -> None:
    """A target that climbs out of /v1/audio/ (however spelled) or holds an encoded NUL is a
    400 invalid_request envelope; nothing reaches the upstream and the slot is not taken."""
    seen = Seen(get(target))
    seen.assert_nothing_upstream()
    seen.envelope(400, "invalid_request")


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/audio/%252e%252e/%252e%252e/admin",
        b"/v1/audio/caf%C3%A9",
        b"/v1/audio/voices/%2e%2e/speech",
    ],
)
def test_encodings_that_stay_inside_are_forwarded_byte_exact(target: bytes) -> None:
    """Double-encoded dots and percent-encoded UTF-8 are data,
    not dot-segments, to an upstream that decodes once (uvicorn): they go up byte for byte.
    So does a dot-segment that stays below /v1/audio/."""
    seen = Seen(get(target))
    assert seen.upstream_target() == target
    assert resolve(target).startswith(b"/v1/audio/")


@pytest.mark.parametrize(
    "target",
    [b"/v1/audio/\xff\xfe", b"/v1/audio/caf\xc3\xa9", b"/v1/audio/a\x00b", b"/v1/audio/a\tb"],
)
def test_raw_non_ascii_and_control_bytes_get_parsers_400(target: bytes) -> None:
    """Raw non-UTF-8 (or any non-ASCII) bytes, NUL or a tab in the request line: Twisted's
    parser refuses them (the channel's 400 envelope: no resource sees the request) and closes."""
    seen = Seen(get(target))
    assert is_parser_400(seen.answer)
    assert seen.client.closed
    seen.assert_nothing_upstream()


def test_raw_del_byte_in_path_is_a_400_envelope() -> None:
    """A raw DEL gets past Twisted's parser; the gateway refuses it with a 400 envelope."""
    seen = Seen(get(b"/v1/audio/a\x7fb"))
    seen.assert_nothing_upstream()
    seen.envelope(400, "invalid_request")


def test_overlong_path_under_the_line_limit_is_forwarded_byte_exact() -> None:
    """A 16,000-byte target (under Twisted's 16 KiB line limit) goes upstream whole."""
    target = b"/v1/audio/" + b"a" * 15_990
    seen = Seen(get(target))
    assert seen.upstream_target() == target


def test_overlong_request_line_is_414() -> None:
    """A request line over 16 KiB (LineReceiver.MAX_LENGTH, 16384): Twisted closed the
    connection without any answer; the channel answers 414; nothing reaches the upstream."""
    seen = Seen(get(b"/v1/audio/" + b"a" * 17_000))
    early(seen.answer, 414, "uri_too_long")
    assert seen.client.closed
    seen.assert_nothing_upstream()


def test_encoded_crlf_in_path_is_not_routed() -> None:
    """``%0d%0a`` in the path decodes to CR LF, which the route does not match: a 404
    envelope; the bytes never reach the upstream, encoded or not."""
    seen = Seen(get(b"/v1/audio/x%0d%0aX-Evil:%201"))
    seen.assert_nothing_upstream()
    seen.envelope(404, "not_found")


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/%61udio/../../admin",
        b"/%761/audio/%2e%2e/%2e%2e/admin",
        b"/v1%2faudio/../../admin",
        b"/v1/audio%2f../../admin",
        b"//v1/audio/../../admin",
        b"//v1/audio/speech",
    ],
)
def test_encoded_or_doubled_prefix_is_refused(target: bytes) -> None:
    """A target that only routes as /v1/audio/... once decoded (``%61udio``, ``%2f``) or
    once twisted.web drops its first byte (``//v1/audio/``) must be refused (404/400
    envelope), never forwarded with its dot-segments unchecked."""
    seen = Seen(get(target))
    seen.assert_nothing_upstream()
    assert parse_response(seen.answer)[0] in (400, 404)


def _connect_attempts(upstream: str, target: bytes) -> tuple[list[tuple[str, int]], bytes]:
    reactor = MemoryReactorClock()
    proxy = TTSProxy(upstream, reactor=reactor)
    protocol = proxy.site().buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(get(target))
    return [(host, port) for host, port, *_ in reactor.tcpClients], transport.value()


@pytest.mark.parametrize(
    ("upstream", "target"),
    [
        ("http://127.0.0.1:8091", b"1/v1/audio/speech"),
        ("http://127.0.0.1:80", b"8/v1/audio/speech"),
        ("http://127.0.0.1:8091", b"@v1/audio/speech"),
        ("http://127.0.0.1:8091", b"./v1/audio/speech"),
    ],
)
def test_target_not_starting_with_slash_never_changes_the_upstream(
    upstream: str, target: bytes
) -> None:
    """A request-target that is not origin-form must be refused (400/404 envelope) without
    the slot or any connection, and can never steer the gateway to another host or port."""
    attempts, answer = _connect_attempts(upstream, target)
    assert attempts == []
    assert parse_response(answer)[0] in (400, 404)


@pytest.mark.parametrize(
    ("target", "upstream_gets"),
    [
        (b"/v1/audio/..;", b"/v1/audio/.."),
        (b"/v1/audio/%2e%2e;", b"/v1/audio/%2e%2e"),
        (b"/v1/audio/x/..;?q=1", b"/v1/audio/x/..?q=1"),
        (b"/v1/audio/speech;", b"/v1/audio/speech"),
    ],
)
def test_trailing_semicolon_is_forwarded_byte_exact(target: bytes, upstream_gets: bytes) -> None:
    """A last segment ending in ``;`` goes upstream byte-exact (or is refused): the upstream
    must never get the bare dot-segment ``..`` that ``..;`` turns into without its ``;``."""
    seen = Seen(get(target))
    if seen.forwarded:
        assert seen.upstream_target() != upstream_gets
        assert seen.upstream_target() == target
    else:
        seen.envelope(400, "invalid_request")


@pytest.mark.parametrize(
    "target", [b"/v1/audio/%ff%fe", b"/v1/audio/%c0%ae%c0%ae/x", b"/v1/audio/caf%e9"]
)
def test_percent_encoded_non_utf8_gets_an_envelope_or_goes_up_byte_exact(target: bytes) -> None:
    """``%ff%fe`` in a path is valid URL syntax for bytes that are not UTF-8: either the
    upstream gets it byte-exact (percent-encoding untouched) or the client gets a 400
    envelope; nothing is logged as a failure."""
    seen = Seen(get(target))
    assert not seen.failures, [e.get("log_text") or e.get("log_format") for e in seen.failures]
    if seen.forwarded:
        assert seen.upstream_target() == target
    else:
        seen.envelope(400, "invalid_request")


def test_raw_fragment_is_refused_or_forwarded_byte_exact() -> None:
    """``#`` may not appear raw in a request-target: a 400 envelope, or else byte-exact."""
    seen = Seen(get(b"/v1/audio/speech#x"))
    if seen.forwarded:
        assert seen.upstream_target() == b"/v1/audio/speech#x"
    else:
        seen.envelope(400, "invalid_request")
