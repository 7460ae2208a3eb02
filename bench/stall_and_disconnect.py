"""Stalled clients and disconnects: aistack-tts next to twisted.web.proxy.ReverseProxyResource.

    python -m bench.stall_and_disconnect [--trials 50] [--stall-mib 500] [--cap 20]

Both gateways run as real processes on 127.0.0.1 in front of ``testbed/upstream_server.py``
(also a real process), and are measured the same way:

1. RSS growth while a client stalls: a raw socket asks for a 500 MiB response, reads the
   headers and 64 KiB, then stops reading. The gateway's VmRSS is sampled every 50 ms until
   the upstream reports it has been paused (backpressure reached it) plus 2 s, or it has
   sent the whole response plus 1 s, or ``--cap`` seconds (20) have passed.
   Goal for aistack-tts: growth <= 1 MiB.
2. Disconnect to upstream close: a client reads the headers and 64 KiB of a 128 MiB stream,
   then closes. The upstream prints the ``time.monotonic()`` at which it saw its connection
   lost (CLOCK_MONOTONIC is system-wide on Linux, so it compares with this process's clock
   read just before ``close()``). ``--trials`` (50) per gateway: p50/p99/max.
   Goal for aistack-tts: p99 <= 2 ms. A gateway that never closes the upstream lets it run
   the response to the end; that time is reported instead.

Prints a table and writes ``bench/results/stall_and_disconnect-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import twisted
from bench.goals import CLOSE_P99_GOAL_MS as P99_GOAL_MS
from bench.goals import RSS_GOAL_MIB
from testbed.clients import fetch, open_stream
from testbed.processes import KINDS, ROOT, GatewayProcess, UpstreamProcess

MiB = 1024 * 1024


def new_id(prefix: str, n: int) -> str:
    return f"{prefix}-{os.getpid()}-{n}-{time.monotonic_ns() % 10**9}"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "twisted": twisted.__version__,
    }


def stall(
    kind: str, upstream: UpstreamProcess, workdir: Path, size: int, cap: float
) -> dict[str, Any]:
    """RSS growth of a ``kind`` gateway while its only client stops reading ``size`` bytes."""
    gateway = GatewayProcess.start(kind, upstream.port, workdir)
    try:
        fetch(gateway.port, "/v1/audio/stream?bytes=4000000")  # warm up
        baseline = peak = gateway.rss()
        ident = new_id("stall", 0)
        started = time.monotonic()
        sock = open_stream(gateway.port, f"/v1/audio/stream?bytes={size}&id={ident}")
        try:
            settled_at: float | None = None
            outcome = f"cap of {cap:g} s reached"
            while True:
                now = time.monotonic()
                peak = max(peak, gateway.rss())
                if settled_at is None:
                    if upstream.first(ident, {"DONE"}) is not None:
                        settled_at, outcome = (
                            now + 1.0,
                            "upstream sent it all (gateway buffered it)",
                        )
                    elif upstream.first(ident, {"STALLED"}) is not None:
                        settled_at, outcome = now + 2.0, "upstream paused (backpressure)"
                if (settled_at is not None and now >= settled_at) or now - started >= cap:
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            sent = [e.sent for e in upstream.events(ident) if e.kind in ("STALLED", "DONE")]
        finally:
            sock.close()
    finally:
        gateway.stop()
    return {
        "gateway": kind,
        "response_bytes": size,
        "baseline_rss": baseline,
        "peak_rss": peak,
        "growth": peak - baseline,
        "upstream_sent": max(sent) if sent else None,
        "outcome": outcome,
        "observed_s": round(elapsed, 3),
    }


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (with 50 samples, p99 is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def disconnects(
    kind: str, upstream: UpstreamProcess, workdir: Path, trials: int, size: int, wait: float
) -> dict[str, Any]:
    """Time from a client's close() to the upstream seeing its connection lost, ``trials`` times."""
    gateway = GatewayProcess.start(kind, upstream.port, workdir)
    closed_ms: list[float] = []
    ran_to_end_s: list[float] = []
    missing = 0
    try:
        fetch(gateway.port, "/v1/audio/stream?bytes=4000000")  # warm up
        for n in range(trials):
            ident = new_id("close", n)
            sock = open_stream(gateway.port, f"/v1/audio/stream?bytes={size}&id={ident}")
            upstream.wait(ident, {"HEADERS"}, 10)
            closed_at = time.monotonic()
            sock.close()
            try:
                event = upstream.wait(ident, {"CLOSED", "DONE"}, wait)
            except TimeoutError:
                missing += 1
                continue
            if event.kind == "CLOSED":
                closed_ms.append((event.t - closed_at) * 1000)
            else:
                ran_to_end_s.append(event.t - closed_at)
    finally:
        gateway.stop()
    result: dict[str, Any] = {
        "gateway": kind,
        "trials": trials,
        "response_bytes": size,
        "closed": len(closed_ms),
        "ran_to_end": len(ran_to_end_s),
        "no_event_within_s": wait if missing else None,
        "no_event": missing,
        "close_ms": [round(v, 3) for v in closed_ms],
    }
    if closed_ms:
        result.update(
            p50_ms=round(statistics.median(closed_ms), 3),
            p99_ms=round(percentile(closed_ms, 0.99), 3),
            max_ms=round(max(closed_ms), 3),
        )
    if ran_to_end_s:
        result["ran_to_end_p50_s"] = round(statistics.median(ran_to_end_s), 3)
    return result


def table(report: dict[str, Any]) -> str:
    lines = [
        f"aistack-tts: stalled client and disconnect benchmark, {report['date']}",
        "machine: {nproc} CPUs ({cpu}), {kernel}, Python {python}, Twisted {twisted}".format(
            **report["machine"]
        ),
        f"command: {report['command']}",
        "",
        f"RSS growth while a client stalls on a {report['stall_mib']} MiB response "
        f"(goal for aistack-tts: <= {RSS_GOAL_MIB} MiB)",
        f"{'gateway':<19}{'baseline':>12}{'peak':>12}{'growth':>12}{'upstream sent':>15}  outcome",
    ]
    for r in report["stall"]:
        sent = "?" if r["upstream_sent"] is None else f"{r['upstream_sent'] / MiB:.1f} MiB"
        mib = [f"{r['baseline_rss'] / MiB:.1f} MiB", f"{r['peak_rss'] / MiB:.1f} MiB"]
        mib.append(f"{r['growth'] / MiB:+.1f} MiB")
        lines.append(
            f"{r['gateway']:<19}{mib[0]:>12}{mib[1]:>12}{mib[2]:>12}{sent:>15}  "
            f"{r['outcome']} after {r['observed_s']} s"
        )
    first = report["disconnect"][0]
    lines += [
        "",
        f"Client close() -> upstream sees its connection closed, {first['trials']} trials, "
        f"{first['response_bytes'] // MiB} MiB responses (goal for aistack-tts: p99 <= "
        f"{P99_GOAL_MS:g} ms)",
        f"{'gateway':<19}{'closed':>8}{'p50':>10}{'p99':>10}{'max':>10}  note",
    ]
    for r in report["disconnect"]:
        cells = [f"{r[k]:.2f} ms" if k in r else "-" for k in ("p50_ms", "p99_ms", "max_ms")]
        notes = []
        if r["ran_to_end"]:
            notes.append(
                f"upstream generated the whole response in {r['ran_to_end']} trials "
                f"(ending p50 {r['ran_to_end_p50_s']:.2f} s after the client left)"
            )
        if r["no_event"]:
            notes.append(f"no close within {r['no_event_within_s']:g} s in {r['no_event']} trials")
        closed = f"{r['closed']}/{r['trials']}"
        lines.append(
            f"{r['gateway']:<19}{closed:>8}{cells[0]:>10}{cells[1]:>10}{cells[2]:>10}  "
            + ("; ".join(notes) or "-")
        )
    lines.append("(p99 is nearest-rank: with 50 trials it is the largest value)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--stall-mib", type=int, default=500)
    parser.add_argument("--disconnect-mib", type=int, default=128)
    parser.add_argument("--cap", type=float, default=20.0, help="longest stall observation (s)")
    parser.add_argument("--wait", type=float, default=5.0, help="longest wait per close (s)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "stall_mib": args.stall_mib,
        "stall": [],
        "disconnect": [],
    }
    with tempfile.TemporaryDirectory(prefix="aistack-bench-") as tmp:
        workdir = Path(tmp)
        upstream = UpstreamProcess.start(workdir)
        try:
            for kind in KINDS:
                report["stall"].append(
                    stall(kind, upstream, workdir, args.stall_mib * MiB, args.cap)
                )
            for kind in KINDS:
                report["disconnect"].append(
                    disconnects(
                        kind, upstream, workdir, args.trials, args.disconnect_mib * MiB, args.wait
                    )
                )
        finally:
            upstream.stop()

    text = table(report)
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"stall_and_disconnect-{report['date']}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
