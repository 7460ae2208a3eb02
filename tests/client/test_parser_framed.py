"""The parser's framed mode (``relay_framing``): chunked bodies passed on with their framing.

Whatever the framed mode gives must be, once decoded, what the decoded mode gives, and it
must end (or fail, with the same reason) where the decoded mode does, however the bytes are
split.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aistack_tts.client._events import NEED_DATA, Data, EndOfMessage, Failed, Framed
from aistack_tts.client._head import Head
from aistack_tts.client._parser import MAX_CHUNK_LINE, ResponseParser

HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
BODY = b"5\r\nhello\r\n3;ext=1\r\n, w\r\n1\r\n!\r\n"
WHOLE = HEAD + BODY + b"0\r\nX-Trailer: t\r\n\r\n"


def run(pieces: list[bytes], *, framed: bool, eof: bool = False) -> tuple[bytes, int, object]:
    """Feed ``pieces``: the body bytes (framed or decoded), their body size, and the end."""
    parser = ResponseParser(b"GET")
    out, size = b"", 0
    for piece in [*pieces, *([b""] if eof else [])]:
        parser.receive_data(piece)
        while (event := parser.next_event()) is not NEED_DATA:
            if isinstance(event, Head):
                if framed:
                    assert parser.relay_framing()
            elif isinstance(event, Framed):
                assert framed
                assert event.data
                assert 0 <= event.size <= len(event.data)
                out, size = out + event.data, size + event.size
            elif isinstance(event, Data):
                assert not framed
                out, size = out + event.data, size + len(event.data)
            elif isinstance(event, EndOfMessage):
                return out, size, ("end", event.reusable)
            else:
                assert isinstance(event, Failed), event
                return out, size, ("failed", str(event.error))
    return out, size, "more"


def decoded(framing: bytes) -> bytes:
    """What the decoded mode makes of ``framing`` (whole chunks) and a last chunk."""
    body, _, end = run([HEAD + framing + b"0\r\n\r\n"], framed=False)
    assert end == ("end", True)
    return body


def test_the_framing_goes_through_and_the_last_chunk_and_trailers_do_not() -> None:
    assert run([WHOLE], framed=True) == (BODY, 9, ("end", True))
    assert run([WHOLE], framed=False) == (b"hello, w!", 9, ("end", True))


def test_one_read_of_body_is_passed_on_as_it_came() -> None:
    """The common case: a read holding only chunk data and framing is not copied."""
    parser = ResponseParser(b"GET")
    parser.receive_data(HEAD)
    assert isinstance(parser.next_event(), Head)
    assert parser.relay_framing()
    assert parser.next_event() is NEED_DATA
    read = b"5\r\nhello\r\n2\r\nab"
    parser.receive_data(read)
    event = parser.next_event()
    assert isinstance(event, Framed)
    assert event.data is read
    assert event.size == 7
    parser.receive_data(b"\r\n0\r\n\r\n")
    assert parser.next_event() == Framed(b"\r\n", 0)
    assert parser.next_event() == EndOfMessage(True)


def test_too_late_or_not_chunked() -> None:
    """Framed output must start at the body's first chunk-size line, and only for chunked."""
    parser = ResponseParser(b"GET")
    assert not parser.relay_framing()  # no head yet
    parser.receive_data(HEAD + b"5\r\nhel")
    assert isinstance(parser.next_event(), Head)
    assert parser.next_event() == Data(b"hel")
    assert not parser.relay_framing()  # in the first chunk
    parser.receive_data(b"lo\r\n")
    assert parser.next_event() == Data(b"lo")
    assert parser.next_event() is NEED_DATA
    assert not parser.relay_framing()  # between chunks, but the client got decoded bytes
    length = ResponseParser(b"GET")
    length.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert isinstance(length.next_event(), Head)
    assert not length.relay_framing()


@pytest.mark.parametrize(
    ("body", "before", "reason"),
    [
        (
            b"5\r\nhello\r\n0x5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n",
            "a bad chunk-size line '0x5'",
        ),
        (b"2\r\nokXX0\r\n\r\n", b"2\r\nok", "chunk data not followed by CRLF: 'XX'"),
        (
            b"5\r\nhello\r\n5;" + b"x" * MAX_CHUNK_LINE,
            b"5\r\nhello\r\n",
            "over the gateway's limit",
        ),
    ],
)
def test_a_fault_ends_the_bytes_before_it_then_fails_as_decoded(
    body: bytes, before: bytes, reason: str
) -> None:
    out, _, end = run([HEAD + body], framed=True)
    assert out == before
    assert end == run([HEAD + body], framed=False)[2]
    assert isinstance(end, tuple)
    assert reason in str(end[1])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (HEAD + b"5\r\nab", "the connection closed 3 bytes short of the current chunk"),
        (HEAD + b"5\r\nhello\r\n", "the connection closed inside the chunked body"),
        (HEAD + b"5\r\nhello\r", "the connection closed inside the chunked body"),
    ],
)
def test_a_close_inside_the_body_is_incomplete(data: bytes, reason: str) -> None:
    _out, _, end = run([data], framed=True, eof=True)
    assert end == ("failed", reason)
    assert end == run([data], framed=False, eof=True)[2]


CASES = [
    WHOLE,
    HEAD + b"0\r\n\r\n",
    HEAD + b"a\r\n0123456789\r\n0\r\n\r\n",
    HEAD + b"5\r\nhello\r\n0x5\r\nhello\r\n0\r\n\r\n",
    HEAD + b"2\r\nokXX0\r\n\r\n",
]


@settings(max_examples=300, deadline=None)
@given(
    case=st.sampled_from(CASES),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=10),
    eof=st.booleans(),
)
def test_any_split_framed_decodes_to_what_decoded_mode_gives(
    case: bytes, cuts: list[int], eof: bool
) -> None:
    """Hypothesis: split anywhere, the framed bytes decode to the decoded mode's body."""
    points = sorted({min(c, len(case)) for c in cuts})
    pieces = [
        p for a, b in zip([0, *points], [*points, len(case)], strict=True) if (p := case[a:b])
    ]
    framed, size, end = run(pieces, framed=True, eof=eof)
    plain, plain_size, plain_end = run(pieces, framed=False, eof=eof)
    assert end == plain_end
    whole_framed, _, _ = run([case], framed=True, eof=eof)
    # Framed bytes are a prefix of the body's framing (a chunk's data may be cut anywhere).
    assert whole_framed.startswith(framed) or framed.startswith(whole_framed)
    if end == ("end", True):
        assert framed == whole_framed
        assert decoded(framed) == plain
        assert size == plain_size
