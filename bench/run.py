"""aistack-tts next to direct, twisted.web.proxy and nginx: seven scenarios in one run.

    python -m bench.run [--repeat 5] [--scenarios 1,2,...] [--quick]

Starts, on 127.0.0.1, one upstream (``bench/fast_upstream.py``: plain asyncio, so that the
upstream is not the bottleneck) and four contenders in front of it, each its own process:

- ``direct``: no proxy, the client talks to the upstream;
- ``aistack-tts``: ``twist aistack-tts --upstream URL --listen tcp:0:interface=127.0.0.1
  --slots 16`` (16 so that no scenario but 6 ever meets a 503; scenario 6 starts its own with
  ``--slots 1``);
- ``twisted.web.proxy``: ``testbed/web_proxy.py`` (``ReverseProxyResource``);
- ``nginx``: ``proxy_pass`` to an ``upstream`` block with ``keepalive``, HTTP/1.1 to the
  upstream, ``proxy_buffering off``, ``proxy_request_buffering off``, ``proxy_buffer_size
  64k``, one worker, from a config written into a temporary directory and run with ``nginx -p
  DIR -c CONF -g 'daemon off;'`` (skipped, with a note, where there is no nginx).

Scenarios (the load generator always runs in this process or in ``wrk``, never in a gateway):

1. ``GET /v1/audio/voices`` with ``wrk --latency`` (1 connection, then 16): latency p50/p99
   and the latency each contender adds over direct, paired per round. Targets (issue 15,
   ``bench/goals.py``): aistack-tts adds at most 0.45x what twisted.web.proxy adds (p50), at
   most 0.5x its gateway CPU per request.
2. A 200 MB speech response read as fast as possible (``recv_into`` a reused 1 MiB buffer, no
   HTTP library), MB/s. Targets: aistack-tts >= 1.1x twisted.web.proxy and >= 0.9x the
   byte-relay floor; its ratio to nginx is reported.
3. The upstream sends its first audio byte after 100 ms: time from the request to the first
   body byte, and what each contender adds over direct (p50). Target: <= 0.5x
   twisted.web.proxy's. Measured with the status line coming with the first chunk, and with
   the status line sent at once.
4. A client stops reading during a 500 MiB response: the gateway's RSS growth (VmRSS; nginx:
   its workers summed), a fresh gateway per trial, as ``bench/stall_and_disconnect.py``
   measures it. Target: <= 1 MiB.
5. A client closes mid-stream (128 MiB response), 50 trials: time until the upstream sees its
   connection closed (the upstream prints ``time.monotonic()``). Target: p99 <= 2 ms.
6. aistack-tts with ``--slots 1`` and one stalled request holding the slot: 200 speech
   requests sent at once on 200 open connections, the 503 latency (send to whole response)
   p50/p99, and afterwards the slot intact (every burst 200 x 503; the holder's response
   complete; a follow-up request succeeds; while a new holder streams, a second request
   still gets 503). Target: p99 <= 1.2x a bare twisted.web server answering a fixed 503
   to the same bursts (a floor). Other contenders have no slot: n/a.
7. Gateway CPU seconds (utime + stime from ``/proc/<pid>/stat``; nginx: master and workers)
   per GB streamed, over scenario 2's transfers. Reported, no target.

Contenders run round-robin within each repetition (and the order rotates per round), so
drift on a shared machine hits them alike. Writes ``bench/results/<date>.json`` and, when
matplotlib imports, ``bench/results/<date>.png`` (``--quick``: ``<date>-quick.*``).

This module is the command (arguments, rounds, orchestration), run from the repository's root.
The pieces: ``bench/contenders.py`` (the processes, through ``testbed.processes``),
``bench/clients.py`` (wrk, raw sockets), ``bench/scenarios/`` (one module per scenario, its
measurement and its rows), ``bench/report.py`` (table, targets, JSON) and ``bench/chart.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.chart import chart
from bench.contenders import BENCH, CONTENDERS, GATEWAY_SLOTS, NGINX, nginx_binary
from bench.harness import Bench, Settings
from bench.report import build, loadavg, render, render_floors, versions
from bench.scenarios import SCENARIOS
from bench.stall_and_disconnect import machine


def measure(bench: Bench, wanted: set[str]) -> None:
    """Run the wanted scenarios: on the shared contenders first, then those that start their own."""
    runs = {scenario.measured_by for scenario in SCENARIOS if scenario.number in wanted}
    for fresh in (False, True):
        if fresh:
            bench.stop_contenders()
        for scenario in SCENARIOS:
            if scenario.fresh_gateways == fresh and scenario.number in runs:
                scenario.measure(bench)
    # Scenario 2's transfers give 2 and 7 together: keep what was asked for.
    for number in ("2", "7"):
        if number not in wanted and "2" in runs:
            bench.results.pop(number)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="e.g. 1,2 (7 runs with 2)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke run")
    parser.add_argument("--repeat", type=int, default=None, help="rounds (default 5; quick 1)")
    parser.add_argument("--wrk-seconds", type=float, default=None, help="default 2 (quick 1)")
    parser.add_argument("--stream-mb", type=int, default=None, help="scenario 2 (default 200)")
    parser.add_argument("--ttfb-trials", type=int, default=None, help="scenario 3 (default 40)")
    parser.add_argument("--stall-mib", type=int, default=None, help="scenario 4 (default 500)")
    parser.add_argument("--stall-cap", type=float, default=20.0, help="longest stall watch (s)")
    parser.add_argument("--close-trials", type=int, default=None, help="scenario 5 (default 50)")
    parser.add_argument("--close-mib", type=int, default=128, help="scenario 5 response size")
    parser.add_argument("--burst", type=int, default=None, help="scenario 6 (default 200)")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--nginx-buffer", default="64k", help="nginx proxy_buffer_size")
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument(
        "--no-floors", action="store_true", help="leave out bench/floors.py's Twisted floors"
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    args = parser.parse_args(argv)

    quick = args.quick

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    wanted = {part.strip() for part in args.scenarios.split(",") if part.strip()}
    unknown = wanted - {str(n) for n in range(1, 8)}
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from 1-7")
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"
    settings = Settings(
        repeat=pick(args.repeat, 5, 1),
        wrk_seconds=pick(args.wrk_seconds, 2.0, 1.0),
        stream_mb=pick(args.stream_mb, 200, 50),
        ttfb_trials=pick(args.ttfb_trials, 40, 5),
        stall_mib=pick(args.stall_mib, 500, 100),
        stall_cap=args.stall_cap,
        close_trials=pick(args.close_trials, 50, 5),
        close_mib=args.close_mib,
        burst=pick(args.burst, 200, 200),
        sequential_503=50 if not quick else 10,
        nginx_workers=args.nginx_workers,
        nginx_buffer=args.nginx_buffer,
        loadgen=loadgen,
        floors=not args.no_floors,
    )
    notes: list[str] = []
    names = list(CONTENDERS)
    if args.no_nginx:
        names.remove(NGINX)
        notes.append("nginx left out (--no-nginx)")
    elif nginx_binary() is None:
        names.remove(NGINX)
        notes.append("nginx is not installed here: its column is skipped (apt-get install nginx)")
    if loadgen == "python":
        why = "--loadgen python" if args.loadgen == "python" else "wrk is not installed"
        notes.append(f"{why}: scenario 1 used the harness's own load generator, not wrk")
    notes.append(
        f"aistack-tts runs with --slots {GATEWAY_SLOTS} in scenarios 1-5 and 7 (also for one "
        "connection), so no request meets a 503; scenario 6 starts one with --slots 1"
    )
    notes.append(
        "logging as deployed: aistack-tts writes twist's default one JSON line per request "
        "(stdout is a file, as in the Dockerfile), twisted.web.proxy one text line, nginx its "
        f"access log; nginx: {settings.nginx_workers} worker, proxy_buffer_size "
        f"{settings.nginx_buffer}"
    )

    today = datetime.date.today().isoformat()
    stem = f"{today}-quick" if quick else today
    report: dict[str, Any] = {
        "date": today,
        "machine": machine() | versions(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings": vars(settings),
        "scenarios": sorted(wanted),
        "contenders": names,
        "notes": notes,
        "loadavg_start": loadavg(),
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aistack-bench-") as tmp:
        bench = Bench(settings, Path(tmp), names)
        try:
            measure(bench, wanted)
        finally:
            bench.stop()
    report["loadavg_end"] = loadavg()
    report["duration_s"] = round(time.monotonic() - started, 1)
    report["results"] = bench.results
    rows, targets = build(bench.results, names)
    report["targets"] = [vars(t) for t in targets]
    table = render(rows, names)
    m = report["machine"]
    heading = [
        f"aistack-tts benchmarks, {today}{' (--quick)' if quick else ''}",
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['kernel']}, Python {m['python']}, "
        f"Twisted {m['twisted']}, nginx {m['nginx'] or 'absent'}, {m['wrk'] or 'no wrk'}",
        f"command: {report['command']}",
        f"took {report['duration_s']:.0f} s; load average {report['loadavg_start']} at the "
        f"start, {report['loadavg_end']} at the end",
    ]
    text = "\n".join([*heading, *(f"note: {n}" for n in notes), "", table])
    if targets:
        passed = sum(t.passed for t in targets)
        text += f"\n\naistack-tts meets {passed} of {len(targets)} targets"
        missed = [t for t in targets if not t.passed]
        for t in missed:
            text += f"\n  missed: scenario {t.scenario}, {t.target}: {t.value}"
    if floors := render_floors(bench.results):
        text += f"\n\n{floors}"
    report["table"] = text
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{stem}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    print(chart(report, args.results / f"{stem}.png"))


if __name__ == "__main__":
    main()
