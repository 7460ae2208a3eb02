"""Embedding: ``proxy.site(root=...)`` serves the embedder's own routes beside the gateway's.

The gateway's routes stay at their fixed paths from the site root (``/v1/audio/*``,
``/metrics``, ``/healthz``, ``/readyz``); every other path goes to the embedder's resource tree.
Mounting ``proxy.resource()`` below a site root is refused loudly (it used to half-work: the
proxied route ignored the mount point while the Klein routes honoured it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from klein import Klein
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.static import Data

from aistack_tts import ConfigError
from support.harness import Harness
from support.logs import LogCapture
from support.wire import dechunk, envelope, parse_response

GET = b"GET %s HTTP/1.1\r\nHost: gw\r\n\r\n"


class _Echo(Resource):
    """An embedder's route: answers with what it saw (args, path) and sets no Content-Type."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def render_POST(self, request: Request) -> bytes:
        args = {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()}
        prepath = [p.decode() for p in request.prepath or []]
        return json.dumps({"args": args, "prepath": prepath}).encode()

    render_GET = render_POST


def app_root() -> Resource:
    root = Resource()
    root.putChild(b"asr", _Echo())
    v1 = Resource()
    v1.putChild(b"models", Data(b'{"data": []}', "application/json"))
    root.putChild(b"v1", v1)
    return root


def embedded(root: Resource | None = None, **kwargs: object) -> Harness:
    """A harness whose site is ``proxy.site(root=...)``."""
    h = Harness(**kwargs)
    h.site = h.proxy.site(root=app_root() if root is None else root)
    return h


def test_the_embedders_routes_and_the_gateways_are_served_side_by_side() -> None:
    """One site: ``/asr`` and ``/v1/models`` are the embedder's; the gateway's paths are its."""
    h = embedded()
    status, _, body = parse_response(h.request(GET % b"/asr").received())
    assert (status, json.loads(body)["prepath"]) == (200, ["asr"])
    status, _, body = parse_response(h.request(GET % b"/v1/models").received())
    assert (status, body) == (200, b'{"data": []}')
    status, _, body = parse_response(h.request(GET % b"/metrics").received())
    assert status == 200
    assert b"aistack_tts_requests_total" in body
    status, _, body = parse_response(h.request(GET % b"/healthz").received())
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert h.connection_attempts == 0


def test_the_forwarded_target_is_byte_exact_beside_an_embedders_root() -> None:
    """The proxied route is at /v1/audio/ from the root: the target goes upstream unchanged."""
    h = embedded()
    target = b"/v1/audio/voices?name=a%2Fb&x=%7E;y"
    h.request(GET % target)
    assert h.upstream().received().startswith(b"GET %s HTTP/1.1\r\n" % target)


@pytest.mark.parametrize("target", [b"/nope", b"/v1/nope", b"/v1/%61udio/speech", b"//metrics"])
def test_other_paths_are_the_embedders_own_answer(target: bytes) -> None:
    """A path the gateway does not own gets the embedder's answer (Twisted's 404 here)."""
    h = embedded()
    status, headers, _ = parse_response(h.request(GET % target).received())
    assert status == 404
    assert headers[b"content-type"][0].startswith(b"text/html")
    assert h.connection_attempts == 0


@pytest.mark.parametrize("target", [b"/v1/audio", b"/v1/audio/", b"/readyz?x"])
def test_the_gateways_paths_keep_its_answers(target: bytes) -> None:
    """``/v1/audio`` and ``/v1/audio/`` stay the gateway's 404 envelope; ``/readyz`` is its."""
    h = embedded()
    raw = h.request(GET % target).received()
    if target.startswith(b"/readyz"):
        h.reactor.advance(0)
        assert h.connection_attempts == 1  # the readiness probe
        return
    assert parse_response(raw)[0] == 404
    assert envelope(raw)["provider"] == "aistack"


def test_a_klein_app_as_root() -> None:
    """A Klein app's resource works as the root: its routes, the gateway's beside them."""
    app = Klein()

    @app.route("/asr", methods=["POST"])
    def asr(request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        assert request.content is not None
        return json.dumps({"bytes": len(request.content.read())}).encode()

    h = embedded(app.resource())
    raw = h.request(b"POST /asr HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc").received()
    status, _, body = parse_response(raw)
    assert (status, json.loads(dechunk(body)[0])) == (200, {"bytes": 3})
    assert parse_response(h.request(GET % b"/healthz").received())[0] == 200


def test_the_body_limit_covers_the_embedders_routes() -> None:
    """``--max-body`` is the site's: an upload to ``/asr`` over it is refused before it is sent."""
    h = embedded(max_body=1000)
    client = h.request(
        b"POST /asr HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )
    raw = client.received()
    assert raw.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in raw
    assert client.closed


def test_an_own_site_let_the_body_in_before_refusing_it() -> None:
    """Why ``site(root=)``: a plain ``Site`` invites (and stores) a body over the limit."""
    h = Harness(max_body=1000)
    site = Site(h.proxy.resource(), reactor=h.reactor)
    h.site = site  # type: ignore[assignment]
    client = h.request(
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert client.received().startswith(b"HTTP/1.1 100 Continue")


def test_the_embedders_routes_are_served_as_a_plain_site_would() -> None:
    """Form bodies parsed into ``request.args``, ``text/html`` by default, no gateway event."""
    h = embedded()
    with LogCapture() as logs:
        raw = h.request(
            b"POST /asr HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded"
            b"\r\nContent-Length: 7\r\n\r\nlang=en"
        ).received()
    status, headers, body = parse_response(raw)
    assert status == 200
    assert json.loads(body)["args"] == {"lang": ["en"]}
    assert headers[b"content-type"] == [b"text/html"]
    assert not logs.access()


def test_the_embedders_routes_get_twisteds_access_line(tmp_path: Path) -> None:
    """Twisted's combined log line for the embedder's requests, the gateway's event for its."""
    h = embedded()
    h.site.logPath = str(tmp_path / "access.log")
    h.site.startFactory()
    with LogCapture() as logs:
        h.request(GET % b"/asr").received()
        h.request(GET % b"/v1/audio/").received()
    h.site.stopFactory()
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert len(lines) == 1
    assert '"GET /asr HTTP/1.1" 200' in lines[0]
    assert [e["path"] for e in logs.access()] == ["/v1/audio/"]


def test_while_draining_the_embedders_connections_end_keep_alive() -> None:
    """The drain covers every connection of the site: its responses carry ``Connection: close``."""
    h = embedded()
    client = h.request(b"POST /asr HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\na")
    drained = h.proxy.drain(10)
    client.send(b"b")
    status, headers, _ = parse_response(client.received())
    assert status == 200
    assert headers[b"connection"] == [b"close"]
    assert client.closed
    client.lose()
    assert drained.called


def test_routes_that_are_off_are_left_to_the_root() -> None:
    """With ``metrics=False`` (``health=False``) the embedder may serve ``/metrics`` itself."""
    root = app_root()
    root.putChild(b"metrics", Data(b"mine", "text/plain"))
    h = embedded(root, metrics=False)
    status, _, body = parse_response(h.request(GET % b"/metrics").received())
    assert (status, body) == (200, b"mine")


@pytest.mark.parametrize("name", [b"metrics", b"healthz", b"readyz"])
def test_a_root_child_the_gateway_would_hide_fails_at_start(name: bytes) -> None:
    """A root child at one of the gateway's paths would never be reached: one clear error."""
    root = app_root()
    root.putChild(name, Data(b"x", "text/plain"))
    h = Harness()
    with pytest.raises(ConfigError, match=f"/{name.decode()}"):
        h.proxy.site(root=root)


def test_a_root_with_v1_audio_fails_at_start() -> None:
    root = app_root()
    v1 = root.children[b"v1"]
    assert isinstance(v1, Resource)
    v1.putChild(b"audio", Data(b"x", "text/plain"))
    with pytest.raises(ConfigError, match="/v1/audio"):
        Harness().proxy.site(root=root)


def _mounted(mount: bytes) -> tuple[Harness, Site]:
    h = Harness()
    root = Resource()
    root.putChild(mount, h.proxy.resource())
    site = Site(root, reactor=h.reactor)
    h.site = site  # type: ignore[assignment]
    return h, site


@pytest.mark.parametrize("mount", [b"v1", b"tts", b"metrics"])
def test_the_resource_mounted_below_the_root_says_so(mount: bytes) -> None:
    """``putChild(b"v1", proxy.resource())`` used to lose /metrics and /healthz and answer
    ``/v1/metrics``; under ``b"tts"`` the audio route was 404 while ``/tts/metrics`` answered.
    Every route now agrees: a 500 envelope, and an error in the log that names the way."""
    h, _site = _mounted(mount)
    with LogCapture() as logs:
        answers = [
            h.request(GET % (b"/" + mount + path)).received()
            for path in (b"/v1/audio/voices", b"/metrics", b"/healthz")
        ]
    for raw in answers:
        assert parse_response(raw)[0] == 500
        assert envelope(raw)["type"] == "internal_error"
    assert h.connection_attempts == 0
    # One error names the way (the access events of the three 500s are errors too, each in
    # the access log's namespace).
    errors = [
        e
        for e in logs.events
        if e.get("log_level") is not None
        and e["log_level"].name == "error"
        and e.get("log_namespace") != "aistack_tts.access"
    ]
    assert len(errors) == 1
    text = errors[0]["log_format"].format(**errors[0])
    assert "proxy.site(root=" in text
    assert f"/{mount.decode()}/" in text


def test_the_resource_at_an_own_sites_root_still_works() -> None:
    """``Site(proxy.resource())`` (no body limit on arrival) serves every gateway route."""
    h = Harness()
    h.site = Site(h.proxy.resource(), reactor=h.reactor)  # type: ignore[assignment]
    assert parse_response(h.request(GET % b"/healthz").received())[0] == 200
    assert parse_response(h.request(GET % b"/metrics").received())[0] == 200
    h.request(GET % b"/v1/audio/voices")
    assert h.upstream().received().startswith(b"GET /v1/audio/voices HTTP/1.1\r\n")


def test_a_target_that_climbs_out_of_v1_audio_is_refused_not_handed_to_the_root() -> None:
    """``/v1/audio/../../asr`` is the gateway's (by its raw bytes): 400, never the root's /asr."""
    h = embedded()
    raw = h.request(GET % b"/v1/audio/%2e%2e/%2e%2e/asr").received()
    assert parse_response(raw)[0] == 400
    assert envelope(raw)["type"] == "invalid_request"
    assert h.connection_attempts == 0
