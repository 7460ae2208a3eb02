"""Hostile input, in memory: paths, headers, bodies and methods a client should not send.

Each test drives the gateway through the Harness (a StringTransport client, the real Agent over
a MemoryReactorClock) and looks at two things: what the client got, and what reached the
upstream (its StringTransport's bytes, and whether a connection was attempted at all). Some
malformed requests never reach the gateway's code: Twisted's HTTP parser answers them itself
(the gateway's channel turns them into a 400 ``invalid_request`` envelope with ``Date`` and a
close) or closes the connection; those tests
assert that behaviour and that nothing reached the upstream, and RELIABILITY.rst lists them.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from aistack_tts import TTSProxy
from support.harness import Harness, Peer
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


def early(answer: bytes, status: int, kind: str) -> None:
    """A channel's answer before routing: ``status`` with a ``kind`` envelope, Date, close."""
    code, headers, body = parse_response(answer)
    assert code == status, answer[:200]
    assert json.loads(body)["error"]["type"] == kind
    assert headers[b"connection"] == [b"close"]
    assert b"date" in headers


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


# Headers.


@pytest.mark.parametrize(
    "headers",
    [
        b"Host: gw\r\nX-A: a\rX-Injected: b\r\n",
        b"Host: gw\r\nX-A: a\nX-Injected: b\r\n",
        b"Host: gw\r\nX-A: a\x00b\r\n",
        b"Host: gw\r\nX-A : a\r\n",
        b" X-A: a\r\nHost: gw\r\n",
    ],
    ids=["bare-cr", "bare-lf", "nul", "space-before-colon", "first-line-folded"],
)
def test_header_injection_gets_parsers_400(headers: bytes) -> None:
    """A bare CR or LF inside a header line (header injection), a NUL, whitespace before the
    colon, a first header line that starts with whitespace (a fold with nothing to fold
    into): Twisted's parser refuses it (the channel's 400) and closes; nothing reaches the
    upstream."""
    seen = Seen(b"GET /v1/audio/voices HTTP/1.1\r\n" + headers + b"\r\n")
    assert is_parser_400(seen.answer)
    assert seen.client.closed
    seen.assert_nothing_upstream()


def test_crlf_in_request_line_gets_parsers_400() -> None:
    """CR LF inside the request-target splits the request line: the parser's 400."""
    seen = Seen(b"GET /v1/audio/x\r\nX-Injected: 1 HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert is_parser_400(seen.answer)
    seen.assert_nothing_upstream()


def test_encoded_crlf_in_header_value_is_forwarded_as_text() -> None:
    """``%0d%0a`` in a header value is just text: it goes upstream as those bytes, and no
    header line is injected."""
    seen = Seen(get(b"/v1/audio/voices", b"X-A: a%0d%0aX-Injected: 1\r\n"))
    assert (b"x-a", b"a%0d%0aX-Injected: 1") in seen.upstream_headers()
    assert b"x-injected" not in {name for name, _ in seen.upstream_headers()}


def test_obsolete_line_folding_is_unfolded_not_injected() -> None:
    """A folded header (obs-fold) reaches the upstream as one line (Twisted joins it with a
    space), never as a second header line."""
    seen = Seen(get(b"/v1/audio/voices", b"X-A: a\r\n X-Injected: 1\r\n"))
    assert (b"x-a", b"a X-Injected: 1") in seen.upstream_headers()
    assert b"x-injected" not in {name for name, _ in seen.upstream_headers()}


def test_header_line_over_16_kib_is_431() -> None:
    """One header line over 16 KiB: Twisted closed the connection without an answer."""
    seen = Seen(get(b"/v1/audio/voices", b"X-Big: " + b"a" * 17_000 + b"\r\n"))
    early(seen.answer, 431, "request_header_too_large")
    assert seen.client.closed
    seen.assert_nothing_upstream()


def test_header_block_over_16_kib_is_431() -> None:
    """Headers totalling over 16 KiB (HTTPChannel.totalHeadersSize) in lines under the line
    limit: 431 (Twisted's was a bare 400), and a close."""
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 2000) for i in range(10))
    seen = Seen(get(b"/v1/audio/voices", headers))
    early(seen.answer, 431, "request_header_too_large")
    assert seen.client.closed
    seen.assert_nothing_upstream()


def test_more_than_500_headers_get_parsers_400() -> None:
    """Over 500 header lines (HTTPChannel.maxHeaders): the parser's 400."""
    headers = b"".join(b"X-%d: a\r\n" % i for i in range(600))
    seen = Seen(get(b"/v1/audio/voices", headers))
    assert is_parser_400(seen.answer)
    seen.assert_nothing_upstream()


def test_header_block_just_under_the_limit_is_forwarded() -> None:
    """15 KB of headers is under the limit: all of it goes upstream."""
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(15))
    seen = Seen(get(b"/v1/audio/voices", headers))
    assert (
        sum(name.startswith(b"x-") and name[2:].isdigit() for name, _ in seen.upstream_headers())
        == 15
    )


@pytest.mark.parametrize(
    "lengths",
    [
        b"Content-Length: 3\r\nContent-Length: 5\r\n",
        b"Content-Length: 3\r\nContent-Length: 3\r\n",
        b"Content-Length: 3, 5\r\n",
        b"Content-Length: 3, 3\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: +3\r\n",
        b"Content-Length: 0x3\r\n",
    ],
    ids=["conflicting", "duplicate", "list", "list-same", "negative", "plus", "hex"],
)
def test_bad_content_length_gets_parsers_400(lengths: bytes) -> None:
    """Duplicate, conflicting, listed or non-decimal Content-Length: Twisted's parser refuses
    them (the channel's 400) and closes before any body is read; nothing reaches the upstream."""
    seen = Seen(b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\n" + lengths + b"\r\nabcde")
    assert is_parser_400(seen.answer)
    assert seen.client.closed
    seen.assert_nothing_upstream()


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Transfer-Encoding: xchunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding : chunked\r\n",
        b"Transfer-Encoding: identity\r\n",
        b"Transfer-Encoding: identity\r\nContent-Length: 3\r\n",
        b"Content-Length: 3\r\nTransfer-Encoding: identity\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=[
        "cl-then-te",
        "te-then-cl",
        "te-and-cl-0",
        "gzip-chunked",
        "chunked-identity",
        "xchunked",
        "te-twice",
        "space-before-colon",
        "identity",
        "identity-then-cl",
        "cl-then-identity",
        "chunked-then-identity",
        "identity-then-chunked",
    ],
)
def test_request_smuggling_framing_gets_parsers_400(framing: bytes) -> None:
    """Content-Length together with Transfer-Encoding (both orders), transfer codings other
    than a lone ``chunked``, a repeated Transfer-Encoding: the channel refuses them with a 400, so
    the gateway never has to choose a framing, and never forwards both."""
    seen = Seen(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\n" + framing + b"\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert is_parser_400(seen.answer)
    assert seen.client.closed
    seen.assert_nothing_upstream()


PIPELINED = (
    b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc"
    b"POST /v1/audio/smuggled HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}"
)


def test_pipelined_bytes_after_the_body_are_a_second_request_not_body() -> None:
    """Bytes after Content-Length's worth of body are the next request (pipelining), framed
    anew: the first upstream request carries exactly its 3 body bytes and one
    Content-Length; the second gets its own answer, after the first one."""
    h = Harness()
    client = h.request(PIPELINED)
    up = h.upstream()
    first = up.received()
    assert first.startswith(b"POST /v1/audio/speech HTTP/1.1\r\n")
    assert first.endswith(b"\r\n\r\nabc")
    assert first.lower().count(b"content-length:") == 1
    assert b"smuggled" not in first
    assert client.received() == b"", "nothing is answered before the first response"
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    h.reactor.advance(0)
    answers = client.received()
    assert answers.startswith(b"HTTP/1.1 200 OK\r\n")
    # The second request is answered on its own, or is on its way upstream on its own.
    sent = b"".join(h.upstream(i).received() for i in range(h.connection_attempts))
    assert answers.count(b"HTTP/1.1 ") == 2 or sent.count(b"POST /v1/audio/smuggled ") == 1


def test_pipelined_request_after_a_finished_one_is_not_refused_busy() -> None:
    """Once the first response is whole the GPU is free: the pipelined second request goes
    upstream instead of getting 503 gpu_busy."""
    h = Harness()
    client = h.request(PIPELINED)
    h.upstream().send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    h.reactor.advance(0)
    assert b" 503 " not in client.received()
    sent = b"".join(h.upstream(i).received() for i in range(h.connection_attempts))
    assert b"POST /v1/audio/smuggled HTTP/1.1" in sent


def test_connection_naming_content_length_or_host_cannot_unframe_the_request() -> None:
    """``Connection: Content-Length, Host`` declares them hop-by-hop, but the gateway writes
    its own: the upstream still gets exactly one Host (its own) and one Content-Length that
    matches the body."""
    seen = Seen(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nConnection: Content-Length, Host\r\n"
        b"Content-Length: 3\r\n\r\nabc"
    )
    headers = seen.upstream_headers()
    assert [v for n, v in headers if n == b"content-length"] == [b"3"]
    assert [v for n, v in headers if n == b"host"] == [b"127.0.0.1:8091"]
    assert seen.upstream_body() == b"abc"


def test_connection_named_end_to_end_headers_are_dropped() -> None:
    """Headers a client names in Connection are hop-by-hop by its own declaration (RFC 9110
    section 7.6.1): they stay at the gateway, Authorization included."""
    seen = Seen(
        get(
            b"/v1/audio/voices",
            b"Connection: keep-alive, X-Secret, Authorization\r\nX-Secret: s\r\n"
            b"Authorization: Bearer k\r\nX-Kept: yes\r\n",
        )
    )
    names = {name for name, _ in seen.upstream_headers()}
    assert not names & {b"x-secret", b"authorization", b"connection", b"keep-alive"}
    assert b"x-kept" in names


def test_upstream_connection_header_cannot_strip_the_response_framing() -> None:
    """An upstream that names Content-Length (and a secret) in its Connection header: the
    client still gets a framed body (the gateway restates the length) and not the secret."""
    h = Harness()
    client = h.request(get(b"/v1/audio/voices"))
    h.upstream().send(
        b"HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Up-Secret\r\nX-Up-Secret: s\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    status, headers, body = parse_response(client.received())
    assert (status, headers.get(b"content-length"), body) == (200, [b"5"], b"hello")
    assert b"x-up-secret" not in headers


@pytest.mark.parametrize(
    "hosts",
    [b"", b"Host: gw\r\nHost: evil.test\r\n", b"Host: a b\r\n", b"Host: gw/x\r\n", b"Host: @x\r\n"],
    ids=["none", "two", "space", "slash", "at"],
)
def test_http11_request_without_exactly_one_valid_host_is_400(hosts: bytes) -> None:
    """RFC 9112 section 3.2: an HTTP/1.1 request with no Host, two, or one that is no
    host[:port] is a 400 (nginx's too); Twisted would pass it on."""
    seen = Seen(b"GET /v1/audio/voices HTTP/1.1\r\n" + hosts + b"\r\n")
    assert is_parser_400(seen.answer)
    assert "Host" in json.loads(parse_response(seen.answer)[2])["error"]["message"]
    seen.assert_nothing_upstream()


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /v1/audio/voices HTTP/1.0\r\n\r\n",
        b"GET /v1/audio/voices HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET /v1/audio/voices HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n",
        b"GET /v1/audio/voices HTTP/1.1\r\nHost: tts.example.com\r\n\r\n",
    ],
    ids=["http10-no-host", "empty-host", "ipv6-literal", "name"],
)
def test_valid_hosts_are_forwarded_with_the_upstreams_own(request_head: bytes) -> None:
    """HTTP/1.0 needs no Host; an empty one is valid (RFC 9112 section 3.2); the upstream
    always gets exactly its own Host."""
    seen = Seen(request_head)
    assert [v for n, v in seen.upstream_headers() if n == b"host"] == [b"127.0.0.1:8091"]


# Bodies.


def test_huge_declared_content_length_is_413_before_reading() -> None:
    """A Content-Length far over --max-body (10**23): 413 envelope as soon as the headers are
    in, the connection half-closed; nothing reaches the upstream."""
    seen = Seen(
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nContent-Length: 99999999999999999999999"
        b"\r\n\r\nabc",
        max_body=1000,
    )
    assert seen.answer.startswith(b"HTTP/1.1 413 ")
    seen.envelope(413, "request_too_large")
    seen.assert_nothing_upstream()


def test_chunked_upload_over_limit_is_413_before_the_rest_is_spooled() -> None:
    """A chunked upload, declared in one enormous chunk: refused with 413 the moment it
    crosses --max-body, and nothing past the limit is stored or forwarded."""
    h = Harness(max_body=1000)
    client: Peer = h.request(
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffff\r\n"
    )
    client.send(b"a" * 600)
    assert client.received() == b""
    client.send(b"a" * 600)
    assert client.received().startswith(b"HTTP/1.1 413 ")
    request = client.protocol.requests[-1]  # type: ignore[attr-defined]
    assert request.content.tell() == 600, "nothing past the limit was stored"
    client.send(b"a" * 100_000)
    assert request.content.tell() == 600
    assert h.connection_attempts == 0
    assert h.tokens == 1


@pytest.mark.parametrize(
    "chunks",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",
        b"-3\r\nabc\r\n0\r\n\r\n",
        b"0x3\r\nabc\r\n0\r\n\r\n",
        b" 3\r\nabc\r\n0\r\n\r\n",
        b"3 \r\nabc\r\n0\r\n\r\n",
        b"3\r\nabcdef\r\n0\r\n\r\n",
        b"3\r\nabc0\r\n\r\n",
    ],
    ids=["not-hex", "negative", "0x", "leading-space", "trailing-space", "overlong", "no-crlf"],
)
def test_malformed_chunking_gets_parsers_400(chunks: bytes) -> None:
    """Chunk sizes that are not bare hex, chunk data longer than declared or without its
    CRLF: Twisted's parser refuses it (the channel's 400) and closes; nothing reaches the
    upstream."""
    seen = Seen(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    )
    assert is_parser_400(seen.answer)
    assert seen.client.closed
    seen.assert_nothing_upstream()


def test_chunk_extensions_and_trailers_are_not_forwarded() -> None:
    """Chunk extensions and trailer fields are framing: the upstream gets the decoded body
    with a Content-Length, and no trailer as a header."""
    seen = Seen(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    assert seen.upstream_body() == b"abc"
    headers = seen.upstream_headers()
    assert [v for n, v in headers if n == b"content-length"] == [b"3"]
    assert b"x-trailer" not in {n for n, _ in headers}
    assert b"transfer-encoding" not in {n for n, _ in headers}


def test_unterminated_chunked_body_is_never_forwarded() -> None:
    """A chunked body without its last chunk is not a request yet: nothing goes upstream,
    and once the body has stalled for the client timeout (60 s) the client gets a 408."""
    seen = Seen(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n"
    )
    assert seen.answer == b""
    seen.assert_nothing_upstream()
    seen.harness.reactor.advance(61)
    assert seen.client.closed
    assert seen.answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    seen.assert_nothing_upstream()
    assert seen.harness.connection_attempts == 0


# Methods.


@pytest.mark.parametrize("method", [b"get", b"Get", b"post", b"delete"])
def test_lower_case_methods_are_405(method: bytes) -> None:
    """Methods are case-sensitive (RFC 9110 section 9.1): ``get`` is not GET; a 405 envelope
    with Allow, nothing upstream."""
    seen = Seen(method + b" /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n")
    seen.assert_nothing_upstream()
    seen.envelope(405, "method_not_allowed")
    assert parse_response(seen.answer)[1][b"allow"] == [b"GET, POST, DELETE"]


@pytest.mark.parametrize("method", [b"FOO", b"PROPFIND", b"TRACE", b"CONNECT", b"PUT", b"PATCH"])
def test_unknown_and_dangerous_methods_are_405(method: bytes) -> None:
    """Unknown methods, TRACE (no echo of the request) and CONNECT on a /v1/audio/ path: a 405
    envelope with Allow; nothing upstream."""
    seen = Seen(method + b" /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n")
    seen.assert_nothing_upstream()
    error = seen.envelope(405, "method_not_allowed")
    assert b"Host: gw" not in seen.answer
    assert method.decode() in error["message"]


def test_connect_authority_form_is_404_not_a_tunnel() -> None:
    """``CONNECT host:port`` (a tunnel request): the gateway is not a forward proxy; a 404
    envelope, no connection anywhere."""
    seen = Seen(b"CONNECT 127.0.0.1:8091 HTTP/1.1\r\nHost: 127.0.0.1:8091\r\n\r\n")
    seen.assert_nothing_upstream()
    seen.envelope(404, "not_found")


def test_absolute_form_target_is_404_not_a_forward_proxy() -> None:
    """``GET http://host/v1/audio/x`` (absolute-form): a 404 envelope, nothing upstream."""
    seen = Seen(get(b"http://127.0.0.1:8091/v1/audio/voices"))
    seen.assert_nothing_upstream()
    seen.envelope(404, "not_found")


@pytest.mark.parametrize(
    "raw",
    [b"GET * HTTP/1.1\r\nHost: gw\r\n\r\n", b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n"],
    ids=["GET", "OPTIONS"],
)
def test_asterisk_target_gets_an_envelope(raw: bytes) -> None:
    """The gateway does not serve ``*``: a 404 (or 405) envelope, like any other route."""
    seen = Seen(raw)
    seen.assert_nothing_upstream()
    status = parse_response(seen.answer)[0]
    assert status in (404, 405)
    seen.envelope(status, "not_found" if status == 404 else "method_not_allowed")


def test_lf_only_line_endings_are_not_a_request() -> None:
    """Lines ended by a bare LF: Twisted waits for a CRLF that never comes (no request, no
    answer) and its idle timeout (60 s) closes the connection; nothing reaches the upstream."""
    seen = Seen(b"GET /v1/audio/voices HTTP/1.1\nHost: gw\n\n")
    assert seen.answer == b""
    seen.assert_nothing_upstream()
    seen.harness.reactor.advance(61)
    assert seen.client.closed
    assert seen.harness.connection_attempts == 0


@pytest.mark.parametrize(
    "line",
    [
        b" GET /v1/audio/voices HTTP/1.1",
        b"GET  /v1/audio/voices HTTP/1.1",
        b"GET /v1/audio/voices  HTTP/1.1",
        b"GET /v1/audio/voices HTTP/1.1 extra",
        b"GET /v1/audio/voices HTTP/2.0",
        b"GET /v1/audio/voices",
    ],
    ids=["leading-space", "double-space", "trailing-space", "extra-word", "http2", "no-version"],
)
def test_malformed_request_lines_get_parsers_400(line: bytes) -> None:
    """A request line that is not exactly METHOD SP target SP HTTP/1.x: the parser's 400;
    nothing upstream."""
    seen = Seen(line + b"\r\nHost: gw\r\n\r\n")
    assert is_parser_400(seen.answer)
    seen.assert_nothing_upstream()
