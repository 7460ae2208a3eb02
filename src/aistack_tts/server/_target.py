"""Checks on the raw request-target, before any router decodes it.

Pure functions: the gateway forwards the target byte-exact, so it must first be sure the
upstream cannot read it as a path outside ``/v1/audio/``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from aistack_tts._errors import InvalidRequest

PREFIX = b"/v1/audio/"

# Control bytes, space, DEL and anything non-ASCII have no place in a request-target
# (RFC 9112 section 3.2), nor has a fragment (#); a raw one means a broken or hostile client.
_BAD_BYTE = re.compile(rb"[\x00-\x20#\x7f-\xff]")
# Both separators count: some servers treat a backslash as a slash.
_SEPARATOR = re.compile(rb"[/\\]")


def owns_target(target: bytes, exact: frozenset[bytes]) -> bool:
    """Whether the raw request-target names one of the gateway's routes (beside a root).

    Its routes are at fixed paths from the site root: ``/v1/audio`` and everything below it,
    and the ``exact`` paths (``/metrics``, ``/healthz``, ``/readyz`` when served). Compared as
    the client sent them, not percent-decoded: ``/%6detrics`` is not ``/metrics``.
    """
    path = target.split(b"?", 1)[0]
    return path.startswith(PREFIX) or path == PREFIX[:-1] or path in exact


def is_audio_target(target: bytes) -> bool:
    """Whether the raw request-target names something under ``/v1/audio/``."""
    return target.startswith(PREFIX)


def check_target(target: bytes) -> bytes:
    """``target`` unchanged if it is safe to route and forward; else raise ``InvalidRequest``.

    Unsafe anywhere: bytes a request-target may not hold, or a path that is not UTF-8 once
    percent-decoded (the router could not read it). Unsafe under ``/v1/audio/``: a NUL once
    percent-decoded, or dot-segments (plain or percent-encoded, split on ``/``, ``%2f`` or
    backslash, with or without ``;params``) that climb above ``/v1/audio/`` at any point.
    """
    if _BAD_BYTE.search(target):
        raise InvalidRequest("the request path holds bytes that are not allowed in a URL")
    path = target.split(b"?", 1)[0]
    decoded = unquote_to_bytes(path)
    try:
        decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the request path is not UTF-8 once percent-decoded") from None
    if not is_audio_target(target):
        return target
    if b"\x00" in decoded:
        raise InvalidRequest("the request path holds an encoded NUL byte")
    depth = 0
    floor = len(PREFIX.strip(b"/").split(b"/"))
    for raw_segment in _SEPARATOR.split(decoded.strip(b"/")):
        # "..;x" is ".." to servers that strip path parameters (and Twisted's Agent drops an
        # empty trailing ";", turning "..;" into "..").
        segment = raw_segment.split(b";", 1)[0]
        if segment in (b"", b"."):
            continue
        if segment == b"..":
            depth -= 1
            if depth < floor:
                raise InvalidRequest("the request path climbs out of /v1/audio/")
        else:
            depth += 1
    return target
