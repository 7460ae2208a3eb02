"""The benchmark's own pieces, so that ``bench/run.py`` measures what it says it measures.

The Twisted floors (``bench/floors.py``) answer like the upstream they stand in front of, the
wrk parser reads wrk's output, and the floors' summary names the right numbers. Real sockets:
``bench/fast_upstream.py`` and each floor run as processes on 127.0.0.1.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from bench import clients, contenders, icount, report, run
from bench.common import MiB
from bench.contenders import (
    AGENT_FLOOR,
    AISTACK,
    LEAN_FLOOR,
    RELAY_FLOOR,
    TWISTED,
    WEB_FLOOR,
    Contender,
)
from bench.harness import Bench
from bench.scenarios import SCENARIOS
from testbed.processes import UpstreamProcess

pytestmark = [pytest.mark.real_sockets]

FLOORS = (WEB_FLOOR, AGENT_FLOOR, LEAN_FLOOR, RELAY_FLOOR)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    up = contenders.start_upstream(tmp_path_factory.mktemp("upstream"))
    yield up
    up.stop()


@pytest.fixture(scope="module")
def floors(
    upstream: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Contender]]:
    workdir = tmp_path_factory.mktemp("floors")
    started: dict[str, Contender] = {}
    try:
        for name in FLOORS:
            started[name] = contenders.start_floor(name, upstream, workdir)
        yield started
    finally:
        for contender in started.values():
            contender.stop()


def get(port: int, target: str) -> bytes:
    """The whole answer to ``GET target`` with ``Connection: close``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while more := sock.recv(65536):
            data += more
    return data


def body_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("name", FLOORS)
def test_every_floor_answers_voices_like_the_upstream(
    upstream: UpstreamProcess, floors: dict[str, Contender], name: str
) -> None:
    """The same body as the upstream's own, through each floor."""
    direct = get(upstream.port, "/v1/audio/voices")
    answer = get(floors[name].port, "/v1/audio/voices")
    assert clients.status_of(answer) == 200
    assert body_of(answer) == body_of(direct)
    assert b'"vivian"' in body_of(answer)


def test_bare_floor_refuses_speech_with_a_503_envelope(floors: dict[str, Contender]) -> None:
    """What scenario 6's burst meets: a 503 gpu_busy with Retry-After, at once."""
    result = clients.burst(floors[WEB_FLOOR].port, 5)
    assert result["status"] == {"503": 5}
    assert result["gpu_busy_bodies"] == 5
    answer = get(floors[WEB_FLOOR].port, "/v1/audio/speech")
    assert b"\r\nRetry-After: 1\r\n" in answer.split(b"\r\n\r\n")[0] + b"\r\n"


@pytest.mark.parametrize("name", [AGENT_FLOOR, LEAN_FLOOR, RELAY_FLOOR])
def test_forwarding_floors_stream_a_whole_response(floors: dict[str, Contender], name: str) -> None:
    """Scenario 2's transfer through a forwarding floor ends with the last chunk, every byte."""
    size = 4 * MiB
    result = clients.transfer(
        floors[name].port, clients.speech(size), memoryview(bytearray(1 << 20))
    )
    assert result.status == 200
    assert result.complete
    assert result.body_bytes >= size


WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:8000/v1/audio/voices
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.10ms    2.00ms  30.00ms   90.00%
  Latency Distribution
     50%  512.00us
     75%    4.50ms
     90%    6.00ms
     99%    1.20s
  6170 requests in 2.00s, 1.50MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   3085.00
Transfer/sec:    750.00KB
"""


def test_parse_wrk_reads_percentiles_rates_and_errors() -> None:
    result = clients.parse_wrk(WRK_OUTPUT)
    assert result["p50"] == pytest.approx(512e-6)
    assert result["p75"] == pytest.approx(4.5e-3)
    assert result["p99"] == pytest.approx(1.2)
    assert result["rps"] == 3085.0
    assert result["requests"] == 6170
    assert result["non_2xx"] == 7
    assert result["socket_errors"] == 3


def test_parse_wrk_refuses_output_without_latencies() -> None:
    with pytest.raises(RuntimeError, match="p50"):
        clients.parse_wrk("Requests/sec: 10\n")


def test_render_floors_puts_each_floor_beside_aistack_and_the_target() -> None:
    def added(p50: float, cpu: float) -> dict[str, float]:
        return {"added_p50_us": p50, "cpu_us_per_request": cpu}

    results = {
        "1": {
            "summary": {
                "1conn": {AISTACK: added(480, 490), TWISTED: added(420, 470)},
                "16conn": {AISTACK: added(4800, 330), TWISTED: added(5400, 350)},
            }
        },
        "floors": {
            "1": {
                "1conn": {
                    WEB_FLOOR: added(55, 88),
                    AGENT_FLOOR: added(295, 276),
                    LEAN_FLOOR: added(150, 160),
                },
                "16conn": {WEB_FLOOR: added(590, 46), AGENT_FLOOR: added(2540, 169)},
            },
            "6": {WEB_FLOOR: {"p50_ms": 21.9, "p99_ms": 25.2}},
        },
    }
    text = report.render_floors(results)
    assert "1 conn, added p50: bare twisted.web 55 us (CPU 88 us)" in text
    assert (
        "twisted.web + Agent 295 us (CPU 276 us), twisted.web + lean client 150 us (CPU 160 us); "
        "aistack-tts 480 us (CPU 490 us)" in text
    )
    assert "twisted.web + lean client -; aistack-tts 4800 us" in text  # not measured at 16
    assert "(target 189 us)" in text  # 0.45x twisted.web.proxy's 420
    assert "(target 2430 us)" in text
    assert "(target p99 30.2 ms)" in text  # 1.2x the bare server's 25.2
    assert "p50 / p99 21.9 / 25.2 ms" in text
    assert report.render_floors({"1": {}}) == ""


class FakeBench:
    """Only what ``run.measure`` itself touches: the results and the contenders' stop."""

    def __init__(self, calls: list[str]) -> None:
        self.results: dict[str, Any] = {}
        self.calls = calls

    def stop_contenders(self) -> None:
        self.calls.append("stop")


def test_measure_keeps_the_order_shared_contenders_first_and_the_wanted_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1, 2 (with 7), 3, 5 on the shared contenders; then 4 and 6, which start their own."""
    calls: list[str] = []

    def fake(number: str) -> Any:
        def measure(bench: Bench) -> None:
            calls.append(number)
            bench.results[number] = {}
            if number == "2":  # scenario 2's transfers give 7 too
                bench.results["7"] = {}

        return measure

    for scenario in SCENARIOS:
        monkeypatch.setattr(scenario, "measure", fake(scenario.number))
    bench = FakeBench(calls)
    run.measure(cast(Bench, bench), {"1", "3", "4", "5", "6", "7"})
    assert calls == ["1", "2", "3", "5", "stop", "4", "6"]
    assert sorted(bench.results) == ["1", "3", "4", "5", "6", "7"]  # 2 not asked for


def test_build_lists_rows_and_targets_in_scenario_order() -> None:
    """The table reads 1 to 7 whichever order the results came in."""
    results = {
        "5": {
            "trials": 1,
            "summary": {AISTACK: {"closed": 1, "ran_to_end": 0, "p50_ms": 1.0, "p99_ms": 2.0}},
        },
        "1": {
            "summary": {
                key: {
                    AISTACK: {
                        "p50_us": 1.0,
                        "p99_us": 2.0,
                        "rps": 3.0,
                        "added_p50_us": 1.0,
                        "added_p99_us": 1.0,
                    },
                    TWISTED: {
                        "p50_us": 1.0,
                        "p99_us": 2.0,
                        "rps": 3.0,
                        "added_p50_us": 4.0,
                        "added_p99_us": 4.0,
                    },
                }
                for key in ("1conn", "16conn")
            }
        },
    }
    rows, targets = report.build(results, [AISTACK, TWISTED])
    assert [r.scenario for r in rows] == ["1"] * 8 + ["5"]
    assert [(t.scenario, t.passed) for t in targets] == [("1", True), ("1", True), ("5", True)]


def test_icount_reads_the_totals_line_of_a_callgrind_dump(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.0.1"
    dump.write_text("version: 1\nevents: Ir\nfl=x\n1 5\ntotals: 123456\n")
    assert icount.total_instructions(dump) == 123456
    dump.write_text("events: Ir\nsummary: 99\n")
    assert icount.total_instructions(dump) == 99
    dump.write_text("events: Ir\n")
    with pytest.raises(RuntimeError):
        icount.total_instructions(dump)


def test_icount_puts_twists_log_level_before_the_plugin_name() -> None:
    command = icount.command_for(icount.QUIET, 8000)
    plugin = command.index("aistack-tts")
    assert command[plugin - 1] == "--log-level=warn"
    assert command[plugin:] == icount.command_for(AISTACK, 8000)[plugin - 1 :]
    assert "--upstream-port" in icount.command_for(LEAN_FLOOR, 8000)
