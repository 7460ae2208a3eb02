"""The upstream's response, framed without I/O: the first step of the upstream client's reading.

``ResponseParser`` is shaped like h11's connection object: ``receive_data(bytes)`` (``b""``
for a clean close), then ``next_event()`` until it returns ``NEED_DATA``. The events are
``Head`` (the final head, checked by ``client._head``; 1xx interim heads skipped) and,
from ``client._events``, ``Data``, ``EndOfMessage`` (with whether the connection may carry
another request), ``CONNECTION_CLOSED`` (a clean close before any byte) and ``Failed`` (with the
``UpstreamProtocolError`` or ``IncompleteResponse`` that ends the exchange; the parser stays
failed there). After ``relay_framing`` a chunked body comes as ``Framed`` (checked framing
and data, as they came) instead of ``Data``: a relay to a chunked client need not take the
chunks apart and frame them again. The WebSocket tunnel reads the answer to its handshake
with it too (``upgrade=True``): a 101 is then a final ``Head`` and the parser stops there
(``rest`` gives the bytes after it, the new protocol's); any other answer and its body are
read as for a call.

Framing as a proxy must read it: heads bounded at ``MAX_UPSTREAM_HEAD`` together (interim
heads included); no body for HEAD, 204 and 304 whatever the headers say; Content-Length
bodies exact; chunk-size lines as ``wire._http.chunk_size`` reads them (hex digits only,
the size bounded as a request's is), each chunk followed by CRLF; trailers bounded and
dropped; a body without either ends only on a clean close and never leaves the connection
reusable.
"""

from __future__ import annotations

from aistack_tts.wire._http import NO_BODY_STATUS, chunk_size

from ._events import (
    CONNECTION_CLOSED,
    NEED_DATA,
    Data,
    EndOfMessage,
    Event,
    Failed,
    Framed,
)
from ._head import (
    FIELD_LINE,
    MAX_UPSTREAM_HEAD,
    IncompleteResponse,
    UpstreamProtocolError,
    head_end,
    parse_head,
    shown,
)

#: The longest chunk-size line (size, extensions, CRLF) accepted.
MAX_CHUNK_LINE = 4 * 1024
#: The most trailer bytes after the last chunk (they are read and dropped, as Twisted did).
MAX_TRAILERS = 16 * 1024


(
    _HEAD,
    _LENGTH,
    _CHUNK_SIZE,
    _CHUNK_DATA,
    _CHUNK_END,
    _TRAILERS,
    _CLOSE,
    _END,
    _DONE,
    _FAILED,
    _UPGRADED,
) = range(11)


class ResponseParser:
    """One response to a ``method`` request, fed with ``receive_data``, read with ``next_event``.

    ``upgrade``: the request asked to switch protocols (``parse_head``'s ``upgrade``).
    """

    __slots__ = (
        "_buf",
        "_eof",
        "_event",
        "_head_bytes",
        "_keep_alive",
        "_left",
        "_no_body",
        "_pos",
        "_raw",
        "_scan",
        "_sized",
        "_state",
        "_upgrade",
    )

    def __init__(self, method: bytes, *, upgrade: bool = False) -> None:
        self._no_body = method == b"HEAD"
        self._upgrade = upgrade
        #: Unread bytes start at ``_pos``: the bytes of one read, or (while a head or a
        #: framing line waits for its end) a bytearray the reads are appended to, so a head
        #: that arrives a byte at a time is not copied once per byte.
        self._buf: bytes | bytearray = b""
        self._pos = 0
        #: Where the search for the end of the head goes on (it was not before this).
        self._scan = 0
        self._state = _HEAD
        #: Body bytes still to come (Content-Length or the current chunk); in the trailers,
        #: the trailer bytes read so far.
        self._left = 0
        self._head_bytes = 0
        self._keep_alive = False
        self._eof = False
        self._event: Event = NEED_DATA
        #: Chunked body bytes go out framed (``Framed``), not decoded (``Data``).
        self._raw = False
        #: A chunk-size line was read: too late for ``relay_framing``.
        self._sized = False

    @property
    def started(self) -> bool:
        """Whether any byte of the response has arrived."""
        return self._head_bytes > 0 or len(self._buf) > self._pos

    @property
    def trailing(self) -> bool:
        """Bytes arrived after the end of the message (the connection must not be reused)."""
        return self._state == _DONE and len(self._buf) > self._pos

    def rest(self) -> bytes:
        """The bytes after a 101's head (the new protocol's first), once; then ``b""``."""
        if self._state != _UPGRADED:
            return b""
        rest = bytes(memoryview(self._buf)[self._pos :])
        self._buf, self._pos = b"", 0
        return rest

    def relay_framing(self) -> bool:
        """From now on give a chunked body as ``Framed`` events; False if it is too late.

        Only at the start of a chunked body, before any of it was read: a client must get
        the framing from its first chunk-size line on.
        """
        if self._state != _CHUNK_SIZE or self._sized:
            return False
        self._raw = True
        return True

    def receive_data(self, data: bytes) -> None:
        """Bytes from the upstream; ``b""`` when it closed the connection cleanly (FIN)."""
        if not data:
            self._eof = True
            return
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            self._buf, self._pos, self._scan = data, 0, 0
            return
        if isinstance(buf, bytes):
            buf = bytearray(memoryview(buf)[pos:])
        elif pos:
            del buf[:pos]
        buf += data
        self._buf, self._pos, self._scan = buf, 0, max(0, self._scan - pos)

    def next_event(self) -> Event:
        """The next event the bytes so far make, or ``NEED_DATA``."""
        state = self._state
        if self._raw and state in (_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END):
            return self._framed()
        if state in (_LENGTH, _CHUNK_DATA, _CLOSE):
            return self._body()
        if state == _HEAD:
            return self._head()
        if state == _END:
            self._state = _DONE
            return EndOfMessage(self._keep_alive and not self._eof and len(self._buf) == self._pos)
        if state in (_DONE, _UPGRADED):
            return NEED_DATA
        if state == _FAILED:
            return self._event
        return self._chunk_framing()

    def _fail(self, error: UpstreamProtocolError | IncompleteResponse) -> Failed:
        self._state = _FAILED
        event = self._event = Failed(error)
        return event

    # The head.

    def _head(self) -> Event:
        event = self._one_head()
        while event is None:  # an interim 1xx: the final head follows
            event = self._one_head()
        return event

    def _one_head(self) -> Event | None:
        buf, pos = self._buf, self._pos
        start = max(pos, self._scan)
        end = head_end(buf, start)
        room = MAX_UPSTREAM_HEAD - self._head_bytes
        if end < 0 or end - pos > room:
            if end >= 0 or len(buf) - pos > room:
                return self._fail(
                    UpstreamProtocolError(
                        "its response head is over the gateway's limit of "
                        f"{MAX_UPSTREAM_HEAD} bytes"
                    )
                )
            if self._eof:
                if self._head_bytes == 0 and pos >= len(buf):
                    self._state = _DONE
                    return CONNECTION_CLOSED
                return self._fail(IncompleteResponse("the connection closed inside the head"))
            self._scan = max(pos, len(buf) - 2)
            return NEED_DATA
        self._head_bytes += end - pos
        self._pos = self._scan = end
        lines = bytes(buf[pos:end]).split(b"\n")
        del lines[-2:]  # the blank line, and the nothing after its LF
        try:
            head = parse_head(lines, upgrade=self._upgrade)
        except UpstreamProtocolError as e:
            return self._fail(e)
        if head is None:
            return None
        if head.status == 101:
            # Only when an upgrade was asked for: the bytes after it are not HTTP.
            self._state = _UPGRADED
            return head
        if self._no_body or head.status in NO_BODY_STATUS:
            # Whatever the headers say (RFC 9110 section 6.4.1); bytes that follow anyway make
            # the connection unusable (EndOfMessage says so).
            head.length, head.chunked, self._state = 0, False, _END
        else:
            self._frame_body(head.length, head.chunked)
            if self._state == _CLOSE:
                head.keep_alive = False  # whole only on a clean close, and never reusable
        self._keep_alive = head.keep_alive
        return head

    def _frame_body(self, length: int | None, chunked: bool) -> None:
        """Start the body: chunked, ``length`` bytes, or (neither) everything until the close."""
        if chunked:
            self._state = _CHUNK_SIZE
        elif length == 0:
            self._state = _END
        elif length is not None:
            self._state, self._left = _LENGTH, length
        else:
            self._state = _CLOSE

    # The body.

    def _body(self) -> Event:
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        state = self._state
        if available == 0:
            if not self._eof:
                return NEED_DATA
            if state == _CLOSE:
                self._state = _DONE
                return EndOfMessage(False)
            where = "Content-Length" if state == _LENGTH else "current chunk"
            return self._fail(
                IncompleteResponse(f"the connection closed {self._left} bytes short of the {where}")
            )
        if state == _CLOSE or available <= self._left:
            self._pos = len(buf)
            piece = buf if pos == 0 and isinstance(buf, bytes) else bytes(memoryview(buf)[pos:])
        else:
            self._pos = pos + self._left
            piece = bytes(memoryview(buf)[pos : self._pos])
        if state != _CLOSE:
            self._left -= len(piece)
            if self._left == 0:
                self._state = _END if state == _LENGTH else _CHUNK_END
        return Data(piece)

    def _chunk_framing(self) -> Event:
        buf = self._buf
        while True:
            pos, state = self._pos, self._state
            if state == _CHUNK_END:
                if len(buf) - pos < 2:
                    return self._need_more()
                if buf[pos : pos + 2] != b"\r\n":
                    seen = shown(bytes(buf[pos : pos + 2]))
                    return self._fail(
                        UpstreamProtocolError(f"chunk data not followed by CRLF: {seen}")
                    )
                self._pos, self._state = pos + 2, _CHUNK_SIZE
                continue
            limit = MAX_CHUNK_LINE if state == _CHUNK_SIZE else MAX_TRAILERS - self._left
            end = buf.find(b"\r\n", pos, pos + limit)
            if end < 0:
                if len(buf) - pos >= limit:
                    what = "chunk-size line" if state == _CHUNK_SIZE else "trailer section"
                    return self._fail(
                        UpstreamProtocolError(f"a {what} over the gateway's limit of {limit} bytes")
                    )
                return self._need_more()
            line = bytes(buf[pos:end])
            self._pos = end + 2
            if state == _TRAILERS:
                if not line:
                    self._state = _END
                    return self.next_event()
                self._left += len(line) + 2
                if FIELD_LINE.fullmatch(line) is None:
                    return self._fail(UpstreamProtocolError(f"a bad trailer line {shown(line)}"))
                continue
            size = chunk_size(line)
            if size is None:
                return self._fail(UpstreamProtocolError(f"a bad chunk-size line {shown(line)}"))
            self._sized = True
            if size == 0:
                self._state, self._left = _TRAILERS, 0
                continue
            self._state, self._left = _CHUNK_DATA, size
            return self._body()

    def _framed(self) -> Event:
        """The checked framing lines and chunk data that have come, in one ``Framed``.

        A fault ends the bytes before it; the next call reports it. The last chunk's line and
        the trailers are read as in the decoded mode.
        """
        buf = self._buf
        start = self._pos
        size = 0
        fault: UpstreamProtocolError | None = None
        while True:
            pos, state = self._pos, self._state
            if state == _CHUNK_DATA:
                take = min(len(buf) - pos, self._left)
                if take == 0:
                    break
                self._pos, self._left, size = pos + take, self._left - take, size + take
                if self._left == 0:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    seen = shown(bytes(buf[pos : pos + 2]))
                    fault = UpstreamProtocolError(f"chunk data not followed by CRLF: {seen}")
                    break
                self._pos, self._state = pos + 2, _CHUNK_SIZE
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n", pos, pos + MAX_CHUNK_LINE)
                if end < 0:
                    if len(buf) - pos >= MAX_CHUNK_LINE:
                        fault = UpstreamProtocolError(
                            f"a chunk-size line over the gateway's limit of {MAX_CHUNK_LINE} bytes"
                        )
                    break
                line = bytes(buf[pos:end])
                chunk = chunk_size(line)
                if chunk is None:
                    fault = UpstreamProtocolError(f"a bad chunk-size line {shown(line)}")
                    break
                if chunk == 0:
                    if self._pos > start:
                        break  # the bytes before the last chunk go first
                    self._pos, self._state, self._left = end + 2, _TRAILERS, 0
                    return self._chunk_framing()
                self._pos, self._state, self._left = end + 2, _CHUNK_DATA, chunk
            else:
                break
        end = self._pos
        if end > start:
            if start == 0 and end == len(buf) and isinstance(buf, bytes):
                return Framed(buf, size)  # one read, all body: not copied
            return Framed(bytes(memoryview(buf)[start:end]), size)
        if fault is not None:
            return self._fail(fault)
        if self._state == _CHUNK_DATA and self._eof:
            return self._fail(
                IncompleteResponse(
                    f"the connection closed {self._left} bytes short of the current chunk"
                )
            )
        return self._need_more()

    def _need_more(self) -> Event:
        if self._eof:
            return self._fail(IncompleteResponse("the connection closed inside the chunked body"))
        return NEED_DATA
