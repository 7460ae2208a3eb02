"""Admission: may a request go upstream now, and how. One decision, taken before any I/O.

``forward`` asks ``admit`` once per request and acts on the verdict: a slot-exempt call goes
to any reachable upstream, a granted one starts with its slot token, the rest wait in the
queue or get the envelope the verdict names. ``preflight`` asks the same question before a
request's body has come (``Expect: 100-continue``), looking at the slots without taking one.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from attrs import frozen
from twisted.web.server import Request

from aistack_tts._config import ExemptRule
from aistack_tts._errors import COMPOSE_HINT, Draining, GatewayError, GPUBusy, UpstreamUnavailable
from aistack_tts.server._routes import proxied_directly
from aistack_tts.wire._http import RETRY_UNAVAILABLE_S, is_websocket_request

from ._slot import RetryAfter
from ._upstreams import Grant, Upstream, UpstreamPool


class Verdict(enum.Enum):
    """How a request is admitted."""

    #: Needs no GPU slot (``--slot-exempt``): any reachable upstream.
    EXEMPT = "exempt"
    #: A slot was free and is now the request's.
    GRANTED = "granted"
    #: Every slot is taken, and ``--queue-timeout`` lets it wait.
    QUEUE = "queue"
    #: Every slot is taken: ``503 gpu_busy``.
    BUSY = "busy"
    #: Every upstream refused connections recently: ``503 upstream_unavailable``.
    UNAVAILABLE = "unavailable"


class Slots(Protocol):
    """What admission asks of the upstream pool (``UpstreamPool`` is one)."""

    def try_take(self, exclude: Sequence[Upstream] = ()) -> Grant | None:
        """A free slot's token, taken, or ``None``."""

    def all_down(self) -> bool:
        """Whether every upstream is in its cool-down after refusing connections."""

    def pick(self) -> Upstream:
        """A reachable upstream for a call that takes no slot."""


@frozen
class Admission:
    """A verdict, with what it admits: the grant (``GRANTED``) or the upstream (``EXEMPT``)."""

    verdict: Verdict
    grant: Grant | None = None
    upstream: Upstream | None = None


def admit(slots: Slots, *, exempt: bool, queue_timeout: float) -> Admission:
    """Decide for one request; a ``GRANTED`` verdict has taken its slot token."""
    if exempt:
        return Admission(Verdict.EXEMPT, upstream=slots.pick())
    grant = slots.try_take()
    if grant is not None:
        return Admission(Verdict.GRANTED, grant=grant)
    if slots.all_down():
        return Admission(Verdict.UNAVAILABLE)
    return Admission(Verdict.QUEUE if queue_timeout > 0 else Verdict.BUSY)


def refusal(
    verdict: Verdict, retry_after: RetryAfter, *, queue_wait: float | None = None
) -> GatewayError:
    """The envelope for a ``BUSY`` or ``UNAVAILABLE`` verdict.

    ``queue_wait``: how long a queued request waited before it was refused (its access event).
    """
    if verdict is Verdict.UNAVAILABLE:
        return UpstreamUnavailable(
            f"every Qwen3-TTS upstream refused connections recently; {COMPOSE_HINT}",
            headers=[(b"Retry-After", b"%d" % RETRY_UNAVAILABLE_S)],
        )
    busy = GPUBusy(
        "the GPU is busy with another inference; retry after the time in Retry-After",
        headers=retry_after.headers(),
    )
    busy.queue_wait = queue_wait
    return busy


def peek(upstreams: Sequence[Upstream], now: float, *, queue_timeout: float) -> Verdict:
    """The verdict ``admit`` would give a request that takes a slot, with nothing taken.

    ``GRANTED``: a reachable upstream has a free slot now.
    """
    up = [u for u in upstreams if u.is_up(now)]
    if any(u.slot.semaphore.tokens > 0 for u in up):
        return Verdict.GRANTED
    if not up:
        return Verdict.UNAVAILABLE
    return Verdict.QUEUE if queue_timeout > 0 else Verdict.BUSY


def draining() -> Draining:
    """The envelope for a call that arrives while the gateway drains."""
    return Draining(
        "the gateway is shutting down; retry on another instance or after it restarts",
        headers=[(b"Retry-After", b"1")],
    )


class Gateway(Protocol):
    """What ``preflight`` reads of the gateway (``TTSProxy`` is one)."""

    @property
    def draining(self) -> bool:
        """Whether the gateway is shutting down."""

    @property
    def exempt(self) -> Sequence[ExemptRule]:
        """The ``--slot-exempt`` rules."""

    @property
    def pool(self) -> UpstreamPool:
        """The upstreams and their slots."""

    @property
    def queue_timeout(self) -> float:
        """How long a request may wait for a slot (0: it may not)."""


def preflight(gateway: Gateway, request: Request) -> GatewayError | None:
    """The refusal ``forward`` would answer ``request`` at once, found before its body came.

    Only for what the audio route forwards and that needs a slot: draining, every slot busy
    with no queue, every upstream down. ``None`` otherwise (a queue with room included).
    """
    if not proxied_directly(request):
        return None
    if gateway.draining:
        return draining()
    websocket = is_websocket_request(request)
    if not websocket and any(r.matches(request.method, request.uri) for r in gateway.exempt):
        return None
    pool = gateway.pool
    verdict = peek(pool.upstreams, pool.clock.seconds(), queue_timeout=gateway.queue_timeout)
    if verdict in (Verdict.BUSY, Verdict.UNAVAILABLE):
        return refusal(verdict, pool.retry_after())
    return None
