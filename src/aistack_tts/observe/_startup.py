"""The start-up line: what runs, in one event an operator reads first.

Then ``warn_unreachable``: one warning for each upstream that cannot be reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from aistack_tts._config import GatewayConfig

from ._health import ReadinessProbe
from ._jsonlog import Preformatted

log = Logger(namespace="aistack_tts.startup")


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def startup_fields(
    config: GatewayConfig, version: str, bound: Sequence[str] = ()
) -> dict[str, Any]:
    """The start-up event's fields (JSON scalars, so JSON lines carry them at the top).

    ``bound`` is where each ``--listen`` endpoint listens, in order (``127.0.0.1:8000``).
    """
    return {
        "version": version,
        "listen": " ".join(config.listen),
        "bound": " ".join(bound),
        "upstreams": " ".join(config.upstream),
        "slots": config.slots,
        "queue_timeout": config.queue_timeout,
        "connect_timeout": config.connect_timeout,
        "idle_timeout": config.idle_timeout,
        "client_timeout": config.client_timeout,
        "keepalive_timeout": config.keepalive_timeout or config.client_timeout,
        "ws_idle_timeout": config.ws_idle_timeout,
        "drain_timeout": config.drain_timeout,
        "max_body": config.max_body,
        "slot_exempt": " ".join(config.slot_exempt),
        "metrics": config.metrics,
        "health": config.health,
        "demo": config.demo,
    }


def startup_line(fields: dict[str, Any]) -> str:
    """The start-up event's text."""
    f = fields
    slots = f"{f['slots']} slot{'s' if f['slots'] != 1 else ''}"
    queue = (
        f"queue-timeout {f['queue_timeout']:g} s"
        if f["queue_timeout"] > 0
        else "queue-timeout 0 (a busy GPU is a 503 at once)"
    )
    demo = " (the built-in demo)" if f["demo"] else ""
    return (
        f"aistack-tts {f['version']}: upstream {f['upstreams']}{demo}, {slots} each; {queue}; "
        f"timeouts: connect {f['connect_timeout']:g} s, idle {f['idle_timeout']:g} s, "
        f"client {f['client_timeout']:g} s, keepalive {f['keepalive_timeout']:g} s, "
        f"ws-idle {f['ws_idle_timeout']:g} s, drain {f['drain_timeout']:g} s; "
        f"max-body {f['max_body']} bytes; slot-exempt {f['slot_exempt'] or 'none'}; "
        f"/metrics {_on(f['metrics'])}, /healthz and /readyz {_on(f['health'])}; "
        f"listen {f['listen']}" + (f" on {f['bound']}" if f["bound"] else "")
    )


def log_startup(config: GatewayConfig, version: str, bound: Sequence[str] = ()) -> None:
    """Log the start-up line for ``config``, of the gateway at ``version``, bound there."""
    fields = startup_fields(config, version, bound)
    log.info("{text}", text=Preformatted(startup_line(fields)), **fields)


def warn_unreachable(probes: Sequence[ReadinessProbe]) -> Deferred[list[bool]]:
    """Probe each upstream once; log one warning for each that cannot be reached.

    Never fails and never holds up the start: the gateway already listens, and answers
    ``503 upstream_unavailable`` for an upstream that is down until it is up. Fires with each
    probe's answer (``True``: reached).
    """

    def checked(probe: ReadinessProbe, reached: bool) -> bool:
        if not reached:
            upstream = probe.origin.url
            log.warn(
                "upstream {upstream} cannot be reached ({cause}): its calls get 503 "
                "upstream_unavailable until it can; is the Qwen3-TTS server up?",
                upstream=upstream,
                cause=probe.cause,
            )
        return reached

    def answer(probe: ReadinessProbe) -> Deferred[bool]:
        return probe.check().addCallback(lambda reached: checked(probe, reached))

    return gatherResults([answer(probe) for probe in probes])
