"""Scenario 6: aistack-tts with ``--slots 1`` and one stalled request holding the slot.

200 speech requests sent at once on 200 open connections: the 503 latency (send to whole
response) p50/p99, and afterwards the slot intact (every burst 200 x 503; the holder's response
complete; a follow-up request succeeds; while a new holder streams, a second request still gets
503). Target: p99 <= 1.2x a bare twisted.web server answering a fixed 503 (a floor). Other
contenders have no slot: n/a.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from bench.clients import (
    burst,
    drain,
    new_id,
    open_stream,
    post,
    read_head,
    response_complete,
    speech,
    status_of,
    transfer,
)
from bench.common import MiB, log, median, p99
from bench.contenders import AISTACK, WEB_FLOOR, start_aistack, start_floor
from bench.goals import BUSY_VS_BARE_WEB
from bench.harness import Bench
from bench.table import Row, Targets, pair


def one_at_a_time(port: int, count: int) -> list[float]:
    """``count`` speech requests, each alone on its connection: 503 latencies (ms)."""
    request = post(speech(1 * MiB))
    latencies = []
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            started = time.perf_counter()
            sock.sendall(request)
            data = bytearray()
            while not response_complete(data):
                more = sock.recv(65536)
                if not more:
                    break
                data += more
            latencies.append((time.perf_counter() - started) * 1e3)
            if not data.startswith(b"HTTP/1.1 503"):
                raise RuntimeError(f"expected a 503 while the slot is held: {bytes(data[:200])!r}")
    return latencies


def retry_until_ok(port: int, buffer: memoryview) -> dict[str, Any]:
    """After the holder is done: a new request succeeds (allowing 1 s for the release)."""
    deadline = time.monotonic() + 1.0
    attempts = 0
    while True:
        attempts += 1
        result = transfer(port, speech(1 * MiB), buffer)
        if result.status == 200 or time.monotonic() > deadline:
            return {
                "follow_up_status": result.status,
                "follow_up_complete": result.complete,
                "follow_up_attempts": attempts,
            }
        time.sleep(0.01)


def capacity_still_one(port: int, buffer: memoryview) -> dict[str, Any]:
    """While a new holder streams, a second request gets 503; after it, a request succeeds."""
    holder, _ = open_stream(port, speech(8 * MiB, id=new_id("cap")))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(post(speech(1 * MiB)))
            head, _ = read_head(sock)
        second = status_of(head)
    finally:
        holder.close()
    after = retry_until_ok(port, buffer)
    return {"second_status": second, "after_release_status": after["follow_up_status"]}


# Targets, table, chart


def floor_bursts(bench: Bench) -> None:
    """Scenario 6's burst against a bare twisted.web answering a fixed 503."""
    s = bench.s
    floor = start_floor(WEB_FLOOR, bench.upstream, bench.workdir)
    try:
        bursts = []
        for turn in range(s.repeat):
            log(f"6: {s.burst} requests against {WEB_FLOOR}, round {turn + 1}/{s.repeat}")
            bursts.append(burst(floor.port, s.burst))
    finally:
        floor.stop()
    latencies = [x for b in bursts for x in b["latencies_ms"]]
    bench.results.setdefault("floors", {})["6"] = {
        WEB_FLOOR: {
            "p50_ms": median(latencies),
            "p99_ms": p99(latencies),
            "all_503": all(b["status"].get("503", 0) == s.burst for b in bursts),
            "slow_connects": sum(b["slow_connects"] for b in bursts),
        }
    }


class Busy:
    """The 503 while the one slot is held, and the slot afterwards."""

    number = "6"
    measured_by = "6"
    fresh_gateways = True

    def measure(self, bench: Bench) -> None:
        s = bench.s
        if AISTACK not in bench.names:
            return
        gateway = start_aistack(bench.upstream, bench.workdir, slots=1)
        bursts: list[dict[str, Any]] = []
        sequential: list[float] = []
        checks: list[dict[str, Any]] = []
        try:
            port = gateway.port
            for _ in range(3):
                transfer(port, speech(4 * MiB), bench.buffer)  # warm up
            for turn in range(s.repeat):
                log(f"6: {s.burst} requests against a held slot, round {turn + 1}/{s.repeat}")
                holder, _ = open_stream(port, speech(8 * MiB, id=new_id("hold")))
                try:
                    bursts.append(burst(port, s.burst))
                    sequential += one_at_a_time(port, s.sequential_503)
                    size, complete = drain(holder)
                finally:
                    holder.close()
                follow_up = retry_until_ok(port, bench.buffer)
                checks.append(
                    {"holder_complete": complete, "holder_bytes": size + 64 * 1024, **follow_up}
                )
            capacity = capacity_still_one(port, bench.buffer)
        finally:
            gateway.stop()
        if s.floors:
            floor_bursts(bench)
        latencies = [x for b in bursts for x in b["latencies_ms"]]
        counts_ok = all(b["status"].get("503", 0) == s.burst for b in bursts)
        intact = (
            counts_ok
            and all(c["holder_complete"] and c["follow_up_status"] == 200 for c in checks)
            and capacity["second_status"] == 503
            and capacity["after_release_status"] == 200
        )
        bench.results["6"] = {
            "what": f"aistack-tts --slots 1, one stalled request holding the slot; {s.burst} "
            "speech requests sent at once on open connections; latency from each send to its "
            "whole 503 response",
            "burst": s.burst,
            "rounds": s.repeat,
            "summary": {
                AISTACK: {
                    "p50_ms": median(latencies),
                    "p99_ms": p99(latencies),
                    "max_ms": max(latencies),
                    "sequential_p50_ms": median(sequential),
                    "sequential_p99_ms": p99(sequential),
                    "burst_span_ms": median([b["span_ms"] for b in bursts]),
                    "slow_connects": sum(b["slow_connects"] for b in bursts),
                    "all_503": counts_ok,
                    "slot_intact": intact,
                }
            },
            "bursts": [{k: v for k, v in b.items() if k != "latencies_ms"} for b in bursts],
            "latencies_ms": [round(x, 4) for x in latencies],
            "sequential_ms": [round(x, 4) for x in sequential],
            "after_each_burst": checks,
            "capacity_check": capacity,
        }

    def rows(self, results: dict[str, Any], names: list[str], targets: Targets) -> list[Row]:
        rows: list[Row] = []
        na = {n: "n/a" for n in names if n != AISTACK}
        e = results["6"]["summary"][AISTACK]
        count = results["6"]["burst"]
        row = Row(
            "6",
            f"slot held, {count} at once: 503 p50 / p99 (ms)",
            na | {AISTACK: pair(e["p50_ms"], e["p99_ms"], 2)},
            f"p99 <= {BUSY_VS_BARE_WEB:g}x bare twisted.web's",
        )
        # The goal is relative to the bare twisted.web floor, measured unless --no-floors.
        floor = results.get("floors", {}).get("6", {}).get(WEB_FLOOR)
        if floor is not None:
            goal = BUSY_VS_BARE_WEB * floor["p99_ms"]
            row.verdict = targets.check(
                "6",
                f"503 while the slot is held ({count} at once): p99 <= {BUSY_VS_BARE_WEB:g}x "
                f"{WEB_FLOOR}'s fixed 503",
                f"{e['p99_ms']:.2f} ms vs {floor['p99_ms']:.2f} ms x {BUSY_VS_BARE_WEB:g} = "
                f"{goal:.2f} ms",
                e["p99_ms"] <= goal,
            )
        rows.append(row)
        rows.append(
            Row(
                "6",
                f"  connects > 0.5 s (SYN retried), of {count * results['6']['rounds']}",
                na | {AISTACK: str(e["slow_connects"])},
            )
        )
        rows.append(
            Row(
                "6",
                "  one at a time: 503 p50 / p99 (ms)",
                na | {AISTACK: pair(e["sequential_p50_ms"], e["sequential_p99_ms"], 2)},
            )
        )
        rows.append(
            Row(
                "6",
                "  slot intact afterwards",
                na | {AISTACK: "yes" if e["slot_intact"] else "NO"},
                "all 503; then 200; cap. 1",
                targets.check(
                    "6",
                    "slot intact (each burst all 503, holder complete, follow-up 200, "
                    "capacity still 1)",
                    "yes" if e["slot_intact"] else "no",
                    bool(e["slot_intact"]),
                ),
            )
        )
        return rows

    def floor_lines(self, results: dict[str, Any], floors: dict[str, Any]) -> list[str]:
        lines: list[str] = []
        if "6" in floors:
            floor = floors["6"][WEB_FLOOR]
            main = results.get("6", {}).get("summary", {}).get(AISTACK)
            ours = f"; aistack-tts {main['p50_ms']:.1f} / {main['p99_ms']:.1f} ms" if main else ""
            lines.append(
                f"  6  {WEB_FLOOR} answering a fixed 503 to the same bursts: p50 / p99 "
                f"{floor['p50_ms']:.1f} / {floor['p99_ms']:.1f} ms{ours} (target p99 "
                f"{floor['p99_ms'] * BUSY_VS_BARE_WEB:.1f} ms)"
            )
        return lines


SCENARIO = Busy()
