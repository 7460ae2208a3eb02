"""The sans-IO response parser: events for each framing, strictness, and split-invariance."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aistack_tts.client._events import CONNECTION_CLOSED, NEED_DATA, Data, EndOfMessage, Failed
from aistack_tts.client._head import Head, IncompleteResponse, UpstreamProtocolError
from aistack_tts.client._parser import MAX_CHUNK_LINE, ResponseParser
from aistack_tts.wire._http import MAX_CHUNK_SIZE, chunk_size, chunk_size_problem


def events(
    pieces: list[bytes],
    method: bytes = b"GET",
    eof: bool = False,
    parser: ResponseParser | None = None,
) -> list[object]:
    """Feed ``pieces`` (then a clean close if ``eof``) to ``parser`` (else a new one for
    ``method``); the events, body data joined up."""
    parser = parser or ResponseParser(method)
    out: list[object] = []
    for piece in [*pieces, *([b""] if eof else [])]:
        parser.receive_data(piece)
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Data) and out and isinstance(out[-1], Data):
                out[-1] = Data(out[-1].data + event.data)
            else:
                out.append(event)
            if isinstance(event, (Failed, EndOfMessage)) or event is CONNECTION_CLOSED:
                return out
    return out


def summary(found: list[object]) -> list[object]:
    """Events as comparable values: heads as (status, length, chunked, keep-alive)."""
    shown: list[object] = []
    for event in found:
        if isinstance(event, Head):
            shown.append(("head", event.status, event.length, event.chunked, event.keep_alive))
        elif isinstance(event, Data):
            shown.append(("data", event.data))
        elif isinstance(event, EndOfMessage):
            shown.append(("end", event.reusable))
        elif isinstance(event, Failed):
            shown.append(("failed", type(event.error).__name__, str(event.error)))
        else:
            shown.append(event)
    return shown


OK_5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n3;ext=1\r\n, w\r\n0\r\nX-Trailer: t\r\n\r\n"
)

#: Whole responses, and the events they must make (a clean close after them when "eof").
TABLE: dict[str, tuple[bytes, bytes, bool, list[object]]] = {
    "content_length": (
        OK_5,
        b"GET",
        False,
        [("head", 200, 5, False, True), ("data", b"hello"), ("end", True)],
    ),
    "chunked_with_extension_and_trailer": (
        CHUNKED,
        b"GET",
        False,
        [("head", 200, None, True, True), ("data", b"hello, w"), ("end", True)],
    ),
    "interim_100_and_103_skipped": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK_5,
        b"GET",
        False,
        [("head", 200, 5, False, True), ("data", b"hello"), ("end", True)],
    ),
    "close_delimited_ends_on_clean_close_never_reusable": (
        b"HTTP/1.1 200 OK\r\n\r\nall of it",
        b"GET",
        True,
        [("head", 200, None, False, False), ("data", b"all of it"), ("end", False)],
    ),
    "head_has_no_body_whatever_the_headers_say": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        b"HEAD",
        False,
        [("head", 200, 0, False, True), ("end", True)],
    ),
    "204_with_body_bytes_anyway_is_not_reusable": (
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
        b"GET",
        False,
        [("head", 204, 0, False, True), ("end", False)],
    ),
    "304_chunked_header_no_body": (
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET",
        False,
        [("head", 304, 0, False, True), ("end", True)],
    ),
    "connection_close_is_not_reusable": (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"GET",
        False,
        [("head", 200, 0, False, False), ("end", False)],
    ),
    "http_1_0_without_keep_alive_is_not_reusable": (
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"GET",
        False,
        [("head", 200, 0, False, False), ("end", False)],
    ),
    "http_1_0_keep_alive_is_reusable": (
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
        b"GET",
        False,
        [("head", 200, 0, False, True), ("end", True)],
    ),
    "http_1_0_chunked_is_not_reusable_even_with_keep_alive": (
        # RFC 9112 section 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing; close after it.
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        b"GET",
        False,
        [("head", 200, None, True, False), ("data", b"ok"), ("end", False)],
    ),
    "trailing_bytes_make_it_not_reusable": (
        OK_5 + b"HTTP/1.1 200 OK\r\n",
        b"GET",
        False,
        [("head", 200, 5, False, True), ("data", b"hello"), ("end", False)],
    ),
    "equal_repeated_lengths": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok",
        b"GET",
        False,
        [("head", 200, 2, False, True), ("data", b"ok"), ("end", True)],
    ),
    "clean_close_before_any_byte": (b"", b"GET", True, [CONNECTION_CLOSED]),
}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_table(name: str) -> None:
    """Each framing makes the events it must."""
    data, method, eof, expected = TABLE[name]
    assert summary(events([data], method, eof)) == expected


def failure(data: bytes, eof: bool = False) -> Exception:
    [*_, last] = events([data], eof=eof)
    assert isinstance(last, Failed), last
    return last.error


HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("size_line", "shown"),
    [
        (b"0x5", "'0x5'"),
        (b"5_0", "'5_0'"),
        (b" 5", "' 5'"),
        (b"+5", "'+5'"),
        (b"-5", "'-5'"),
        (b"", "''"),
        (b"5 junk", "'5 junk'"),
        (b"1" * 17, "'11111111111111111'"),
    ],
)
def test_chunk_sizes_are_hex_digits_only(size_line: bytes, shown: str) -> None:
    """``int(x, 16)`` accepts ``0x``, ``_``, signs and spaces; the parser does not."""
    error = failure(HEAD + size_line + b"\r\nhello\r\n0\r\n\r\n")
    assert isinstance(error, UpstreamProtocolError)
    assert str(error) == f"a bad chunk-size line {shown}"


def test_a_chunk_size_is_bounded_as_a_requests_is() -> None:
    """One bound both ways (``wire._http.MAX_CHUNK_SIZE``): 16 hex digits past it were read as
    a chunk that would never end; now they are a bad line, as a request's is a 400."""
    assert chunk_size(b"%x" % MAX_CHUNK_SIZE) == MAX_CHUNK_SIZE
    assert chunk_size(b"%x;ext" % MAX_CHUNK_SIZE) == MAX_CHUNK_SIZE
    too_big = b"%x" % (MAX_CHUNK_SIZE + 1)
    assert chunk_size(too_big) is None
    assert chunk_size_problem(MAX_CHUNK_SIZE + 1) is not None
    error = failure(HEAD + too_big + b"\r\nhello\r\n0\r\n\r\n")
    assert str(error) == f"a bad chunk-size line '{too_big.decode()}'"


def test_chunk_line_is_bounded() -> None:
    """A chunk-size line that never ends is refused at ``MAX_CHUNK_LINE``, not buffered."""
    error = failure(HEAD + b"5;" + b"x" * MAX_CHUNK_LINE)
    assert "chunk-size line over the gateway's limit" in str(error)


def test_chunk_data_must_end_in_crlf() -> None:
    error = failure(HEAD + b"2\r\nokXX0\r\n\r\n")
    assert str(error) == "chunk data not followed by CRLF: 'XX'"


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\n\r\n", "obsolete line folding"),
        (b"HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n", "invalid header name 'X-A '"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "'5, 6'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n", "invalid Content-Length '0x5'"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "both Transfer-Encoding and Content-Length",
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "asked for no upgrade"),
    ],
)
def test_strict_heads(head: bytes, message: str) -> None:
    error = failure(head)
    assert isinstance(error, UpstreamProtocolError)
    assert message in str(error)


def test_interim_heads_count_towards_the_head_bound() -> None:
    """1xx heads are bounded together with the final one (a 103 flood is refused)."""
    flood = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 2000
    assert "over the gateway's limit of 65536 bytes" in str(failure(flood + OK_5))


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            "7 bytes short of the Content-Length",
        ),
        (HEAD + b"5\r\nab", "3 bytes short of the current chunk"),
        (HEAD + b"5\r\nhello\r\n", "inside the chunked body"),
        (b"HTTP/1.1 200 OK\r\nContent-", "inside the head"),
    ],
)
def test_a_clean_close_inside_a_message_is_incomplete(data: bytes, what: str) -> None:
    """Only a close-delimited body may end at a close; any other is cut short."""
    error = failure(data, eof=True)
    assert isinstance(error, IncompleteResponse)
    assert what in str(error)


def test_bytes_after_the_end_are_trailing() -> None:
    parser = ResponseParser(b"GET")
    parser.receive_data(OK_5)
    while not isinstance(parser.next_event(), EndOfMessage):
        pass
    assert not parser.trailing
    parser.receive_data(b"x")
    assert parser.trailing


def test_a_head_a_byte_at_a_time_is_not_refused() -> None:
    """Bytes appended to a growing head are not mistaken for a bound overrun."""
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: 1\r\n" * 5000 + b"Content-Length: 2\r\n\r\nok"
    found = summary(events([head[i : i + 1] for i in range(len(head))]))
    assert found == [("head", 200, 2, False, True), ("data", b"ok"), ("end", True)]


SPLIT_CASES = [
    OK_5,
    CHUNKED,
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    HEAD + b"0x5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n",
]


@pytest.mark.parametrize("index", range(len(SPLIT_CASES)))
def test_every_split_point_makes_the_same_events(index: int) -> None:
    """The same bytes in two reads, split anywhere: the same events as in one read."""
    data = SPLIT_CASES[index]
    whole = summary(events([data]))
    for cut in range(len(data) + 1):
        pieces = [p for p in (data[:cut], data[cut:]) if p]  # b"" would be a close
        assert summary(events(pieces)) == whole, cut


@settings(max_examples=200, deadline=None)
@given(
    case=st.sampled_from([*SPLIT_CASES, b"HTTP/1.1 200 OK\r\n\r\nclose-delimited"]),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    eof=st.booleans(),
)
def test_any_split_makes_the_same_events(case: bytes, cuts: list[int], eof: bool) -> None:
    """Hypothesis: any number of splits at any points, with or without a close after."""
    points = sorted({min(c, len(case)) for c in cuts})
    pieces = [case[a:b] for a, b in zip([0, *points], [*points, len(case)], strict=True)]
    assert summary(events([p for p in pieces if p], eof=eof)) == summary(events([case], eof=eof))


# --- the answer to an upgrade request that is not a 101 (the WebSocket tunnel's) ----------


@pytest.mark.parametrize(
    ("length", "chunked", "data", "eof", "expected"),
    [
        (5, False, b"helloEXTRA", False, [("data", b"hello"), ("end", False)]),
        (
            None,
            True,
            CHUNKED.partition(b"\r\n\r\n")[2],
            False,
            [("data", b"hello, w"), ("end", False)],
        ),
        (None, False, b"all of it", True, [("data", b"all of it"), ("end", False)]),
        (0, False, b"EXTRA", False, [("end", False)]),
        (
            None,
            True,
            b"0x5\r\n",
            False,
            [("failed", "UpstreamProtocolError", "a bad chunk-size line '0x5'")],
        ),
        (
            10,
            False,
            b"abc",
            True,
            [
                ("data", b"abc"),
                (
                    "failed",
                    "IncompleteResponse",
                    "the connection closed 7 bytes short of the Content-Length",
                ),
            ],
        ),
    ],
)
def test_an_answer_to_an_upgrade_request_frames_its_body_never_reusable(
    length: int | None, chunked: bool, data: bytes, eof: bool, expected: list[object]
) -> None:
    """Not a 101: its body framed as its head says, but its connection is never reused."""
    head = b"HTTP/1.1 426 Upgrade Required\r\n"
    if length is not None:
        head += b"Content-Length: %d\r\n" % length
    if chunked:
        head += b"Transfer-Encoding: chunked\r\n"
    head += b"\r\n"
    for cut in range(len(data) + 1):
        pieces = [p for p in (head + data[:cut], data[cut:]) if p]
        parser = ResponseParser(b"GET", upgrade=True)
        found = events(pieces, eof=eof, parser=parser)
        assert summary(found) == [("head", 426, length, chunked, False), *expected], cut
