"""The demo upstream when the client leaves or stops reading: generation stops, or pauses.

Driven through the demo's own Site on a StringTransport, where the test plays the TCP transport.
"""

from __future__ import annotations

from twisted.logger import formatEvent

from aistack_tts_demo._synth import (
    FRAME_BYTES,
    synthesize,
    wav_header,
)
from support.demo import (
    ABORTED,
    FIRST,
    FRAME_INTERVAL,
    TEXT,
    VIVIAN,
    Wire,
    advance,
    captured_logs,
    generation_steps,
    messages,
    run_generation,
)

# --- disconnects and backpressure ----------------------------------------------------------


def test_client_leaving_stops_generation_and_is_logged() -> None:
    """When the client goes, no further frame is made and one event says how far it got."""
    wire = Wire()
    wire.speech(input=TEXT * 3, stream_format="audio")
    advance(wire.clock, FIRST + 3.5 * FRAME_INTERVAL)
    assert len(wire.audio_received()) == 44 + 4 * FRAME_BYTES
    with captured_logs() as events:
        wire.lose()
        assert generation_steps(wire.clock) == []
        written = wire.received()
        run_generation(wire.clock)
        advance(wire.clock, 60)
    assert wire.received() == written
    [abort] = messages(events, ABORTED)
    assert formatEvent(abort) == f"{ABORTED} after 4 frames"
    assert abort["frames"] == 4
    assert abort["log_namespace"] == "aistack_tts_demo"
    assert [e for e in events if e.get("isError") or "log_failure" in e] == []


def test_client_leaving_a_non_streamed_request() -> None:
    """Also while a whole file is being made: generation stops, nothing is sent."""
    wire = Wire()
    wire.speech(input=TEXT)
    advance(wire.clock, FIRST + 1.5 * FRAME_INTERVAL)
    with captured_logs() as events:
        wire.lose()
    assert generation_steps(wire.clock) == []
    assert wire.received() == b""
    [abort] = messages(events, ABORTED)
    assert abort["frames"] == 2


def test_client_leaving_before_the_first_frame() -> None:
    """Leaving during the first-chunk delay cancels the pending first frame."""
    wire = Wire()
    wire.speech(input=TEXT, stream_format="audio")
    assert len(generation_steps(wire.clock)) == 1
    with captured_logs() as events:
        wire.lose()
    assert generation_steps(wire.clock) == []
    [abort] = messages(events, ABORTED)
    assert abort["frames"] == 0


def test_finished_request_logs_no_abort() -> None:
    """A request that completed is not reported as aborted when its connection closes."""
    wire = Wire()
    with captured_logs() as events:
        wire.speech(input="Hi.", stream_format="audio")
        run_generation(wire.clock)
        assert wire.received().endswith(b"\r\n0\r\n\r\n")
        wire.lose()
    assert messages(events, ABORTED) == []
    assert len(messages(events, "speech generated: ")) == 1


def test_full_socket_buffer_pauses_generation() -> None:
    """While the transport is paused no frame is made; resuming carries on where it stopped."""
    wire = Wire()
    wire.speech(input=TEXT * 3, stream_format="audio")
    advance(wire.clock, FIRST + 1.5 * FRAME_INTERVAL)
    assert len(wire.audio_received()) == 44 + 2 * FRAME_BYTES

    # What a TCP transport does when its send buffer fills.
    wire.network.pauseProducing()
    assert generation_steps(wire.clock) == []
    advance(wire.clock, 60)
    assert len(wire.audio_received()) == 44 + 2 * FRAME_BYTES

    wire.network.resumeProducing()
    advance(wire.clock, FRAME_INTERVAL)
    assert len(wire.audio_received()) == 44 + 3 * FRAME_BYTES
    advance(wire.clock, FRAME_INTERVAL)
    assert len(wire.audio_received()) == 44 + 4 * FRAME_BYTES

    run_generation(wire.clock)
    expected = b"".join(synthesize(TEXT * 3, VIVIAN).frames())
    assert wire.audio_received() == wav_header(None) + expected


def test_pause_during_the_first_chunk_delay() -> None:
    """A pause before the first frame holds it back until resumed."""
    wire = Wire()
    wire.speech(input=TEXT, stream_format="audio")
    wire.network.pauseProducing()
    advance(wire.clock, 10)
    assert wire.received() == b""
    wire.network.resumeProducing()
    advance(wire.clock, FIRST)
    assert len(wire.audio_received()) == 44 + FRAME_BYTES
