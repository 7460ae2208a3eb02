"""The gateway (``aistack_tts``) and the demo upstream beside it (``aistack_tts_demo``).

The demo uses only the gateway's public API, the gateway never imports the demo, ``--demo``
gets its upstream from the ``twist`` plugin, and the gateway runs without the ``demo`` extra's
packages (autobahn, soundfile, numpy), which the child processes here cannot import.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
import tomllib
import urllib.request
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.testing import MemoryReactor

import aistack_tts
from aistack_tts import ConfigError, GatewayConfig
from aistack_tts._service import DemoGatewayService, make_gateway_service
from testbed.processes import UpstreamProcess, aistack_command, listening_ports, stop_process
from twisted.plugins import aistack_tts_plugin

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "src" / "aistack_tts"
DEMO = ROOT / "src" / "aistack_tts_demo"
BIN = Path(sys.executable).parent
#: What only the demo needs (the ``demo`` extra), top-level module names.
DEMO_ONLY = ("autobahn", "soundfile", "numpy")


def imported_modules(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(module, names) for each import statement in ``path``; relative ones are skipped."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.extend((alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, tuple(alias.name for alias in node.names)))
    return found


def test_the_gateway_never_imports_the_demo() -> None:
    """No module of the gateway imports the demo, nor names it in a string to import later."""
    modules = sorted(GATEWAY.rglob("*.py"))
    assert modules
    for path in modules:
        for module, _ in imported_modules(path):
            assert not module.startswith("aistack_tts_demo"), (path.name, module)
        assert "aistack_tts_demo" not in path.read_text(), path.name


def third_party_imports(package: Path) -> set[str]:
    """The top-level names of what ``package`` imports that neither the stdlib nor we provide."""
    modules = [module for path in package.rglob("*.py") for module, _ in imported_modules(path)]
    names = {module.split(".")[0] for module in modules}
    return {n for n in names if n not in sys.stdlib_module_names and not n.startswith("aistack")}


def declared(*groups: str) -> set[str]:
    """The distributions ``pyproject.toml`` declares: its dependencies and the named extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for group in groups:
        requirements += project["optional-dependencies"][group]
    return {
        req.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
        for req in requirements
    }


@pytest.mark.parametrize(("package", "extras"), [(GATEWAY, ()), (DEMO, ("demo",))])
def test_what_is_imported_is_declared(package: Path, extras: tuple[str, ...]) -> None:
    """Each third-party package imported is a declared dependency, not one a dependency brings.

    The gateway imports werkzeug and zope.interface itself, so it declares them, rather than
    counting on klein and twisted to bring them.
    """
    distributions = packages_distributions()
    wanted = declared(*extras)
    for name in sorted(third_party_imports(package)):
        provided_by = {d.lower().replace("_", "-") for d in distributions.get(name, [name])}
        assert provided_by & {w.replace("_", "-") for w in wanted}, (package.name, name)


@pytest.mark.parametrize("package", [GATEWAY, DEMO])
def test_the_demo_only_needed_packages_stay_in_the_demo(package: Path) -> None:
    """autobahn, soundfile and numpy are imported by the demo only (it has some of each)."""
    modules = [module for path in package.rglob("*.py") for module, _ in imported_modules(path)]
    imported = {module.split(".")[0] for module in modules}
    if package == GATEWAY:
        assert not imported & set(DEMO_ONLY)
    else:
        assert set(DEMO_ONLY) <= imported


def test_the_demo_uses_only_the_gateways_public_api() -> None:
    """Every import of the gateway in the demo is ``from aistack_tts import`` names in __all__."""
    used: set[str] = set()
    for path in sorted(DEMO.rglob("*.py")):
        for module, names in imported_modules(path):
            if module.split(".")[0] != "aistack_tts":
                continue
            assert module == "aistack_tts", (path.name, module)
            assert set(names) <= set(aistack_tts.__all__), (path.name, names)
            used.update(names)
    assert {"ConfigError", "add_listeners", "or_fail", "parse_endpoints"} <= used


def test_demo_without_a_loader_is_a_config_error() -> None:
    """A caller that hands the gateway no demo gets one line for --demo, not a demo import."""
    config = GatewayConfig(demo=True, listen=("tcp:0:interface=127.0.0.1",))
    with pytest.raises(ConfigError, match="no demo upstream was given"):
        make_gateway_service(config, MemoryReactor())


class PortsReactor(MemoryReactor):
    """A ``MemoryReactor`` that gives ``listenTCP(0, ...)`` a port number, as a real one does."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        port = port or 40000 + len(self.tcpServers)
        return super().listenTCP(port, factory, backlog, interface)  # type: ignore[no-untyped-call]


def test_demo_gateway_listens_with_the_site_it_was_handed() -> None:
    """``--demo`` listens on loopback with the injected factory's site, the gateway in front."""
    reactor = PortsReactor()
    made: list[Any] = []

    def site(on: Any) -> Any:
        made.append(on)
        return aistack_tts_plugin.load_demo()(on)

    config = GatewayConfig(demo=True, listen=("tcp:0:interface=127.0.0.1",))
    service = make_gateway_service(config, reactor, demo=lambda: site)
    assert isinstance(service, DemoGatewayService)
    assert made == []
    service.startService()
    try:
        assert made == [reactor]
        demo_port, gateway_port = reactor.tcpServers
        assert demo_port[3] == "127.0.0.1"
        assert IProtocolFactory.providedBy(demo_port[1])
        assert type(demo_port[1]).__module__.startswith("aistack_tts_demo")
        assert gateway_port[1] is not demo_port[1]
    finally:
        service.stopService()


def test_the_plugin_loads_the_demo_or_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``load_demo`` gives the demo's site factory; without the demo, a ConfigError naming the
    extra (``or_fail`` turns it into one line)."""
    factory = aistack_tts_plugin.load_demo()
    assert IProtocolFactory.providedBy(factory(MemoryReactor()))
    monkeypatch.setitem(sys.modules, "aistack_tts_demo", None)
    with pytest.raises(ConfigError, match=r"the demo extra, e\.g\. pip install -e '\.\[demo\]'"):
        aistack_tts_plugin.load_demo()


_BUILD_PLUGIN_CACHE = (
    "from twisted import plugins; from twisted.plugin import IPlugin, getPlugins; "
    "list(getPlugins(IPlugin, plugins))"
)


def without_the_demo_extra(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import autobahn, soundfile or numpy.

    autobahn installs a twist plugin of its own (``twisted/plugins/autobahn_endpoints.py``),
    which a real install without the extra does not have. Twisted imports every plugin file
    only to rebuild a stale plugin cache (a fresh venv has none), so the cache is built first,
    with autobahn importable, and ``twist`` then reads it instead of importing that file.
    """
    subprocess.run(
        [str(BIN / "python"), "-c", _BUILD_PLUGIN_CACHE], check=True, capture_output=True
    )
    blocked = tmp_path / "blocked"
    for name in DEMO_ONLY:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError({f'No module named {name!r}'!r}, name={name!r})\n"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISTACK_TTS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(blocked), env.get("PYTHONPATH", "")]).rstrip(":")
    return env


def test_demo_without_its_extra_fails_at_start_with_one_line(tmp_path: Path) -> None:
    """`twist aistack-tts --demo` without the demo's packages: one line, exit 64."""
    result = subprocess.run(
        [str(BIN / "twist"), "aistack-tts", "--demo", "--listen", "tcp:0:interface=127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=without_the_demo_extra(tmp_path),
        check=False,
    )
    assert result.returncode == 64, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("aistack-tts: error: --demo needs the demo upstream")
    assert "No module named" in result.stderr
    assert "the demo extra, e.g. pip install -e '.[demo]'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.real_sockets
def test_the_gateway_runs_without_the_demo_extra(upstream: UpstreamProcess, tmp_path: Path) -> None:
    """`twist aistack-tts` without autobahn, soundfile and numpy starts and proxies a call."""
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            aistack_command(upstream.url),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=without_the_demo_extra(tmp_path),
        )
    try:
        deadline = time.monotonic() + 30
        while not (ports := listening_ports(process.pid)):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the gateway did not listen"
            time.sleep(0.02)
        url = f"http://127.0.0.1:{min(ports)}/v1/audio/echo"
        request = urllib.request.Request(url, data=b"hello", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            echoed = json.loads(response.read())
        assert (echoed["method"], echoed["body"]) == ("POST", "hello")
        assert process.poll() is None
    finally:
        stop_process(process)
    assert "No module named" not in log.read_text()
