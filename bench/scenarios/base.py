"""What a scenario is to the command and to the report."""

from __future__ import annotations

from typing import Any, Protocol

from bench.harness import Bench
from bench.table import Row, Targets


class Scenario(Protocol):
    """One scenario: its measurement, its table rows and its line beside the floors."""

    #: The scenario's key in the results (``"1"`` ... ``"7"``).
    number: str
    #: The scenario whose ``measure`` produces this one's results (7 comes with 2's transfers).
    measured_by: str
    #: Whether it starts its own gateways (then it runs after the shared contenders stop).
    fresh_gateways: bool

    def measure(self, bench: Bench) -> None:
        """Run the scenario; put its results into ``bench.results``."""

    def rows(self, results: dict[str, Any], names: list[str], targets: Targets) -> list[Row]:
        """The table rows for ``results[number]``, checking aistack-tts's targets on the way."""

    def floor_lines(self, results: dict[str, Any], floors: dict[str, Any]) -> list[str]:
        """The lines putting the Twisted floors beside aistack-tts (none: no floors here)."""
