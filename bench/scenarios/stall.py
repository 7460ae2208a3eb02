"""Scenario 4: a client stops reading during a 500 MiB response: the gateway's RSS growth.

VmRSS (nginx: its workers summed), a fresh gateway per trial, as ``bench/stall_and_disconnect.py``
measures it. Target: <= 1 MiB.
"""

from __future__ import annotations

import time
from typing import Any

from bench.clients import new_id, open_stream, speech, transfer
from bench.common import MiB, log, median, rotated
from bench.contenders import AISTACK, DIRECT, rss_of
from bench.goals import RSS_GOAL_MIB
from bench.harness import Bench
from bench.table import Row, Targets


def stall_once(bench: Bench, name: str) -> dict[str, Any]:
    """One trial on a fresh ``name``: its RSS before and at the peak of a stalled stream."""
    s = bench.s
    contender = bench.start_contender(name)
    try:
        for _ in range(2):
            transfer(contender.port, speech(4 * MiB), bench.buffer)  # warm up
        baseline = peak = rss_of(contender.rss_pids())
        ident = new_id("stall")
        started = time.monotonic()
        sock, _ = open_stream(contender.port, speech(s.stall_mib * MiB, id=ident))
        try:
            settled_at: float | None = None
            outcome = f"cap of {s.stall_cap:g} s reached"
            while True:
                now = time.monotonic()
                peak = max(peak, rss_of(contender.rss_pids()))
                if settled_at is None:
                    if bench.upstream.first(ident, {"DONE"}) is not None:
                        settled_at = now + 1.0
                        outcome = "upstream sent it all (gateway buffered it)"
                    elif bench.upstream.first(ident, {"STALLED"}) is not None:
                        settled_at = now + 2.0
                        outcome = "upstream paused (backpressure)"
                if (settled_at is not None and now >= settled_at) or (now - started >= s.stall_cap):
                    break
                time.sleep(0.05)
            sent = [e.sent for e in bench.upstream.events(ident) if e.kind in ("STALLED", "DONE")]
        finally:
            sock.close()
    finally:
        contender.stop()
    return {
        "baseline_rss": baseline,
        "peak_rss": peak,
        "growth_mib": (peak - baseline) / MiB,
        "upstream_sent": max(sent) if sent else None,
        "outcome": outcome,
    }


class Stall:
    """Memory while the only client stops reading."""

    number = "4"
    measured_by = "4"
    fresh_gateways = True

    def measure(self, bench: Bench) -> None:
        s = bench.s
        names = [n for n in bench.names if n != DIRECT]
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for turn in range(s.repeat):
            for name in rotated(names, turn):
                log(f"4: stall on {s.stall_mib} MiB, round {turn + 1}/{s.repeat}: {name}")
                rows[name].append(stall_once(bench, name))
        summary = {
            name: {
                "growth_mib": median([r["growth_mib"] for r in runs]),
                "max_growth_mib": max(r["growth_mib"] for r in runs),
                "outcome": runs[-1]["outcome"],
                "upstream_sent_mib": (
                    None if runs[-1]["upstream_sent"] is None else runs[-1]["upstream_sent"] / MiB
                ),
            }
            for name, runs in rows.items()
        }
        bench.results["4"] = {
            "what": f"RSS growth while the only client stops reading a {s.stall_mib} MiB "
            "response (a fresh gateway per trial; nginx: its workers summed)",
            "mib": s.stall_mib,
            "rounds": s.repeat,
            "summary": summary,
            "runs": rows,
        }

    def rows(self, results: dict[str, Any], names: list[str], targets: Targets) -> list[Row]:
        rows: list[Row] = []
        summary = results["4"]["summary"]
        row = Row(
            "4",
            f"stall on {results['4']['mib']} MiB: RSS growth MiB median (max)",
            {DIRECT: "n/a"}
            | {
                n: f"{e['growth_mib']:+.1f} ({e['max_growth_mib']:+.1f})"
                for n, e in summary.items()
            },
            f"<= {RSS_GOAL_MIB} MiB",
        )
        if AISTACK in summary:
            ours = summary[AISTACK]["max_growth_mib"]
            row.verdict = targets.check(
                "4",
                f"RSS growth <= {RSS_GOAL_MIB} MiB (worst trial)",
                f"{ours:+.2f} MiB",
                ours <= RSS_GOAL_MIB,
            )
        rows.append(row)
        upstream: dict[str, str] = {DIRECT: "n/a"}
        for n, e in summary.items():
            what = "paused" if "paused" in e["outcome"] else "sent all"
            sent = e["upstream_sent_mib"]
            upstream[n] = what if sent is None else f"{what} at {sent:.0f} MiB"
        rows.append(Row("4", "  the upstream", upstream))
        return rows

    def floor_lines(self, results: dict[str, Any], floors: dict[str, Any]) -> list[str]:
        return []


SCENARIO = Stall()
