"""The upstream origin: its URL parsed once, by the configuration, for every part going there."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock

from aistack_tts._config import ConfigError, GatewayConfig, Origin
from support.harness import Harness, upstream_request
from support.tunnel import HANDSHAKE


@pytest.mark.parametrize(
    ("url", "host", "port", "host_header", "base"),
    [
        ("http://127.0.0.1:8091", "127.0.0.1", 8091, b"127.0.0.1:8091", b"http://127.0.0.1:8091"),
        ("http://127.0.0.1:8091/", "127.0.0.1", 8091, b"127.0.0.1:8091", b"http://127.0.0.1:8091"),
        ("http://GPU.example", "gpu.example", 80, b"gpu.example", b"http://GPU.example"),
        ("http://gpu.example:80", "gpu.example", 80, b"gpu.example", b"http://gpu.example:80"),
        ("https://gpu.example", "gpu.example", 443, b"gpu.example", b"https://gpu.example"),
        ("https://[::1]:8443", "::1", 8443, b"[::1]:8443", b"https://[::1]:8443"),
    ],
)
def test_an_origin_says_where_and_what_host(
    url: str, host: str, port: int, host_header: bytes, base: bytes
) -> None:
    origin = Origin.parse(url)
    assert (origin.url, origin.hostname, origin.port) == (url, host, port)
    assert (origin.host, origin.base, origin.tls) == (host_header, base, url.startswith("https"))


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:8091",
        "ftp://h",
        "http://h:0",
        "http://h/v1",
        "http://u:p@h",
        "http://h?x",
        "http://hé",
    ],
)
def test_a_bad_upstream_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        Origin.parse(url)


def test_the_config_holds_its_upstreams_parsed() -> None:
    config = GatewayConfig(upstream=["http://a:1", "https://b"])
    assert config.origins == (Origin.parse("http://a:1"), Origin.parse("https://b"))


def test_the_endpoint_goes_to_the_host_and_port_with_tls_only_for_https() -> None:
    reactor = MemoryReactorClock()
    plain = Origin.parse("http://127.0.0.1:8091").endpoint(reactor, timeout=3.0)
    assert type(plain).__name__ == "HostnameEndpoint"
    secure = Origin.parse("https://127.0.0.1:8443")
    assert type(secure.endpoint(reactor, timeout=3.0)).__name__ == "_WrapperEndpoint"
    assert type(secure.endpoint(reactor, timeout=3.0, tls=False)).__name__ == "HostnameEndpoint"


def test_a_call_and_a_tunnel_name_the_upstream_with_one_host() -> None:
    """The tunnel's Host was the URL's netloc as written (``:80`` kept); now the client's."""
    call, tunnel = Harness("http://127.0.0.1:80/"), Harness("http://127.0.0.1:80/")
    call.request(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n")
    tunnel.request(HANDSHAKE)
    hosts = [
        [value for name, value in upstream_request(h.upstream())[1] if name == b"host"]
        for h in (call, tunnel)
    ]
    assert hosts == [[b"127.0.0.1"], [b"127.0.0.1"]]
    assert tunnel.upstream().received().startswith(b"GET /v1/audio/speech/stream?")
