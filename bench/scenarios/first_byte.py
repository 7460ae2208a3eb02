"""Scenario 3: the upstream sends its first audio byte after 100 ms; time to the first body byte.

What each contender adds over direct (p50), with the status line coming with the first chunk and
with the status line sent at once. Target: at most half of twisted.web.proxy's added p50.
"""

from __future__ import annotations

from typing import Any

from bench.clients import first_byte, speech
from bench.common import log, median, p99, rotated
from bench.contenders import (
    AGENT_FLOOR,
    AISTACK,
    DIRECT,
    LEAN_FLOOR,
    NGINX,
    RELAY_FLOOR,
    TWISTED,
)
from bench.goals import TTFB_VS_TWISTED
from bench.harness import Bench
from bench.table import Row, Targets, pair


class FirstByte:
    """Time to the first body byte behind a slow start."""

    number = "3"
    measured_by = "3"
    fresh_gateways = False

    def measure(self, bench: Bench) -> None:
        s = bench.s
        names = bench.ensure_started([AGENT_FLOOR, LEAN_FLOOR, RELAY_FLOOR])
        variants = {
            "late_head": speech(38400, chunk=3840, delay=0.1),
            "early_head": speech(38400, chunk=3840, delay=0.1, head="early"),
        }
        samples: dict[str, dict[str, list[float]]] = {
            v: {name: [] for name in names} for v in variants
        }
        for trial in range(s.ttfb_trials):
            if trial % 10 == 0:
                log(f"3: first byte after 100 ms, trial {trial + 1}/{s.ttfb_trials}")
            for variant, target in variants.items():
                for name in rotated(names, trial):
                    samples[variant][name].append(first_byte(bench.contenders[name].port, target))
        summary: dict[str, Any] = {}
        for variant, by_name in samples.items():
            direct = by_name.get(DIRECT)
            summary[variant] = {}
            for name, values in by_name.items():
                entry = {"p50_ms": median(values) * 1e3, "p99_ms": p99(values) * 1e3}
                if name != DIRECT and direct:
                    entry["added_p50_ms"] = (median(values) - median(direct)) * 1e3
                    entry["added_p99_ms"] = (p99(values) - p99(direct)) * 1e3
                summary[variant][name] = entry
        floors = {variant: bench.split_floors(by_name) for variant, by_name in summary.items()}
        if s.floors:
            bench.results.setdefault("floors", {})["3"] = floors
        bench.results["3"] = {
            "what": "time from sending the request to the first body byte; the upstream waits "
            "100 ms before its first 3840-byte chunk (late_head: the status line comes with "
            "it; early_head: the status line is sent at once)",
            "trials": s.ttfb_trials,
            "summary": summary,
            "samples_ms": {
                v: {n: [round(x * 1e3, 4) for x in xs] for n, xs in d.items()}
                for v, d in samples.items()
            },
        }

    def rows(self, results: dict[str, Any], names: list[str], targets: Targets) -> list[Row]:
        rows: list[Row] = []
        for variant, label in (("late_head", "head+audio"), ("early_head", "head early")):
            summary = results["3"]["summary"][variant]
            rows.append(
                Row(
                    "3",
                    f"first byte, {label} at 100 ms: p50 / p99 (ms)",
                    {n: pair(e["p50_ms"], e["p99_ms"], 2) for n, e in summary.items()},
                )
            )
            added = {n: e for n, e in summary.items() if "added_p50_ms" in e}
            row = Row(
                "3",
                f"first byte, {label} at 100 ms: added p50 / p99",
                {n: pair(e["added_p50_ms"], e["added_p99_ms"], 2) for n, e in added.items()},
                f"added p50 <= {TTFB_VS_TWISTED:g}x twisted's",
            )
            if AISTACK in added and TWISTED in added:
                ours, theirs = added[AISTACK]["added_p50_ms"], added[TWISTED]["added_p50_ms"]
                goal = TTFB_VS_TWISTED * theirs
                row.verdict = targets.check(
                    "3",
                    f"first byte ({label} after 100 ms): added p50 <= {TTFB_VS_TWISTED:g}x "
                    "twisted.web.proxy's",
                    f"{ours:.2f} ms vs {theirs:.2f} ms x {TTFB_VS_TWISTED:g} = {goal:.2f} ms",
                    ours <= goal,
                )
            rows.append(row)
        return rows

    def floor_lines(self, results: dict[str, Any], floors: dict[str, Any]) -> list[str]:
        lines: list[str] = []
        for variant, label in (("late_head", "head+audio"), ("early_head", "head early")):
            if variant not in floors.get("3", {}):
                continue
            floor, main = floors["3"][variant], results["3"]["summary"][variant]
            cells = [f"{n} {e['added_p50_ms']:.2f}" for n, e in floor.items()]
            cells += [f"{n} {main[n]['added_p50_ms']:.2f}" for n in (AISTACK, NGINX) if n in main]
            twisted = main.get(TWISTED)
            target = f"{twisted['added_p50_ms'] * TTFB_VS_TWISTED:.2f}" if twisted else "-"
            lines.append(
                f"  3  first byte ({label}), added p50 ms: {', '.join(cells)} (target {target})"
            )
        return lines


SCENARIO = FirstByte()
