"""Admission: may a request go upstream now, and how. One decision, taken before any I/O.

``forward`` asks ``admit`` once per request and acts on the verdict: a slot-exempt call goes
to any reachable upstream, a granted one starts with its slot token, the rest wait in the
queue or get the envelope the verdict names.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from attrs import frozen

from ._errors import COMPOSE_HINT, GatewayError, GPUBusy, UpstreamUnavailable
from ._pool import Grant, Upstream
from ._protocol import RETRY_UNAVAILABLE_S
from ._slot import RetryAfter


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
