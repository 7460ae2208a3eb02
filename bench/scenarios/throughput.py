"""Scenario 2: a 200 MB speech response read as fast as possible, MB/s.

``recv_into`` a reused 1 MiB buffer, no HTTP library. Targets: aistack-tts >= 1.1x
twisted.web.proxy and >= 0.9x the byte-relay floor (its ratio to nginx is reported). The same
transfers give scenario 7's CPU per GB (``bench/scenarios/cpu.py``).
"""

from __future__ import annotations

import time
from typing import Any

from bench.clients import speech, transfer
from bench.common import MB, log, median, rotated
from bench.contenders import (
    AGENT_FLOOR,
    AISTACK,
    DIRECT,
    LEAN_FLOOR,
    NGINX,
    RELAY_FLOOR,
    TWISTED,
    cpu_seconds,
)
from bench.goals import STREAM_VS_RELAY, STREAM_VS_TWISTED
from bench.harness import Bench
from bench.scenarios import cpu
from bench.table import Row, Targets


class Throughput:
    """Bytes per second through each contender."""

    number = "2"
    measured_by = "2"
    fresh_gateways = False

    def measure(self, bench: Bench) -> None:
        s = bench.s
        names = bench.ensure_started([AGENT_FLOOR, LEAN_FLOOR, RELAY_FLOOR])
        size = s.stream_mb * MB
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for turn in range(s.repeat):
            for name in rotated(names, turn):
                log(f"2: {s.stream_mb} MB stream, round {turn + 1}/{s.repeat}: {name}")
                contender = bench.contenders[name]
                pids = contender.pids()
                gateway_cpu = cpu_seconds(pids)
                upstream_cpu = cpu_seconds([bench.upstream.pid])
                client_cpu = time.process_time()
                result = transfer(contender.port, speech(size), bench.buffer)
                client_cpu = time.process_time() - client_cpu
                upstream_cpu = cpu_seconds([bench.upstream.pid]) - upstream_cpu
                gateway_cpu = cpu_seconds(pids) - gateway_cpu
                if result.status != 200 or not result.complete or result.body_bytes < size:
                    raise RuntimeError(f"{name}: bad {s.stream_mb} MB transfer: {result}")
                rows[name].append(
                    {
                        "seconds": result.seconds,
                        "mb_per_s": size / MB / result.seconds,
                        "wire_bytes": result.body_bytes,
                        "gateway_cpu_s": gateway_cpu,
                        "upstream_cpu_s": upstream_cpu,
                        "client_cpu_s": client_cpu,
                    }
                )
        summary: dict[str, Any] = {}
        per_gb = cpu.per_gb(rows, size)
        for name, runs in rows.items():
            speeds = [r["mb_per_s"] for r in runs]
            seconds = sum(r["seconds"] for r in runs)
            summary[name] = {
                "mb_per_s": median(speeds),
                "min_mb_per_s": min(speeds),
                "max_mb_per_s": max(speeds),
                "client_busy": sum(r["client_cpu_s"] for r in runs) / seconds,
                "upstream_busy": sum(r["upstream_cpu_s"] for r in runs) / seconds,
                "gateway_busy": sum(r["gateway_cpu_s"] for r in runs) / seconds,
            }
        if s.floors:
            bench.results.setdefault("floors", {}).update(
                {"2": bench.split_floors(summary), "7": bench.split_floors(per_gb)}
            )
        bench.results["2"] = {
            "what": f"{s.stream_mb} MB speech response, chunked in 64 KiB chunks, read to EOF",
            "bytes": size,
            "rounds": s.repeat,
            "summary": summary,
            "runs": rows,
        }
        bench.results["7"] = cpu.result(per_gb)

    def rows(self, results: dict[str, Any], names: list[str], targets: Targets) -> list[Row]:
        rows: list[Row] = []
        summary = results["2"]["summary"]
        row = Row(
            "2",
            f"{results['2']['bytes'] // MB} MB stream: MB/s median (slowest)",
            {n: f"{e['mb_per_s']:.0f} ({e['min_mb_per_s']:.0f})" for n, e in summary.items()},
            f">= {STREAM_VS_TWISTED:g}x twisted's; >= {STREAM_VS_RELAY:g}x relay",
        )
        if AISTACK in summary:
            ours = summary[AISTACK]["mb_per_s"]
            verdicts = []
            if TWISTED in summary:
                theirs = summary[TWISTED]["mb_per_s"]
                nginx = summary.get(NGINX, {}).get("mb_per_s")
                of_nginx = f"; {ours / nginx:.0%} of nginx" if nginx else ""
                ok = targets.check(
                    "2",
                    f"MB/s >= {STREAM_VS_TWISTED:g}x twisted.web.proxy's",
                    f"{ours:.0f} vs {theirs:.0f} MB/s ({ours / theirs:.2f}x{of_nginx})",
                    ours >= STREAM_VS_TWISTED * theirs,
                )
                verdicts.append(f"{ok} (twisted)")
            relay = results.get("floors", {}).get("2", {}).get(RELAY_FLOOR)
            if relay is not None:
                floor = relay["mb_per_s"]
                ok = targets.check(
                    "2",
                    f"MB/s >= {STREAM_VS_RELAY:g}x the {RELAY_FLOOR} floor's",
                    f"{ours:.0f} vs {floor:.0f} MB/s ({ours / floor:.2f}x)",
                    ours >= STREAM_VS_RELAY * floor,
                )
                verdicts.append(f"{ok} (relay)")
            row.verdict = ", ".join(verdicts)
        rows.append(row)
        rows.append(
            Row(
                "2",
                "  CPU busy: client / upstream / gateway",
                {
                    n: f"{e['client_busy']:.0%} / {e['upstream_busy']:.0%} / "
                    + (f"{e['gateway_busy']:.0%}" if n != DIRECT else "-")
                    for n, e in summary.items()
                },
            )
        )
        return rows

    def floor_lines(self, results: dict[str, Any], floors: dict[str, Any]) -> list[str]:
        lines: list[str] = []
        if "2" in floors and "2" in results:
            floor, main = floors["2"], results["2"]["summary"]
            cells = [f"{n} {e['mb_per_s']:.0f}" for n, e in floor.items()]
            cells += [f"{n} {main[n]['mb_per_s']:.0f}" for n in (AISTACK, NGINX) if n in main]
            lines.append(f"  2  MB/s: {', '.join(cells)}")
        return lines


SCENARIO = Throughput()
