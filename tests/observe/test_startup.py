"""At start: the start-up line, then one warning for each upstream that cannot be reached."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from aistack_tts._config import GatewayConfig
from aistack_tts._service import make_gateway_service
from support.logs import LogCapture

ALIVE, DEAD, SILENT = "http://127.0.0.1:8091", "http://127.0.0.1:8092", "http://10.9.9.9:8093"


def fail(factory: Any, error: Exception) -> None:
    connector: object = None
    factory.clientConnectionFailed(connector, Failure(error))


def accept(factory: Any) -> None:
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8091))
    protocol.makeConnection(StringTransport())


def startup_events(logs: LogCapture) -> list[Any]:
    return [e for e in logs.events if e.get("log_namespace") == "aistack_tts.startup"]


def test_each_unreachable_upstream_gets_one_warning_after_the_start_up_line() -> None:
    """Once it listens, the gateway probes each upstream once: a refused one and one that
    times out get a warning naming it and the cause; the reachable one none."""
    reactor = MemoryReactorClock()
    config = GatewayConfig(upstream=(ALIVE, DEAD, SILENT), listen=("tcp:8000",))
    service = make_gateway_service(config, reactor)
    with LogCapture() as logs:
        service.startService()
        [start] = startup_events(logs)
        assert start["log_level"].name == "info"
        alive, dead, silent = (client[2] for client in reactor.tcpClients)
        assert [client[3] for client in reactor.tcpClients] == [5.0] * 3  # --connect-timeout
        accept(alive)
        fail(dead, ConnectionRefusedError("111: refused"))
        fail(silent, TimeoutError())  # what the reactor does after the connect timeout
        reactor.advance(0.3)  # HostnameEndpoint reports a failed attempt on the next turn
        service.stopService()
    warnings = startup_events(logs)[1:]
    assert [(w["log_level"].name, w["upstream"]) for w in warnings] == [
        ("warn", DEAD),
        ("warn", SILENT),
    ]
    assert warnings[0]["cause"].startswith("ConnectionRefusedError")
    assert warnings[1]["cause"].startswith("--connect-timeout: no connection within 5 s")
    assert len(reactor.tcpClients) == 3, "one probe each, no retries"


def test_the_start_is_not_held_up_by_the_probe() -> None:
    """The gateway listens and logs its start-up line before any probe has answered."""
    reactor = MemoryReactorClock()
    service = make_gateway_service(GatewayConfig(listen=("tcp:8000",)), reactor)
    with LogCapture() as logs:
        service.startService()
        assert service.running
        assert len(startup_events(logs)) == 1
        assert len(reactor.tcpServers) == 1
        service.stopService()


class PortsReactor(MemoryReactorClock):
    """``listenTCP(0, ...)`` gets a port number, as on a real reactor."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        port = port or 40000 + len(self.tcpServers)
        return super().listenTCP(port, factory, backlog, interface)  # type: ignore[no-untyped-call]


def test_the_demo_is_not_probed() -> None:
    """``--demo``'s upstream is in the process: no probe, no warning."""
    reactor = PortsReactor()
    config = GatewayConfig(demo=True, listen=("tcp:8000",))
    service = make_gateway_service(config, reactor, demo=lambda: lambda _: Site(Resource()))
    with LogCapture() as logs:
        service.startService()
        service.stopService()
    assert len(reactor.tcpServers) == 2
    assert reactor.tcpClients == []
    assert len(startup_events(logs)) == 1
