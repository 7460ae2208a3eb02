"""Admission: may a request go upstream now, and how. One decision, taken before any I/O.

``forward`` asks ``admit`` once per request and acts on the verdict: a slot-exempt call goes
to any reachable upstream, a granted one starts with its slot token, the rest wait in the
queue or get the envelope the verdict names. ``preflight`` asks the same question before a
request's body has come (``Expect: 100-continue``), looking at the slots without taking one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
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
    #: Every slot is taken and there is no queue: ``503 gpu_busy``.
    BUSY = "busy"
    #: Every slot is taken and the wait is expected to run past ``--queue-timeout``:
    #: ``503 gpu_busy`` at once, ``Retry-After`` when the queue should have room.
    FULL = "full"
    #: Every upstream refused connections recently and none has a free slot to try it
    #: again, with no queue: ``503 upstream_unavailable``.
    UNAVAILABLE = "unavailable"


class Slots(Protocol):
    """What admission asks of the upstream pool (``UpstreamPool`` is one)."""

    def try_take(self, exclude: Sequence[Upstream] = ()) -> Grant | None:
        """A free slot's token, taken, or ``None``."""

    def all_down(self) -> bool:
        """Whether every upstream is in its cool-down after refusing connections."""

    def try_probe(self) -> Grant | None:
        """With every upstream down, a free slot on one of them, taken to try it; or ``None``."""

    def queue_full(self, queue_timeout: float) -> bool:
        """Whether a request joining the queue now is expected to wait past the timeout."""

    def pick(self) -> Upstream:
        """A reachable upstream for a call that takes no slot."""


@frozen
class Admission:
    """A verdict, with what it admits: the grant (``GRANTED``) or the upstream (``EXEMPT``)."""

    verdict: Verdict
    grant: Grant | None = None
    upstream: Upstream | None = None


def admit(slots: Slots, *, exempt: bool, queue_timeout: float) -> Admission:
    """Decide for one request; a ``GRANTED`` verdict has taken its slot token.

    With every upstream down, a free slot on one of them is granted all the same: the call
    tries it (it may be back) rather than be refused on the cool-down's mark alone.
    """
    if exempt:
        return Admission(Verdict.EXEMPT, upstream=slots.pick())
    grant = slots.try_take()
    if grant is None and slots.all_down():
        grant = slots.try_probe()
        if grant is None:
            return Admission(Verdict.QUEUE if queue_timeout > 0 else Verdict.UNAVAILABLE)
    if grant is not None:
        return Admission(Verdict.GRANTED, grant=grant)
    return Admission(_busy(queue_timeout, slots.queue_full))


def _busy(queue_timeout: float, queue_full: Callable[[float], bool]) -> Verdict:
    """Every slot taken: wait in the queue, unless there is none or it is full."""
    if queue_timeout <= 0:
        return Verdict.BUSY
    return Verdict.FULL if queue_full(queue_timeout) else Verdict.QUEUE


def refusal(
    verdict: Verdict, retry_after: RetryAfter, *, queue_wait: float | None = None
) -> GatewayError:
    """The envelope for a ``BUSY``, ``FULL`` or ``UNAVAILABLE`` verdict.

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


def peek(pool: UpstreamPool, *, queue_timeout: float) -> Verdict:
    """The verdict ``admit`` would give a request that takes a slot, with nothing taken.

    ``GRANTED``: a reachable upstream has a free slot now (or, every one down, any has).
    """
    if pool.spare() is not None or pool.probe_spare() is not None:
        return Verdict.GRANTED
    if pool.all_down():
        return Verdict.QUEUE if queue_timeout > 0 else Verdict.UNAVAILABLE
    return _busy(queue_timeout, pool.queue_full)


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
    verdict = peek(pool, queue_timeout=gateway.queue_timeout)
    if verdict in (Verdict.BUSY, Verdict.FULL, Verdict.UNAVAILABLE):
        return refusal(verdict, pool.retry_after(gateway.queue_timeout))
    return None
