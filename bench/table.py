"""The table's pieces the scenarios fill in: rows, target verdicts, number formats."""

from __future__ import annotations

from dataclasses import dataclass


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pair(a: float | None, b: float | None, digits: int) -> str:
    """``a / b``, as the table shows p50 / p99."""
    return f"{fmt(a, digits)} / {fmt(b, digits)}"


@dataclass
class Row:
    scenario: str
    metric: str
    cells: dict[str, str]
    target: str = ""
    verdict: str = ""


@dataclass
class Target:
    scenario: str
    target: str
    value: str
    passed: bool


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


class Targets:
    """The target verdicts for aistack-tts, in the order the rows met them."""

    def __init__(self) -> None:
        self.found: list[Target] = []

    def check(self, scenario: str, target: str, value: str, ok: bool) -> str:
        """Record one verdict; returns it as the row's result cell."""
        self.found.append(Target(scenario, target, value, ok))
        return verdict(ok)
