"""The demo upstream's ``/v1/audio/speech/stream`` WebSocket session, on a fake clock."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import pytest
import soundfile

import aistack_tts_demo
from aistack_tts_demo._encode import encode
from aistack_tts_demo._synth import (
    FRAME_BYTES,
    synthesize,
)
from support.demo import (
    FIRST,
    FRAME_INTERVAL,
    TEXT,
    Wire,
    advance,
    captured_logs,
    generation_steps,
    messages,
    run_generation,
)
from support.demo_ws import StreamWire, client_frame

# --- /v1/audio/speech/stream (WebSocket) ---------------------------------------------------

STREAM_ABORTED = "speech stream aborted: "


#: A session.config asking for what vLLM-Omni does on request only: each sentence spoken as
#: soon as it is complete, its pcm streamed in chunks as it is made.
STREAMING = {"response_format": "pcm", "stream_audio": True, "split_granularity": "sentence"}


def test_stream_default_is_one_wav_per_utterance() -> None:
    """By default text waits for input.done and the utterance is one binary message, a wav;
    audio.start has no sample_rate; audio.done says how many bytes were sent."""
    wire = StreamWire()
    wire.event(type="session.config", voice="Ryan")
    wire.event(type="input.text", text="Hello there. How")
    wire.event(type="input.text", text=" are you?")
    run_generation(wire.clock)
    assert wire.frames() == []
    wire.event(type="input.done")
    run_generation(wire.clock)
    frames = wire.frames()
    [audio] = [payload for opcode, payload in frames if opcode == 0x2]
    ryan = aistack_tts_demo.VoiceRegistry().get("ryan")
    assert ryan is not None
    pcm = b"".join(synthesize("Hello there. How are you?", ryan).frames())
    assert audio == encode(pcm, "wav")
    assert [json.loads(p) if op == 0x1 else "audio" for op, p in frames] == [
        {
            "type": "audio.start",
            "utterance_index": 0,
            "sentence_index": 0,
            "sentence_text": "Hello there. How are you?",
            "format": "wav",
        },
        "audio",
        {
            "type": "audio.done",
            "utterance_index": 0,
            "sentence_index": 0,
            "total_bytes": len(audio),
            "error": False,
        },
        {"type": "session.done", "utterance_index": 0, "total_sentences": 1},
    ]


def test_stream_speaks_each_sentence_as_soon_as_it_is_complete() -> None:
    """Split by sentence and streamed: a sentence is spoken once its end has arrived; per
    sentence audio.start (with the rate, at the first chunk), chunks of 1 then 25 frames."""
    wire = StreamWire()
    wire.event(type="session.config", voice="Ryan", **STREAMING)
    wire.event(type="input.text", text="Hello")
    wire.event(type="input.text", text=" there.")
    run_generation(wire.clock)
    assert wire.frames() == [], "'there.' may still go on ('there.5'): a sentence ends at '. '"
    wire.event(type="input.text", text=" How are")
    run_generation(wire.clock)
    assert [e["sentence_text"] for e in wire.events() if e["type"] == "audio.start"] == [
        "Hello there."
    ]
    wire.event(type="input.text", text=" you? Fine")
    run_generation(wire.clock)
    wire.event(type="input.done")
    run_generation(wire.clock)
    ryan = aistack_tts_demo.VoiceRegistry().get("ryan")
    assert ryan is not None
    sentences = ["Hello there.", "How are you?", "Fine"]
    starts = [e for e in wire.events() if e["type"] == "audio.start"]
    assert [e["sentence_text"] for e in starts] == sentences
    assert starts[0] == {
        "type": "audio.start",
        "utterance_index": 0,
        "sentence_index": 0,
        "sentence_text": "Hello there.",
        "format": "pcm",
        "sample_rate": 24000,
        "channels": 1,
    }
    assert wire.events()[-1] == {"type": "session.done", "utterance_index": 0, "total_sentences": 3}
    frames = wire.frames()
    audio = b"".join(payload for opcode, payload in frames if opcode == 0x2)
    assert audio == b"".join(b"".join(synthesize(s, ryan).frames()) for s in sentences)
    kinds = [json.loads(p)["type"] if op == 0x1 else len(p) for op, p in frames]
    first_done = kinds.index("audio.done")
    assert kinds[0] == "audio.start"
    assert kinds[1] == FRAME_BYTES
    assert all(isinstance(k, int) and k <= 25 * FRAME_BYTES for k in kinds[2:first_done])


def test_stream_chunks_are_paced_on_the_clock() -> None:
    """Streamed pcm is paced on the clock (chunks of one frame here, ``chunk_frames=1``)."""
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian", **STREAMING)
    wire.event(type="input.text", text=TEXT + " ")
    advance(wire.clock, FIRST - 0.01)
    assert len(wire.audio()) == 0
    advance(wire.clock, 0.01 + 0.5 * FRAME_INTERVAL)
    assert len(wire.audio()) == 1
    advance(wire.clock, 2 * FRAME_INTERVAL)
    assert len(wire.audio()) == 3


def test_stream_pauses_with_the_socket() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian", **STREAMING)
    wire.event(type="input.text", text=TEXT + " ")
    advance(wire.clock, FIRST + FRAME_INTERVAL)
    assert len(wire.audio()) == 2
    producer = wire.transport.producer
    assert producer is not None, "the session is its socket's producer"
    producer.pauseProducing()  # what a TCP transport does when its send buffer fills
    assert generation_steps(wire.clock) == []
    advance(wire.clock, 60)
    assert len(wire.audio()) == 2
    assert all(opcode != 0x8 for opcode, _ in wire.frames()), "no idle close while speaking"
    producer.resumeProducing()
    advance(wire.clock, FRAME_INTERVAL)
    assert len(wire.audio()) == 3


def test_stream_client_leaving_stops_generation_and_is_logged() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian")
    wire.event(type="input.text", text=TEXT + " More to say")
    wire.event(type="input.done")
    advance(wire.clock, FIRST + 2.5 * FRAME_INTERVAL)
    with captured_logs() as events:
        wire.lose()
        assert generation_steps(wire.clock) == []
        run_generation(wire.clock)
    [abort] = messages(events, STREAM_ABORTED)
    assert abort["log_namespace"] == "aistack_tts_demo"
    assert (abort["frames"], abort["index"]) == (3, 0)
    assert [e for e in events if e.get("isError") or "log_failure" in e] == []


def test_stream_idle_client_leaving_logs_no_abort() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian")
    wire.event(type="input.text", text="Hi. ")
    wire.event(type="input.done")
    run_generation(wire.clock)
    with captured_logs() as events:
        wire.lose()
    assert messages(events, STREAM_ABORTED) == []


def test_stream_session_close_closes_the_connection() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian")
    wire.event(type="input.text", text="Not finished")
    wire.event(type="session.close")
    [(opcode, payload)] = wire.frames()
    assert (opcode, payload[:2]) == (0x8, struct.pack("!H", 1000))


def test_stream_messages_wait_for_the_audio_before_them() -> None:
    """Handled one at a time, as the real receive loop does: a config sent right after
    input.done applies after that utterance (no 'utterance in progress' error), to the next."""
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian")
    wire.event(type="input.text", text="Hi.")
    wire.event(type="input.done")
    wire.event(type="session.config", voice="Vivian", response_format="flac")
    wire.event(type="input.text", text="Again.")
    wire.event(type="input.done")
    run_generation(wire.clock)
    events = wire.events()
    assert [e["type"] for e in events] == ["audio.start", "audio.done", "session.done"] * 2
    assert [e["format"] for e in events if e["type"] == "audio.start"] == ["wav", "flac"]
    assert [soundfile.info(io.BytesIO(a)).format for a in wire.audio()] == ["WAV", "FLAC"]


def test_stream_config_mid_utterance_is_refused_and_the_session_goes_on() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian")
    wire.event(type="input.text", text="Half")
    wire.event(type="session.config", voice="Ryan")
    assert wire.events() == [
        {
            "type": "error",
            "message": "session.config cannot be applied while an utterance is in progress; "
            "send input.done first",
        }
    ]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"type": "input.text", "text": "Hi."}, "Expected session.config, got: input.text"),
        (
            {"type": "session.config", "response_format": "wav", "stream_audio": True},
            "requires response_format='pcm'. Got response_format='wav'.",
        ),
        ({"type": "session.config", "split_granularity": "word"}, "split_granularity\n  Input"),
        ({"type": "session.config", "model": "tts-1"}, "The model `tts-1` does not exist."),
    ],
)
def test_stream_bad_start_is_an_error_then_the_close(event: dict[str, Any], message: str) -> None:
    wire = StreamWire()
    wire.event(**event)
    [(op1, error), (op2, close)] = wire.frames()
    assert (op1, op2, close[:2]) == (0x1, 0x8, struct.pack("!H", 1000))
    assert json.loads(error)["type"] == "error"
    assert message in json.loads(error)["message"]


def test_stream_errors_after_the_config_keep_the_session_but_bytes_end_it() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian")
    wire.ws.dataReceived(client_frame(b"not json"))
    wire.ws.dataReceived(client_frame(b"[1]"))
    wire.event(type="input.text", text=5)
    wire.event(type="nonsense")
    wire.event(type="input.done", pad="x" * (128 * 1024))
    wire.ws.dataReceived(client_frame(b"\x00\x01", opcode=0x2))
    frames = wire.frames()
    assert [json.loads(p)["message"] for op, p in frames if op == 0x1] == [
        "Invalid JSON message",
        "WebSocket messages must be JSON objects",
        "input.text requires a string value",
        "Unknown message type: nonsense",
        "input.text message too large",
        # Starlette's receive_text() on a bytes message, caught by the handler's catch-all.
        "Internal error: 'text'",
    ]
    assert frames[-1][0] == 0x8


def test_stream_voice_language_and_task_are_checked_at_generation_time() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="alloy", language="klingon")
    wire.event(type="input.text", text="Hi.")
    wire.event(type="input.done")
    run_generation(wire.clock)
    start, error, done, session_done = wire.events()
    assert start["type"] == "audio.start"
    assert error["message"].startswith("Generation failed for utterance 0, sentence 0: Invalid ")
    assert (done["total_bytes"], done["error"]) == (0, True)
    assert session_done["type"] == "session.done"


def test_stream_config_timeout_is_10_s_and_idle_timeout_30_s() -> None:
    wire = StreamWire()
    advance(wire.clock, 9.9)
    assert wire.frames() == []
    advance(wire.clock, 0.2)
    [(op1, error), (op2, _close)] = wire.frames()
    assert (op1, op2) == (0x1, 0x8)
    assert json.loads(error) == {"type": "error", "message": "Timeout waiting for session.config"}

    wire = StreamWire()
    advance(wire.clock, 5)
    wire.event(type="session.config")
    advance(wire.clock, 29.9)
    wire.event(type="input.text", text="Hi.")  # a message starts the wait anew
    advance(wire.clock, 29.9)
    assert wire.frames() == []
    advance(wire.clock, 0.2)
    [(op1, error), (op2, _close)] = wire.frames()
    assert json.loads(error) == {"type": "error", "message": "Idle timeout: no message received"}


def test_stream_path_without_upgrade_is_plain_http() -> None:
    """A plain GET of the stream path is routed like any other: Starlette's 404.

    A ``WebSocketRoute`` never matches an HTTP scope (starlette/routing.py @ cb8f84f5284d,
    ``WebSocketRoute.matches``), so FastAPI's handler answers ``{"detail": "Not Found"}``
    (fastapi/exception_handlers.py @ c3f316b7e814).
    """
    wire = Wire()
    wire.send(b"GET /v1/audio/speech/stream HTTP/1.1\r\nHost: demo\r\n\r\n")
    head, _, body = wire.received().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ")
    assert json.loads(body) == {"detail": "Not Found"}


@pytest.mark.parametrize(
    ("granularity", "pieces", "units", "rest"),
    [
        ("sentence", ["Hello there. How"], ["Hello there."], "How"),
        ("sentence", ["Hello there.", " How are you?", " "], ["Hello there.", "How are you?"], ""),
        ("sentence", ["Pi is 3.14 or so. "], ["Pi is 3.14 or so."], ""),
        ("sentence", ["Wait... what?! Yes. "], ["Wait...", "what?!", "Yes."], ""),
        ("sentence", ["你好。今天好吗\uff1f好"], ["你好。", "今天好吗\uff1f"], "好"),
        ("sentence", ["  ", "\n"], [], ""),
        ("clause", ["One, two; three. Four"], ["One,", "two;", "three."], "Four"),
        ("none", ["One. Two. ", "Three"], [], "One. Two. Three"),
    ],
)
def test_speech_text_splitter(
    granularity: str, pieces: list[str], units: list[str], rest: str
) -> None:
    splitter = aistack_tts_demo.SpeechTextSplitter(granularity)
    got = [s for piece in pieces for s in splitter.feed(piece)]
    assert got == units
    assert splitter.flush() == ([rest] if rest else [])
    assert splitter.flush() == []
