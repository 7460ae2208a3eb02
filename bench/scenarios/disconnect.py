"""Scenario 5: a client closes mid-stream (128 MiB response): until the upstream sees it closed.

50 trials; the upstream prints ``time.monotonic()`` when its connection closes. Target: p99 <=
2 ms.
"""

from __future__ import annotations

import time
from typing import Any

from bench.clients import new_id, open_stream, speech
from bench.common import MiB, log, median, p99, rotated
from bench.contenders import AISTACK
from bench.goals import CLOSE_P99_GOAL_MS as P99_GOAL_MS
from bench.harness import Bench
from bench.table import Row, Targets, pair


class Disconnect:
    """How soon a client's close reaches the upstream."""

    number = "5"
    measured_by = "5"
    fresh_gateways = False

    def measure(self, bench: Bench) -> None:
        s = bench.s
        bench.ensure_started()
        closed: dict[str, list[float]] = {name: [] for name in bench.names}
        ran_to_end: dict[str, list[float]] = {name: [] for name in bench.names}
        missing: dict[str, int] = dict.fromkeys(bench.names, 0)
        size = s.close_mib * MiB
        for trial in range(s.close_trials):
            if trial % 10 == 0:
                log(f"5: client close, trial {trial + 1}/{s.close_trials}")
            for name in rotated(bench.names, trial):
                ident = new_id("close")
                sock, _ = open_stream(bench.contenders[name].port, speech(size, id=ident))
                bench.upstream.wait(ident, {"HEADERS"}, 10)
                closed_at = time.monotonic()
                sock.close()
                try:
                    event = bench.upstream.wait(ident, {"CLOSED", "DONE"}, 10)
                except TimeoutError:
                    missing[name] += 1
                    continue
                finally:
                    bench.upstream.forget(ident)
                if event.kind == "CLOSED":
                    closed[name].append((event.t - closed_at) * 1e3)
                else:
                    ran_to_end[name].append(event.t - closed_at)
        summary: dict[str, Any] = {}
        for name in bench.names:
            values = closed[name]
            entry: dict[str, Any] = {
                "closed": len(values),
                "ran_to_end": len(ran_to_end[name]),
                "no_event_in_10s": missing[name],
            }
            if values:
                entry.update(p50_ms=median(values), p99_ms=p99(values), max_ms=max(values))
            if ran_to_end[name]:
                entry["ran_to_end_p50_s"] = median(ran_to_end[name])
            summary[name] = entry
        bench.results["5"] = {
            "what": f"client reads the head and 64 KiB of a {s.close_mib} MiB stream, then "
            "closes; time until the upstream sees its connection closed",
            "trials": s.close_trials,
            "summary": summary,
            "close_ms": {n: [round(v, 4) for v in vs] for n, vs in closed.items()},
        }

    def rows(self, results: dict[str, Any], names: list[str], targets: Targets) -> list[Row]:
        rows: list[Row] = []
        summary = results["5"]["summary"]
        trials = results["5"]["trials"]
        cells = {}
        for n, e in summary.items():
            if "p50_ms" in e:
                cells[n] = pair(e["p50_ms"], e["p99_ms"], 2)
                if e["closed"] != trials:
                    cells[n] += f" ({e['closed']}/{trials} closed)"
            else:
                cells[n] = f"never ({e['ran_to_end']} ran to end)"
        row = Row(
            "5",
            f"close -> upstream closed, {trials}x: p50 / p99 (ms)",
            cells,
            f"p99 <= {P99_GOAL_MS:g} ms",
        )
        if AISTACK in summary:
            e = summary[AISTACK]
            row.verdict = targets.check(
                "5",
                f"client close -> upstream closed: p99 <= {P99_GOAL_MS:g} ms",
                f"{e.get('p99_ms', float('nan')):.2f} ms ({e['closed']}/{trials} closed)",
                e["closed"] == trials and e.get("p99_ms", float("inf")) <= P99_GOAL_MS,
            )
        rows.append(row)
        return rows

    def floor_lines(self, results: dict[str, Any], floors: dict[str, Any]) -> list[str]:
        return []


SCENARIO = Disconnect()
