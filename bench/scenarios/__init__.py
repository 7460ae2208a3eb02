"""The seven scenarios, one module each: its measurement, its table rows, its floors line."""

from __future__ import annotations

from bench.scenarios import busy, cpu, disconnect, first_byte, stall, throughput, voices
from bench.scenarios.base import Scenario

#: In the table's order (and the order their targets are listed in).
SCENARIOS: tuple[Scenario, ...] = (
    voices.SCENARIO,
    throughput.SCENARIO,
    first_byte.SCENARIO,
    stall.SCENARIO,
    disconnect.SCENARIO,
    busy.SCENARIO,
    cpu.SCENARIO,
)
#: The floors summary reads latency first, then the data path, then the 503s.
FLOOR_ORDER = ("1", "3", "2", "7", "6")

__all__ = ["FLOOR_ORDER", "SCENARIOS", "Scenario"]
