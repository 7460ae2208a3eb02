"""The run's settings, and what the scenarios share: the upstream, the long-lived contenders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.clients import first_byte, speech, transfer
from bench.common import MiB
from bench.contenders import (
    AISTACK,
    DIRECT,
    FLOOR_KINDS,
    GATEWAY_SLOTS,
    TWISTED,
    WEB_FLOOR,
    Contender,
    start_aistack,
    start_floor,
    start_nginx,
    start_twisted,
    start_upstream,
)


@dataclass
class Settings:
    repeat: int
    wrk_seconds: float
    stream_mb: int
    ttfb_trials: int
    stall_mib: int
    stall_cap: float
    close_trials: int
    close_mib: int
    burst: int
    sequential_503: int
    nginx_workers: int
    nginx_buffer: str
    loadgen: str
    floors: bool


class Bench:
    """Holds the upstream and the long-lived contenders; each ``measure`` adds results."""

    def __init__(self, settings: Settings, workdir: Path, names: list[str]) -> None:
        self.s = settings
        self.workdir = workdir
        self.names = names  # contenders taking part (nginx dropped where absent)
        self.upstream = start_upstream(workdir)
        self.contenders: dict[str, Contender] = {}
        self.results: dict[str, Any] = {}
        self.buffer = memoryview(bytearray(1 << 20))

    def start_contender(self, name: str, slots: int = GATEWAY_SLOTS) -> Contender:
        if name == DIRECT:
            return Contender(DIRECT, self.upstream.port)
        if name == AISTACK:
            return start_aistack(self.upstream, self.workdir, slots)
        if name == TWISTED:
            return start_twisted(self.upstream, self.workdir)
        if name in FLOOR_KINDS:
            return start_floor(name, self.upstream, self.workdir)
        return start_nginx(self.upstream, self.workdir, self.s.nginx_workers, self.s.nginx_buffer)

    def ensure_started(self, floors: Sequence[str] = ()) -> list[str]:
        """Start the contenders (and ``floors`` if the floors are on); who takes part."""
        names = [*self.names, *(floors if self.s.floors else ())]
        for name in names:
            if name not in self.contenders:
                self.contenders[name] = contender = self.start_contender(name)
                if name != WEB_FLOOR:  # it only answers voices and 503s
                    self.warm(contender)
        return names

    def split_floors(self, by_name: dict[str, Any]) -> dict[str, Any]:
        """Take the floors' entries out of ``by_name`` (the table shows contenders only)."""
        return {name: by_name.pop(name) for name in FLOOR_KINDS if name in by_name}

    def warm(self, contender: Contender) -> None:
        for _ in range(3):
            transfer(contender.port, speech(4 * MiB), self.buffer)
        for _ in range(20):
            first_byte(contender.port, speech(3840, chunk=3840))

    def stop_contenders(self) -> None:
        """Stop the long-lived contenders (scenarios 4 and 6 start their own, one at a time)."""
        for contender in self.contenders.values():
            contender.stop()
        self.contenders.clear()

    def stop(self) -> None:
        self.stop_contenders()
        self.upstream.stop()
