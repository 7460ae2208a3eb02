"""The gateway with a pool of upstreams, slot-exempt calls and the bounded wait, on the wire."""

from __future__ import annotations

import pytest
from twisted.internet.defer import DeferredSemaphore

from aistack_tts import ConfigError, TTSProxy
from aistack_tts._options import Options
from support.harness import Harness
from support.logs import LogCapture
from support.wire import envelope, parse_response

GPUS = ["http://127.0.0.1:8091", "http://127.0.0.1:8092"]
SPEECH = (
    b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)
VOICES = b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def two_gpus(**kwargs: object) -> tuple[Harness, list[DeferredSemaphore]]:
    slots = [DeferredSemaphore(1), DeferredSemaphore(1)]
    return Harness(GPUS, slot=slots, **kwargs), slots


def test_concurrent_calls_spread_over_the_gpus_and_the_next_is_busy() -> None:
    """Two calls at once go to the two GPUs; a third gets 503 gpu_busy at once."""
    h, slots = two_gpus()
    first, second = h.request(SPEECH), h.request(SPEECH)
    assert [h.port(0), h.port(1)] == [8091, 8092]
    assert [s.tokens for s in slots] == [0, 0]
    third = h.request(SPEECH)
    assert parse_response(third.received())[0] == 503
    assert envelope(third.received())["type"] == "gpu_busy"
    assert h.connection_attempts == 2
    h.upstream(0).send(OK)
    h.upstream(1).send(OK)
    assert parse_response(first.received())[0] == 200
    assert parse_response(second.received())[0] == 200
    assert [s.tokens for s in slots] == [1, 1]


def test_refused_upstream_fails_over_and_is_skipped_for_a_while() -> None:
    """A GPU host that refuses: the call moves to the other one; later calls skip it."""
    h, slots = two_gpus()
    with LogCapture() as logs:
        client = h.request(SPEECH)
        assert h.port() == 8091
        h.refuse()
        assert h.port() == 8092, "the same request was sent to the other GPU"
        h.upstream().send(OK)
    assert parse_response(client.received())[0] == 200
    assert [s.tokens for s in slots] == [1, 1]
    assert any("refused the connection; trying" in str(e.get("log_format")) for e in logs.events)
    again = h.request(SPEECH)
    assert h.port() == 8092, "the refusing GPU is in its cool-down"
    h.upstream().send(OK)
    assert parse_response(again.received())[0] == 200
    h.reactor.advance(5)
    h.request(SPEECH)
    assert h.port() == 8091, "after the cool-down it is tried again"


def test_all_upstreams_down_and_busy_is_503_unavailable_without_connecting() -> None:
    """Every GPU host refused recently and none has a slot to try it again (no queue): the
    client is told at once. (With a free slot the call tries one: ``test_queue``.)"""
    h, slots = two_gpus()
    h.request(SPEECH)
    h.refuse()
    h.refuse()
    attempts = h.connection_attempts
    for slot in slots:
        slot.acquire()
    client = h.request(SPEECH)
    error = envelope(client.received())
    assert (error["type"], error["provider"]) == ("upstream_unavailable", "qwen3-tts")
    assert h.connection_attempts == attempts
    assert [s.tokens for s in slots] == [0, 0], "the other holders keep theirs"


def test_slot_exempt_calls_pass_while_the_gpu_is_busy() -> None:
    """A call marked slot-exempt goes upstream even while the GPU slot is held."""
    h = Harness(slot_exempt=["GET:/v1/audio/voices"])
    h.slot.acquire()
    with LogCapture() as logs:
        client = h.request(VOICES)
        h.upstream().send(OK)
    assert parse_response(client.received())[0] == 200
    assert h.tokens == 0, "the other holder still has it; the exempt call took nothing"
    assert [e["slot"] for e in logs.access()] == ["exempt"]
    busy = h.request(SPEECH)
    assert parse_response(busy.received())[0] == 503


def test_a_refused_slot_exempt_call_fails_over_while_both_gpus_are_busy() -> None:
    """A slot-exempt call needs no free slot: it moves to the other GPU, and past both, 503."""
    h, slots = two_gpus(slot_exempt=["GET:/v1/audio/voices"])
    for slot in slots:
        slot.acquire()
    client = h.request(VOICES)
    assert h.port() == 8091
    h.refuse()
    assert h.port() == 8092, "the same request was sent to the other GPU"
    h.upstream().send(OK)
    assert parse_response(client.received())[0] == 200
    h.reactor.advance(5)
    last = h.request(VOICES)
    h.refuse()
    h.refuse()
    assert envelope(last.received())["type"] == "upstream_unavailable"
    assert [s.tokens for s in slots] == [0, 0], "the other holders keep theirs"


def test_slot_exempt_prefix_and_method() -> None:
    """A trailing * matches a prefix; the method must match too."""
    h = Harness(slot_exempt=["GET:/v1/audio/voices*"])
    h.slot.acquire()
    h.request(b"GET /v1/audio/voices/bob?x=1 HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert h.connection_attempts == 1
    deleted = h.request(b"DELETE /v1/audio/voices/bob HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert parse_response(deleted.received())[0] == 503


def test_queue_timeout_waits_for_the_slot() -> None:
    """With --queue-timeout a busy GPU makes the request wait, then it is served."""
    h = Harness(queue_timeout=10)
    outside = h.slot.acquire()
    assert outside.called
    client = h.request(SPEECH)
    h.reactor.advance(3)
    assert client.received() == b""
    assert h.connection_attempts == 0
    h.slot.release()
    h.upstream().send(OK)
    assert parse_response(client.received())[0] == 200
    assert h.tokens == 1


def test_queue_timeout_expires_with_503() -> None:
    """Past --queue-timeout the waiting request gets 503 gpu_busy."""
    h = Harness(queue_timeout=2)
    h.slot.acquire()
    client = h.request(SPEECH)
    h.reactor.advance(2)
    assert envelope(client.received())["type"] == "gpu_busy"
    h.slot.release()
    assert h.tokens == 1
    assert h.connection_attempts == 0


def test_client_leaving_the_queue_leaves_at_once() -> None:
    """A waiting client that disconnects leaves the queue; the slot then goes to the next."""
    h = Harness(queue_timeout=30)
    h.slot.acquire()
    with LogCapture() as logs:
        gone = h.request(SPEECH)
        waiting = h.request(SPEECH)
        gone.lose()
    assert [e["outcome"] for e in logs.access()] == ["client_abort_queued"]
    assert not logs.failures()
    h.slot.release()
    assert h.connection_attempts == 1, "the next waiter got the slot"
    h.upstream().send(OK)
    assert parse_response(waiting.received())[0] == 200
    assert h.tokens == 1


def test_one_semaphore_per_upstream() -> None:
    """Embedding with several upstreams takes one semaphore each."""
    with pytest.raises(ConfigError, match="one semaphore per upstream"):
        TTSProxy(GPUS, slot=DeferredSemaphore(1), reactor=object())


def test_options_for_the_pool() -> None:
    """--upstream repeats; --slot-exempt and --queue-timeout come from the line or the env."""
    options = Options(
        environ={
            "AISTACK_TTS_SLOT_EXEMPT": "GET:/v1/audio/voices",
            "AISTACK_TTS_QUEUE_TIMEOUT": "2.5",
        }
    )
    options.parseOptions(["--upstream", GPUS[0], "--upstream", GPUS[1]])  # type: ignore[no-untyped-call]
    config = options.config
    assert config.upstream == tuple(GPUS)
    assert config.slot_exempt == ("GET:/v1/audio/voices",)
    assert config.queue_timeout == 2.5


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--slot-exempt", "voices"], "slot-exempt 'voices' must look like METHOD:/path"),
        (["--queue-timeout", "-1"], "queue-timeout must be a number of seconds >= 0"),
        (["--upstream", GPUS[0], "--upstream", GPUS[0]], "upstream URLs must differ"),
    ],
)
def test_bad_pool_options(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad pool settings stop the gateway at start with one line."""
    with pytest.raises(SystemExit):
        Options(environ={}).parseOptions(argv)  # type: ignore[no-untyped-call]
    assert fragment in capsys.readouterr().err
