"""The demo upstream embedded: its public names, its Site and listener, and the twist plugin."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel
from twisted.web.server import Site

import aistack_tts_demo
from aistack_tts_demo import VOICES, DemoUpstream, listen_demo
from aistack_tts_demo._plugin import DemoSettings, Options, make_demo_service
from support.deferreds import result_of
from support.demo import WS_HANDSHAKE

# --- embedding and the twist plugin --------------------------------------------------------


def test_public_names() -> None:
    """The package re-exports what it lists in ``__all__``; VOICES are the model's speakers."""
    for name in aistack_tts_demo.__all__:
        assert hasattr(aistack_tts_demo, name), name
    assert VOICES == (
        "Vivian",
        "Serena",
        "Uncle_Fu",
        "Dylan",
        "Eric",
        "Ryan",
        "Aiden",
        "Ono_Anna",
        "Sohee",
    )


def test_site_uses_the_given_reactor() -> None:
    """``site()`` is a twisted.web Site on the injected reactor."""
    clock = MemoryReactorClock()
    site = DemoUpstream(reactor=clock).site()
    assert isinstance(site, Site)
    assert site.reactor is clock


@pytest.mark.parametrize(
    ("first_chunk_delay", "rtf"), [(0.1, -1.0), (math.inf, 0.5), (0.1, math.nan)]
)
def test_bad_settings_fail_at_construction(first_chunk_delay: float, rtf: float) -> None:
    """Negative or non-finite delays are refused when the upstream is built."""
    with pytest.raises(ValueError, match="must be a finite number"):
        DemoUpstream(reactor=Clock(), first_chunk_delay=first_chunk_delay, rtf=rtf)


def test_listen_demo_uses_an_ephemeral_loopback_port() -> None:
    """listen_demo listens on 127.0.0.1, port 0, with the demo's Site."""
    reactor = MemoryReactorClock()
    port = result_of(listen_demo(reactor, first_chunk_delay=0, rtf=0))
    [(number, factory, _backlog, interface)] = reactor.tcpServers
    assert (number, interface) == (0, "127.0.0.1")
    assert isinstance(factory, Site)
    assert port is not None


def parse(argv: list[str], environ: dict[str, str] | None = None) -> DemoSettings:
    options = Options(environ=environ or {})
    options.parseOptions(argv)  # type: ignore[no-untyped-call]
    return options.settings


def test_plugin_defaults() -> None:
    """Port 8091 on loopback, 100 ms to the first chunk, twice real time."""
    assert parse([]) == DemoSettings(
        listen=("tcp:8091:interface=127.0.0.1",), first_chunk_delay=0.1, rtf=0.5
    )


def test_plugin_command_line_over_environment() -> None:
    """Each option also comes from AISTACK_TTS_DEMO_*; the command line wins."""
    environ = {
        "AISTACK_TTS_DEMO_LISTEN": "tcp:9000 tcp:9001",
        "AISTACK_TTS_DEMO_FIRST_CHUNK_DELAY": "0.25",
        "AISTACK_TTS_DEMO_RTF": "1",
    }
    settings = parse([], environ)
    assert settings.listen == ("tcp:9000", "tcp:9001")
    assert (settings.first_chunk_delay, settings.rtf) == (0.25, 1.0)
    settings = parse(["--listen", "tcp:1234", "--rtf", "0.1"], environ)
    assert (settings.listen, settings.rtf, settings.first_chunk_delay) == (
        ("tcp:1234",),
        0.1,
        0.25,
    )


def test_plugin_websocket_timeouts() -> None:
    """vLLM-Omni's 30 s idle and 10 s config timeouts by default; both can be set, and reach
    the sessions of the upstream the service serves."""
    assert (parse([]).ws_idle_timeout, parse([]).ws_config_timeout) == (30.0, 10.0)
    environ = {"AISTACK_TTS_DEMO_WS_IDLE_TIMEOUT": "5"}
    settings = parse(["--ws-config-timeout", "0.5"], environ)
    assert (settings.ws_idle_timeout, settings.ws_config_timeout) == (5.0, 0.5)
    reactor = MemoryReactorClock()
    service = make_demo_service(settings, reactor)
    service.startService()
    [(_port, site, _backlog, _interface)] = reactor.tcpServers
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert protocol is not None
    transport = StringTransport()
    transport.protocol = protocol  # type: ignore[attr-defined]
    protocol.makeConnection(transport)
    protocol.dataReceived(WS_HANDSHAKE)
    [timer] = reactor.getDelayedCalls()
    assert timer.getTime() == 0.5
    service.stopService()


@pytest.mark.parametrize(
    "argv",
    [
        ["--rtf", "fast"],
        ["--first-chunk-delay", "-1"],
        ["--rtf", "inf"],
        ["--ws-idle-timeout", "soon"],
    ],
)
def test_plugin_bad_values_exit_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad number ends the program (status 64) with one line, not a traceback."""
    with pytest.raises(SystemExit) as caught:
        parse(argv)
    assert caught.value.code == 64
    err = capsys.readouterr().err
    assert err.startswith("aistack-tts-demo-upstream: error: ")
    assert err.count("\n") == 1


def test_plugin_logs_the_gateways_json_lines() -> None:
    """Under twist's JSON format (the default off a terminal) the demo writes the gateway's
    JSON lines, one object a line, not Twisted's raw event JSON."""
    options = Options(environ={})
    twist_options: dict[str, Any] = {"logFormat": "json", "fileLogObserverFactory": None}
    options.parent = twist_options  # type: ignore[assignment]
    options.parseOptions([])  # type: ignore[no-untyped-call]
    out = io.StringIO()
    observer = twist_options["fileLogObserverFactory"](out)
    observer({"log_namespace": "t", "log_level": LogLevel.info, "log_format": "hi", "n": 1})
    record = json.loads(out.getvalue())
    assert (record["level"], record["namespace"], record["message"], record["n"]) == (
        "info",
        "t",
        "hi",
        1,
    )


def test_plugin_service_listens_where_told() -> None:
    """makeService's service binds every --listen endpoint when started."""
    reactor = MemoryReactorClock()
    settings = DemoSettings(listen=("tcp:18091:interface=127.0.0.1", "tcp:18092"))
    service = make_demo_service(settings, reactor)
    service.startService()
    assert [(port, interface) for port, _f, _b, interface in reactor.tcpServers] == [
        (18091, "127.0.0.1"),
        (18092, ""),
    ]
    service.stopService()


def test_plugin_is_lazy() -> None:
    """The twist plugin names the module rather than importing it."""
    from twisted.plugins import aistack_tts_demo_plugin

    maker = aistack_tts_demo_plugin.aistack_tts_demo_upstream
    assert maker.tapname == "aistack-tts-demo-upstream"
    assert maker.module == "aistack_tts_demo._plugin"
