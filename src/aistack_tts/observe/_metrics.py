"""Prometheus metrics: what operators of a shared GPU box need to see."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

#: From a quick voices lookup to a long non-streamed generation.
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    """The gateway's metrics, in their own registry (one per ``TTSProxy``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        r = self.registry
        self.requests = Counter(
            "aistack_tts_requests",
            "Requests answered, by method, status and who answered (provider).",
            ["method", "status", "provider"],
            registry=r,
        )
        self.gpu_busy = Counter(
            "aistack_tts_gpu_busy", "Requests refused with 503 gpu_busy.", registry=r
        )
        self.slot_in_use = Gauge(
            "aistack_tts_slot_in_use",
            "GPU slot tokens held right now (by this gateway or work sharing the slot).",
            registry=r,
        )
        self.slot_held = Histogram(
            "aistack_tts_slot_held_seconds",
            "How long the gateway held the GPU slot per call.",
            buckets=_SECONDS,
            registry=r,
        )
        self.upstream_headers = Histogram(
            "aistack_tts_upstream_headers_seconds",
            "Time from sending a request upstream to its response headers.",
            buckets=_SECONDS,
            registry=r,
        )
        self.upstream_total = Histogram(
            "aistack_tts_upstream_seconds",
            "Time from sending a request upstream to the end of the call.",
            buckets=_SECONDS,
            registry=r,
        )
        self.bytes_streamed = Counter(
            "aistack_tts_streamed_bytes", "Response body bytes relayed to clients.", registry=r
        )
        self.in_flight = Gauge("aistack_tts_in_flight", "Upstream calls under way.", registry=r)
        self.client_aborts = Counter(
            "aistack_tts_client_aborts", "Calls ended by the client leaving.", registry=r
        )
        self.upstream_faults = Counter(
            "aistack_tts_upstream_faults",
            "Upstream failures, by type and upstream (none: every upstream was cooling down).",
            ["type", "upstream"],
            registry=r,
        )
        self.upstream_calls = Counter(
            "aistack_tts_upstream_calls",
            "Calls sent to each upstream, by how they ended (the access event's outcome).",
            ["upstream", "outcome"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "aistack_tts_queue_wait_seconds",
            "How long calls waited for the GPU slot (from arrival; 0-ish when it was free).",
            buckets=_SECONDS,
            registry=r,
        )

    def count(self, counter: Counter, *labels: str) -> None:
        """``counter.labels(*labels).inc()``, with the labelled child kept for the next time.

        The label sets are few (methods, statuses, providers, upstreams, outcomes) and the
        lookup is a good part of what a counted request costs.
        """
        key = (counter, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels)
        child.inc()

    def watch(self, slot_in_use: Callable[[], float], in_flight: Callable[[], float]) -> None:
        """Read the gauges from the live objects at scrape time."""
        self.slot_in_use.set_function(slot_in_use)
        self.in_flight.set_function(in_flight)


class MetricsResource(Resource):
    """``GET /metrics`` in the Prometheus text format.

    prometheus_client's own Twisted resource is a WSGI app on the global reactor's thread
    pool; rendering a registry is fast and in memory, so it is done here, on the reactor.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._registry = registry

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)
