"""The demo's WebSocket ``/v1/audio/speech/stream`` as vLLM-Omni's, through a real gateway.

Each test is a WebSocket row of ``docs/compatibility.rst``, asked of a real ``twist aistack-tts
--demo`` process (the timeouts: of a real gateway in front of a real ``twist
aistack-tts-demo-upstream`` with short limits) with the ``websockets`` package's client.
Audio is decoded with ``soundfile`` (libsndfile). What the real handler does is in
``serving_speech_stream.py`` of vllm-project/vllm-omni (see the compatibility page).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import ClientConnection, connect

from testbed.processes import wait_listening

pytestmark = pytest.mark.real_sockets

PATIENCE = 15.0
FRAME_BYTES = 3840  # one 80 ms codec frame of 24 kHz 16-bit mono


def session(port: int) -> ClientConnection:
    return connect(
        f"ws://127.0.0.1:{port}/v1/audio/speech/stream",
        open_timeout=PATIENCE,
        close_timeout=PATIENCE,
        max_size=None,
        proxy=None,
    )


def send(ws: ClientConnection, **event: Any) -> None:
    ws.send(json.dumps(event))


def receive(ws: ClientConnection) -> dict[str, Any] | bytes:
    message = ws.recv(timeout=PATIENCE)
    if isinstance(message, bytes):
        return message
    event: dict[str, Any] = json.loads(message)
    return event


def as_event(message: dict[str, Any] | bytes) -> dict[str, Any]:
    assert isinstance(message, dict), "a JSON event, not audio"
    return message


def until_session_done(ws: ClientConnection) -> list[dict[str, Any] | bytes]:
    """Every message up to and including ``session.done``."""
    got: list[dict[str, Any] | bytes] = []
    while True:
        got.append(receive(ws))
        last = got[-1]
        if isinstance(last, dict) and last["type"] == "session.done":
            return got


def closed_after(ws: ClientConnection) -> list[dict[str, Any]]:
    """The events the server sends before it closes the session cleanly (code 1000)."""
    events: list[dict[str, Any]] = []
    closed: ConnectionClosedOK | None = None
    while closed is None:
        try:
            events.append(as_event(receive(ws)))
        except ConnectionClosedOK as e:
            closed = e
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1000
    return events


def decoded(data: bytes) -> tuple[int, float, str]:
    info = soundfile.info(io.BytesIO(data))
    return info.samplerate, info.duration, info.format


def test_default_buffers_until_input_done_then_one_wav(demo_gateway_port: int) -> None:
    """Defaults: no audio before ``input.done`` (no sentence splitting), then one utterance:
    ``audio.start`` (format wav, no sample_rate), one binary message that is a whole WAV at
    24 kHz, ``audio.done`` with ``total_bytes`` and ``error``, ``session.done``."""
    with session(demo_gateway_port) as ws:
        send(ws, type="session.config", voice="vivian")
        send(ws, type="input.text", text="Hello there. How are")
        send(ws, type="input.text", text=" you today? ")
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1.0)  # the demo makes its first frame 0.1 s after a request
        send(ws, type="input.done")
        start, audio, done, session_done = until_session_done(ws)
        assert start == {
            "type": "audio.start",
            "utterance_index": 0,
            "sentence_index": 0,
            "sentence_text": "Hello there. How are you today?",
            "format": "wav",
        }
        assert isinstance(audio, bytes)
        rate, seconds, container = decoded(audio)
        assert (rate, container) == (24000, "WAV")
        assert seconds > 1.0
        assert done == {
            "type": "audio.done",
            "utterance_index": 0,
            "sentence_index": 0,
            "total_bytes": len(audio),
            "error": False,
        }
        assert session_done == {"type": "session.done", "utterance_index": 0, "total_sentences": 1}
        send(ws, type="session.close")
        assert closed_after(ws) == []


def test_stream_audio_sends_pcm_chunks_as_made_and_names_the_rate(demo_gateway_port: int) -> None:
    """``stream_audio: true`` with pcm: ``audio.start`` comes with the first chunk and names
    ``sample_rate``/``channels``; chunks are one codec frame, then 25 frames (about 2 s);
    ``audio.done``'s ``total_bytes`` is what was sent."""
    with session(demo_gateway_port) as ws:
        send(ws, type="session.config", voice="ryan", response_format="pcm", stream_audio=True)
        send(ws, type="input.text", text="The quick brown fox jumps over the lazy dog, twice.")
        send(ws, type="input.done")
        start, *middle, done, _session_done = until_session_done(ws)
        assert start == {
            "type": "audio.start",
            "utterance_index": 0,
            "sentence_index": 0,
            "sentence_text": "The quick brown fox jumps over the lazy dog, twice.",
            "format": "pcm",
            "sample_rate": 24000,
            "channels": 1,
        }
        chunks = [len(c) for c in middle if isinstance(c, bytes)]
        assert len(chunks) == len(middle) >= 3
        assert chunks[0] == FRAME_BYTES
        assert chunks[1] == 25 * FRAME_BYTES
        assert 0 < chunks[-1] <= 25 * FRAME_BYTES
        assert done == {
            "type": "audio.done",
            "utterance_index": 0,
            "sentence_index": 0,
            "total_bytes": sum(chunks),
            "error": False,
        }


def test_sentence_splitting_on_request_and_a_new_config_between_utterances(
    demo_gateway_port: int,
) -> None:
    """``split_granularity: "sentence"`` speaks each sentence once it is complete (a wav each);
    a new ``session.config`` after ``session.done`` applies to the next utterance (mp3 here),
    whose ``utterance_index`` counts on."""
    with session(demo_gateway_port) as ws:
        send(ws, type="session.config", voice="aiden", split_granularity="sentence")
        send(ws, type="input.text", text="Hi there. And")
        first = receive(ws)
        assert as_event(first)["sentence_text"] == "Hi there."
        send(ws, type="input.text", text=" you?")
        send(ws, type="input.done")
        got = [first, *until_session_done(ws)]
        starts = [m for m in got if isinstance(m, dict) and m["type"] == "audio.start"]
        assert [(s["sentence_index"], s["sentence_text"]) for s in starts] == [
            (0, "Hi there."),
            (1, "And you?"),
        ]
        wavs = [m for m in got if isinstance(m, bytes)]
        assert [decoded(w)[2] for w in wavs] == ["WAV", "WAV"]
        assert got[-1] == {"type": "session.done", "utterance_index": 0, "total_sentences": 2}

        send(ws, type="session.config", voice="aiden", response_format="mp3")
        send(ws, type="input.text", text="Now in mp3.")
        send(ws, type="input.done")
        start, mp3, done, session_done = until_session_done(ws)
        assert (as_event(start)["format"], as_event(start)["utterance_index"]) == ("mp3", 1)
        assert isinstance(mp3, bytes)
        assert decoded(mp3)[0::2] == (24000, "MP3")
        assert as_event(done)["total_bytes"] == len(mp3)
        assert session_done == {"type": "session.done", "utterance_index": 1, "total_sentences": 1}


def test_voice_is_checked_at_generation_time(demo_gateway_port: int) -> None:
    """An unknown voice passes the config; the utterance fails: ``audio.start``, an ``error``
    naming the utterance and sentence, ``audio.done`` with ``error: true`` and no bytes."""
    with session(demo_gateway_port) as ws:
        send(ws, type="session.config", voice="alloy")
        send(ws, type="input.text", text="Hello.")
        send(ws, type="input.done")
        start, error, done, session_done = until_session_done(ws)
        assert as_event(start)["type"] == "audio.start"
        assert as_event(error)["type"] == "error"
        assert as_event(error)["message"].startswith(
            "Generation failed for utterance 0, sentence 0: Invalid voice 'alloy'. Supported: "
        )
        assert done == {
            "type": "audio.done",
            "utterance_index": 0,
            "sentence_index": 0,
            "total_bytes": 0,
            "error": True,
        }
        assert as_event(session_done)["total_sentences"] == 1


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (
            {"response_format": "wav", "stream_audio": True},
            "WebSocket streaming audio (stream_audio=true) requires response_format='pcm'",
        ),
        (
            {"response_format": "pcm", "stream_audio": True, "speed": 1.5},
            "WebSocket stream_audio=true currently requires speed=1.0",
        ),
    ],
)
def test_refused_first_config_is_an_error_then_the_close(
    demo_gateway_port: int, config: dict[str, Any], says: str
) -> None:
    """A first ``session.config`` the schema refuses: one ``error`` event, then a clean close."""
    # serving_speech_stream.py @ 0131cb556045 _build_config: f"Invalid session config: {e}" of
    # pydantic's ValidationError; the handler then returns.
    with session(demo_gateway_port) as ws:
        send(ws, type="session.config", **config)
        [error] = closed_after(ws)
        assert error["type"] == "error"
        assert error["message"].startswith("Invalid session config: ")
        assert says in error["message"]


def test_text_message_limit_is_128_kib_and_the_session_goes_on(demo_gateway_port: int) -> None:
    """An ``input.text`` over 128 KiB is refused with an ``error``; the session goes on."""
    with session(demo_gateway_port) as ws:
        send(ws, type="session.config")
        send(ws, type="input.text", text="a" * (128 * 1024))
        error = receive(ws)
        assert error == {"type": "error", "message": "input.text message too large"}
        send(ws, type="input.text", text="Still here.")
        send(ws, type="input.done")
        start, *_rest = until_session_done(ws)
        assert as_event(start)["sentence_text"] == "Still here."


@pytest.fixture(scope="module")
def short_limits() -> Iterator[int]:
    """A gateway in front of a demo upstream process whose WebSocket limits are short."""
    twist = str(Path(sys.executable).parent / "twist")
    listen = "tcp:0:interface=127.0.0.1"
    limits = ["--ws-config-timeout", "0.5", "--ws-idle-timeout", "1"]
    started: list[subprocess.Popen[bytes]] = []
    try:
        upstream = subprocess.Popen(
            [twist, "aistack-tts-demo-upstream", "--listen", listen, *limits],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(upstream)
        upstream_port = wait_listening(upstream, "the demo upstream")
        proxy = subprocess.Popen(
            [
                twist,
                "aistack-tts",
                "--listen",
                listen,
                "--upstream",
                f"http://127.0.0.1:{upstream_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(proxy)
        port = wait_listening(proxy, "the gateway")
        yield port
    finally:
        for process in reversed(started):
            process.terminate()
            process.wait(timeout=15)


def test_session_without_a_config_in_time_is_closed(short_limits: int) -> None:
    """No ``session.config`` within the config timeout (10 s by default): an ``error`` event
    ``Timeout waiting for session.config``, then the server closes the session."""
    with session(short_limits) as ws:
        assert closed_after(ws) == [
            {"type": "error", "message": "Timeout waiting for session.config"}
        ]


def test_idle_session_is_closed_and_the_timer_waits_for_the_audio(short_limits: int) -> None:
    """After the config, the idle timeout (30 s by default) counts from the last message the
    server finished with: an utterance longer than it is still delivered, and only then,
    with no message, ``Idle timeout: no message received`` and the close."""
    with session(short_limits) as ws:
        send(ws, type="session.config")
        # About 2.5 s of audio at the demo's rtf 0.5: longer to make than the 1 s idle limit.
        send(ws, type="input.text", text="One sentence that takes a while to say, on and on.")
        send(ws, type="input.done")
        *_audio, done, session_done = until_session_done(ws)
        assert as_event(done)["error"] is False
        assert as_event(session_done)["type"] == "session.done"
        began = time.monotonic()
        assert closed_after(ws) == [
            {"type": "error", "message": "Idle timeout: no message received"}
        ]
        assert 0.5 < time.monotonic() - began < 10
