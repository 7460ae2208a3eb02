"""A form body as Starlette hands it to FastAPI: ``request.form()`` for the voice upload.

The lowest floor of the demo, beside ``_framework``. Facts from Starlette 1.10
(``starlette/requests.py`` ``Request._get_form``, ``starlette/formparsers.py``) and
python-multipart 0.0.34 (``python_multipart/multipart.py`` ``parse_options_header``,
``MultipartParser``), checked side by side against FastAPI 0.165:

- ``multipart/form-data`` is parsed, ``application/x-www-form-urlencoded`` too; any other
  content type (or none) is an empty form, so the route sees every field missing.
- a part with a ``filename`` is a file (even ``filename=""``), any other a text field decoded
  in the body's charset (UTF-8 unless said), latin-1 when that fails; a field's last value wins.
- what the parser refuses is Starlette's ``HTTPException(400, message)``: "Missing boundary in
  multipart.", "Invalid multipart data.", a part without a ``name``, a text part over 1 MiB.
- a body that stops early keeps the parts completed before it (no error).
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import Sequence
from urllib.parse import unquote_plus

from attrs import frozen

from ._api_error import APIError

#: Starlette's ``MultiPartParser`` limits (``max_part_size`` is for text parts only).
MAX_PART_SIZE = 1024 * 1024
MAX_FIELDS = MAX_FILES = 1000
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


@frozen
class FilePart:
    """Starlette's ``UploadFile``: the part's bytes, file name and headers."""

    data: bytes
    filename: str
    headers: tuple[tuple[bytes, bytes], ...]

    @property
    def content_type(self) -> str | None:
        """The part's first ``Content-Type``, as sent (``None`` without one)."""
        for name, value in self.headers:
            if name == b"content-type":
                return value.decode("latin-1")
        return None

    def __repr__(self) -> str:
        # starlette/datastructures.py UploadFile.__repr__ and Headers.__repr__
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers]
        as_dict = dict(pairs)
        shown = f"{as_dict!r}" if len(as_dict) == len(pairs) else f"raw={list(self.headers)!r}"
        size = len(self.data)
        return f"UploadFile(filename={self.filename!r}, size={size!r}, headers=Headers({shown}))"


FormValue = str | FilePart


@frozen
class Form:
    """The parsed items, in order; ``get`` answers as Starlette's ``FormData.get`` (last wins)."""

    items: Sequence[tuple[str, FormValue]] = ()

    def get(self, name: str) -> FormValue | None:
        found: FormValue | None = None
        for key, value in self.items:
            if key == name:
                found = value
        return found


def _refused(message: str) -> APIError:
    # Starlette's HTTPException(400, message), answered by vLLM's http_exception_handler.
    return APIError(message, type="Bad Request")


def options_header(value: str) -> tuple[str, dict[str, str]]:
    """python-multipart's ``parse_options_header``: the lower-cased value and its parameters."""
    if ";" not in value:
        return value.lower().strip(" \t"), {}
    segments = _split_params(value)
    params: dict[str, str] = {}
    for segment in segments[1:]:
        key, _, val = segment.partition("=")
        if "*" in key:  # RFC 7578 forbids the extended syntax; python-multipart skips it
            continue
        if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
            val = val[1:-1].replace("\\\\", "\\").replace('\\"', '"')
        if key == "filename" and (val[1:3] == ":\\" or val[:2] == "\\\\"):
            val = val.split("\\")[-1]
        params[key] = val
    return segments[0].lower(), params


def _split_params(value: str) -> list[str]:
    # ``;``-separated, a ``;`` inside quotes kept; keys lower-cased (email.message._parseparam).
    out: list[str] = []
    current, quoted, escaped = "", False, False
    for c in value + ";":
        if c == ";" and not quoted:
            key, eq, val = current.partition("=")
            segment = key.rstrip(" \t").lower() + "=" + val.lstrip(" \t") if eq else current
            out.append(segment.strip(" \t"))
            current = ""
            continue
        current += c
        if c == '"' and not escaped:
            quoted = not quoted
        escaped = c == "\\" and not escaped
    return out


def _decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return raw.decode("latin-1")


def read_form(content_type: str | None, body: bytes) -> Form:
    """The form Starlette makes of ``body``, or the ``APIError`` it refuses the body with."""
    media_type, params = options_header(content_type or "")
    if media_type == "application/x-www-form-urlencoded":
        return _urlencoded(body)
    if media_type != "multipart/form-data":
        return Form()
    try:
        charset = codecs.lookup(params.get("charset", "utf-8")).name
    except LookupError:
        charset = "latin-1"
    if "boundary" not in params:
        raise _refused("Missing boundary in multipart.")
    return Form(_Multipart(b"--" + params["boundary"].encode("latin-1"), charset).parse(body))


def _urlencoded(body: bytes) -> Form:
    items: list[tuple[str, FormValue]] = []
    for chunk in body.split(b"&"):
        if chunk:
            name, _, value = chunk.partition(b"=")
            items.append(
                (unquote_plus(name.decode("latin-1")), unquote_plus(value.decode("latin-1")))
            )
    return Form(items)


class _Truncated(Exception):
    """The body ended inside a part: the parts before it stand."""


class _Multipart:
    def __init__(self, delimiter: bytes, charset: str) -> None:
        self.delimiter = delimiter
        self.charset = charset
        self.items: list[tuple[str, FormValue]] = []
        self.fields = self.files = 0

    def parse(self, body: bytes) -> list[tuple[str, FormValue]]:
        with contextlib.suppress(_Truncated):
            self._parse(body)
        return self.items

    def _parse(self, body: bytes) -> None:
        i = 0
        while i < len(body) and body[i] in b"\r\n":  # leading newlines are skipped
            i = body.find(b"-", i)
            if i < 0:
                return
        end = i + len(self.delimiter)
        if not body.startswith(self.delimiter, i):
            if self.delimiter.startswith(body[i:]):
                raise _Truncated
            raise _refused("Invalid multipart data.")
        if not self._after_delimiter(body, end):
            return
        i = end + 2
        while True:
            i = self._part(body, i)
            if i < 0:
                return

    @staticmethod
    def _after_delimiter(body: bytes, at: int) -> bool:
        """True when a part follows the delimiter ending at ``at``, False at the last one."""
        tail = body[at : at + 2]
        if len(tail) < 2:
            raise _Truncated
        if tail == b"--":
            return False
        if tail != b"\r\n":
            raise _refused("Invalid multipart data.")
        return True

    def _part(self, body: bytes, i: int) -> int:
        headers: list[tuple[bytes, bytes]] = []
        while not body.startswith(b"\r\n", i):
            if i + 2 > len(body):
                raise _Truncated
            line_end = body.find(b"\r", i)
            if line_end < 0:
                raise _Truncated
            field, colon, value = body[i:line_end].partition(b":")
            if not colon or not field or any(b not in _TOKEN for b in field):
                raise _refused("Invalid multipart data.")
            if body[line_end + 1 : line_end + 2] not in (b"\n", b""):
                raise _refused("Invalid multipart data.")
            headers.append((field.lower(), value.lstrip(b" ")))
            i = line_end + 2
        name, filename = self._disposition(headers)
        data, after = self._data(body, i + 2, is_file=filename is not None)
        if filename is None:
            self.items.append((name, _decode(data, self.charset)))
        else:
            self.items.append((name, FilePart(data, filename, tuple(headers))))
        return after

    def _disposition(self, headers: list[tuple[bytes, bytes]]) -> tuple[str, str | None]:
        disposition = next((v for k, v in headers if k == b"content-disposition"), b"")
        _, params = options_header(disposition.decode("latin-1"))
        if "name" not in params:
            raise _refused('The Content-Disposition header field "name" must be provided.')
        name = _decode(params["name"].encode("latin-1"), self.charset)
        if "filename" in params:
            self.files += 1
            if self.files > MAX_FILES:
                raise _refused(f"Too many files. Maximum number of files is {MAX_FILES}.")
            return name, _decode(params["filename"].encode("latin-1"), self.charset)
        self.fields += 1
        if self.fields > MAX_FIELDS:
            raise _refused(f"Too many fields. Maximum number of fields is {MAX_FIELDS}.")
        return name, None

    def _data(self, body: bytes, start: int, *, is_file: bool) -> tuple[bytes, int]:
        """The part's bytes and where the next part starts (-1 after the last one)."""
        marker = b"\r\n" + self.delimiter
        search = start
        while True:
            found = body.find(marker, search)
            if found < 0:
                if not is_file and len(body) - start > MAX_PART_SIZE:
                    raise _refused(self._too_big())
                raise _Truncated
            data = body[start:found]
            if not is_file and len(data) > MAX_PART_SIZE:
                raise _refused(self._too_big())
            at = found + len(marker)
            tail = body[at : at + 2]
            if len(tail) < 2:
                raise _Truncated
            if tail == b"--":
                return data, -1
            if tail == b"\r\n":
                return data, at + 2
            if tail[:1] in (b" ", b"\t"):  # boundary padding, then CRLF
                pad_end = at
                while body[pad_end : pad_end + 1] in (b" ", b"\t"):
                    pad_end += 1
                if body[pad_end : pad_end + 2] != b"\r\n":
                    raise _refused("Invalid multipart data.")
                return data, pad_end + 2
            search = found + 1  # a look-alike inside the data

    @staticmethod
    def _too_big() -> str:
        return f"Part exceeded maximum size of {MAX_PART_SIZE // 1024}KB."
