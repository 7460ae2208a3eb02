"""Scenario 1: ``GET /v1/audio/voices`` with ``wrk --latency``, 1 connection then 16.

Latency p50/p99 and what each contender adds over direct, paired per round; the gateway's CPU
per request. Targets: at most 0.45x the added p50, 0.5x the CPU of twisted.web.proxy.
"""

from __future__ import annotations

from typing import Any

from bench.clients import run_python_load, run_wrk
from bench.common import log, median, rotated
from bench.contenders import (
    AGENT_FLOOR,
    AISTACK,
    DIRECT,
    LEAN_FLOOR,
    TWISTED,
    WEB_FLOOR,
    cpu_seconds,
)
from bench.goals import ADDED_P50_VS_TWISTED, CPU_VS_TWISTED
from bench.harness import Bench
from bench.table import Row, Targets, fmt, pair


def us(entry: dict[str, Any] | None) -> str:
    """A floor's added p50 (and CPU per request) for the floors summary."""
    if entry is None:
        return "-"
    cpu = entry.get("cpu_us_per_request")
    return f"{entry['added_p50_us']:.0f} us" + (f" (CPU {cpu:.0f} us)" if cpu else "")


class Voices:
    """Latency of a small GET, closed loop."""

    number = "1"
    measured_by = "1"
    fresh_gateways = False

    def measure(self, bench: Bench) -> None:
        s = bench.s
        load = run_wrk if s.loadgen == "wrk" else run_python_load
        names = bench.ensure_started([WEB_FLOOR, AGENT_FLOOR, LEAN_FLOOR])
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for connections in (1, 16):
            key = f"{connections}conn"
            runs[key] = {name: [] for name in names}
            for name in names:  # warm-up, not recorded
                load(bench.contenders[name].port, connections, min(1.0, s.wrk_seconds))
            for turn in range(s.repeat):
                for name in rotated(names, turn):
                    log(f"1: voices, {connections} conn, round {turn + 1}/{s.repeat}: {name}")
                    pids = bench.contenders[name].pids()
                    cpu = cpu_seconds(pids)
                    run = load(bench.contenders[name].port, connections, s.wrk_seconds)
                    if pids and run.get("requests"):
                        run["cpu_us_per_request"] = (
                            (cpu_seconds(pids) - cpu) / run["requests"] * 1e6
                        )
                    runs[key][name].append(run)
        summary: dict[str, Any] = {}
        for key, by_name in runs.items():
            direct = by_name.get(DIRECT, [])
            summary[key] = {}
            for name, rounds in by_name.items():
                entry: dict[str, Any] = {
                    "p50_us": median([r["p50"] for r in rounds]) * 1e6,
                    "p99_us": median([r["p99"] for r in rounds]) * 1e6,
                    "rps": median([r["rps"] for r in rounds]),
                    "non_2xx": sum(r["non_2xx"] for r in rounds),
                    "socket_errors": sum(r["socket_errors"] for r in rounds),
                }
                if all("cpu_us_per_request" in r for r in rounds):
                    entry["cpu_us_per_request"] = median([r["cpu_us_per_request"] for r in rounds])
                if name != DIRECT and direct:
                    entry["added_p50_us"] = (
                        median([r["p50"] - d["p50"] for r, d in zip(rounds, direct, strict=True)])
                        * 1e6
                    )
                    entry["added_p99_us"] = (
                        median([r["p99"] - d["p99"] for r, d in zip(rounds, direct, strict=True)])
                        * 1e6
                    )
                summary[key][name] = entry
        floors = {key: bench.split_floors(by_name) for key, by_name in summary.items()}
        if s.floors:
            bench.results.setdefault("floors", {})["1"] = floors
        bench.results["1"] = {
            "what": "GET /v1/audio/voices, closed loop; aistack-tts with --slots 16",
            "loadgen": "wrk -t1 --latency" if s.loadgen == "wrk" else "python (in the harness)",
            "seconds_per_run": s.wrk_seconds,
            "rounds": s.repeat,
            "summary": summary,
            "runs": runs,
        }

    def rows(self, results: dict[str, Any], names: list[str], targets: Targets) -> list[Row]:
        rows: list[Row] = []
        for key, label in (("1conn", "1 conn"), ("16conn", "16 conns")):
            summary = results["1"]["summary"][key]
            rows.append(
                Row(
                    "1",
                    f"voices, {label}: latency p50 / p99 (us)",
                    {n: pair(e["p50_us"], e["p99_us"], 0) for n, e in summary.items()},
                )
            )
            added = {n: e for n, e in summary.items() if "added_p50_us" in e}
            row = Row(
                "1",
                f"voices, {label}: added p50 / p99 (us)",
                {n: pair(e["added_p50_us"], e["added_p99_us"], 0) for n, e in added.items()},
                f"added p50 <= {ADDED_P50_VS_TWISTED:g}x twisted's",
            )
            if AISTACK in added and TWISTED in added:
                ours, theirs = added[AISTACK]["added_p50_us"], added[TWISTED]["added_p50_us"]
                goal = ADDED_P50_VS_TWISTED * theirs
                row.verdict = targets.check(
                    "1",
                    f"voices, {label}: added p50 <= {ADDED_P50_VS_TWISTED:g}x twisted.web.proxy's",
                    f"{ours:.0f} us vs {theirs:.0f} us x {ADDED_P50_VS_TWISTED:g} = {goal:.0f} us",
                    ours <= goal,
                )
            rows.append(row)
            rows.append(
                Row(
                    "1",
                    f"voices, {label}: requests/s",
                    {n: fmt(e["rps"], 0) for n, e in summary.items()},
                )
            )
            cpu = {
                n: e["cpu_us_per_request"] for n, e in summary.items() if "cpu_us_per_request" in e
            }
            row = Row(
                "1",
                "  gateway CPU per request (us)",
                {n: fmt(v, 0) for n, v in cpu.items()},
                f"<= {CPU_VS_TWISTED:g}x twisted's",
            )
            if AISTACK in cpu and TWISTED in cpu:
                goal = CPU_VS_TWISTED * cpu[TWISTED]
                row.verdict = targets.check(
                    "1",
                    f"voices, {label}: CPU per request <= {CPU_VS_TWISTED:g}x twisted.web.proxy's",
                    f"{cpu[AISTACK]:.0f} us vs {cpu[TWISTED]:.0f} us x {CPU_VS_TWISTED:g} = "
                    f"{goal:.0f} us",
                    cpu[AISTACK] <= goal,
                )
            rows.append(row)
        return rows

    def floor_lines(self, results: dict[str, Any], floors: dict[str, Any]) -> list[str]:
        lines: list[str] = []
        for key, label in (("1conn", "1 conn"), ("16conn", "16 conns")):
            if key not in floors.get("1", {}):
                continue
            floor, main = floors["1"][key], results["1"]["summary"][key]
            twisted = main.get(TWISTED)
            target = f"{twisted['added_p50_us'] * ADDED_P50_VS_TWISTED:.0f} us" if twisted else "-"
            lines.append(
                f"  1  voices, {label}, added p50: {WEB_FLOOR} {us(floor.get(WEB_FLOOR))}, "
                f"{AGENT_FLOOR} {us(floor.get(AGENT_FLOOR))}, {LEAN_FLOOR} "
                f"{us(floor.get(LEAN_FLOOR))}; aistack-tts {us(main.get(AISTACK))} "
                f"(target {target})"
            )
        return lines


SCENARIO = Voices()
