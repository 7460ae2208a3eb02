"""Scenario 7: gateway CPU seconds per GB streamed, over scenario 2's transfers; no target.

utime + stime from ``/proc/<pid>/stat`` (nginx: master and workers). Measured by scenario 2
(``bench/scenarios/throughput.py``), which hands its transfers to :func:`per_gb` and :func:`result`.
"""

from __future__ import annotations

from typing import Any

from bench.common import GB
from bench.contenders import AISTACK, CLK_TCK, DIRECT, NGINX
from bench.harness import Bench
from bench.table import Row, Targets, fmt


def per_gb(rows: dict[str, list[dict[str, float]]], size: int) -> dict[str, Any]:
    """CPU seconds per GB for each contender, from scenario 2's ``size``-byte transfers."""
    cpu: dict[str, Any] = {}
    for name, runs in rows.items():
        streamed = size * len(runs) / GB
        cpu[name] = {
            "gateway_cpu_s_per_gb": (
                sum(r["gateway_cpu_s"] for r in runs) / streamed if name != DIRECT else None
            ),
            "upstream_cpu_s_per_gb": sum(r["upstream_cpu_s"] for r in runs) / streamed,
            "client_cpu_s_per_gb": sum(r["client_cpu_s"] for r in runs) / streamed,
        }
    return cpu


def result(cpu: dict[str, Any]) -> dict[str, Any]:
    """``results["7"]``: the contenders' entries of :func:`per_gb` (the floors taken out)."""
    return {
        "what": "gateway CPU seconds (utime+stime) per GB over scenario 2's transfers",
        "clock_ticks_per_s": CLK_TCK,
        "summary": cpu,
    }


class Cpu:
    """CPU per GB; its numbers come from scenario 2's transfers."""

    number = "7"
    measured_by = "2"
    fresh_gateways = False

    def measure(self, bench: Bench) -> None:
        """Nothing of its own: scenario 2's ``measure`` writes ``results["7"]``."""

    def rows(self, results: dict[str, Any], names: list[str], targets: Targets) -> list[Row]:
        rows: list[Row] = []
        summary = results["7"]["summary"]
        rows.append(
            Row(
                "7",
                "gateway CPU s per GB streamed",
                {
                    n: "n/a"
                    if e["gateway_cpu_s_per_gb"] is None
                    else fmt(e["gateway_cpu_s_per_gb"], 2)
                    for n, e in summary.items()
                },
                "(report)",
            )
        )
        rows.append(
            Row(
                "7",
                "  upstream CPU s per GB (same transfers)",
                {n: fmt(e["upstream_cpu_s_per_gb"], 2) for n, e in summary.items()},
            )
        )
        return rows

    def floor_lines(self, results: dict[str, Any], floors: dict[str, Any]) -> list[str]:
        lines: list[str] = []
        if "7" in floors and "7" in results:
            floor, main = floors["7"], results["7"]["summary"]
            cells = [f"{n} {e['gateway_cpu_s_per_gb']:.2f}" for n, e in floor.items()]
            cells += [
                f"{n} {main[n]['gateway_cpu_s_per_gb']:.2f}" for n in (AISTACK, NGINX) if n in main
            ]
            lines.append(f"  7  CPU s per GB: {', '.join(cells)}")
        return lines


SCENARIO = Cpu()
