"""The demo upstream's audio, and its pacing and streaming on a fake clock.

What it speaks (24 kHz mono 16-bit, voice-like, per-voice, deterministic) and when: the whole
file only after generation at the configured real-time factor, streams frame by frame.
"""

from __future__ import annotations

import base64
import struct

import pytest
import treq
from twisted.web.iweb import UNKNOWN_LENGTH

from aistack_tts_demo import VOICES
from aistack_tts_demo._synth import (
    FRAME_BYTES,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    STREAMING_SIZE,
    synthesize,
    wav_header,
)
from support.deferreds import has_result, result_of
from support.demo import (
    FIRST,
    FRAME_INTERVAL,
    TEXT,
    VIVIAN,
    Demo,
    advance,
    duration,
    periodicity,
    rms,
    run_generation,
    samples_of,
    sse_events,
    voiced_window,
    zero_crossing_rate,
)
from support.speech import read_wav

# --- the audio -----------------------------------------------------------------------------


def test_wav_is_24k_mono_16bit_with_a_complete_header() -> None:
    """Not streamed, the answer is a whole WAV: exact sizes, Content-Length, 24 kHz mono s16."""
    demo = Demo()
    response, body = demo.finish(demo.speech(input=TEXT, voice="Vivian"))
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["audio/wav"]
    assert response.length == len(body)
    wav = read_wav(body)
    pcm = wav.pcm
    assert (wav.rate, wav.channels, wav.width) == (24000, 1, 2)
    assert wav.frames * 2 == len(pcm)
    assert len(body) == 44 + len(pcm)
    riff_size, data_size = struct.unpack("<I", body[4:8])[0], struct.unpack("<I", body[40:44])[0]
    assert (riff_size, data_size) == (len(body) - 8, len(pcm))
    # Whole 80 ms codec frames, about a fifth of a second per syllable.
    assert len(pcm) % FRAME_BYTES == 0
    assert 1.5 < wav.frames / 24000 < 6.0


def test_duration_follows_text_length_and_speed() -> None:
    """Twice the text is about twice as long; speed 2 is half as long, 0.5 twice as long."""
    demo = Demo()
    once = duration(demo.audio(input=TEXT))
    twice = duration(demo.audio(input=f"{TEXT} {TEXT}"))
    assert twice / once == pytest.approx(2.0, abs=0.15)
    # Each length is padded up to whole 80 ms frames: allow that on both sides.
    padding = 2 * FRAME_SAMPLES / SAMPLE_RATE
    assert duration(demo.audio(input=TEXT, speed=2.0)) == pytest.approx(once / 2, abs=padding)
    assert duration(demo.audio(input=TEXT, speed=0.5)) == pytest.approx(once * 2, abs=padding)
    assert duration(demo.audio(input="Hi.")) < once / 3


def test_voice_is_neither_silence_nor_noise() -> None:
    """Loud enough, and periodic like a voice: strong pitch autocorrelation, few crossings."""
    values = samples_of(read_wav(Demo().audio(input=TEXT, voice="ryan")).pcm)
    assert rms(values) > 1000
    window = voiced_window(values)
    correlation, pitch = periodicity(window)
    assert correlation > 0.6
    assert 70 < pitch < 400
    # White noise crosses zero about every other sample.
    assert zero_crossing_rate(window) < 0.2


def test_voices_differ() -> None:
    """Each of the nine speakers sounds different; a deep voice has a lower pitch."""
    demo = Demo()
    bodies = {voice: demo.audio(input="Good morning.", voice=voice) for voice in VOICES}
    assert len(set(bodies.values())) == 9
    vivian, uncle_fu = (
        periodicity(voiced_window(samples_of(read_wav(bodies[voice]).pcm)))[1]
        for voice in ("Vivian", "Uncle_Fu")
    )
    assert vivian > 1.5 * uncle_fu


def test_same_request_same_audio_whatever_the_voice_spelling() -> None:
    """Deterministic: the same text and voice give the same bytes; names ignore case."""
    demo = Demo()
    assert demo.audio(input=TEXT, voice="Ono_Anna") == demo.audio(input=TEXT, voice="ONO_ANNA")


def test_default_voice_is_vivian() -> None:
    """Without ``voice`` the model speaks as Vivian, as vLLM-Omni does."""
    demo = Demo()
    assert demo.audio(input=TEXT) == demo.audio(input=TEXT, voice="vivian")


def test_pcm_is_the_wav_data_without_a_header() -> None:
    """``pcm`` is raw 24 kHz s16le: exactly the samples of the WAV answer."""
    demo = Demo()
    response, pcm = demo.finish(demo.speech(input=TEXT, response_format="pcm"))
    assert response.headers.getRawHeaders("content-type") == ["audio/pcm"]
    assert pcm[:4] != b"RIFF"
    assert pcm == read_wav(demo.audio(input=TEXT, response_format="wav")).pcm


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("\u4f60\u597d\uff0c\u4e16\u754c\u3002", "Chinese"),
        ("\uc548\ub155\ud558\uc138\uc694", "Korean"),
    ],
)
def test_other_scripts_are_spoken(text: str, language: str) -> None:
    """Chinese and Korean text are spoken syllable by syllable."""
    assert rms(samples_of(read_wav(Demo().audio(input=text, language=language)).pcm)) > 1000


def test_wav_header_builder() -> None:
    """The complete header counts the data; the streaming one says 0xFFFFFFFF for both sizes."""
    header = wav_header(4800)
    assert len(header) == 44
    assert struct.unpack("<4sI4s", header[:12]) == (b"RIFF", 36 + 4800, b"WAVE")
    assert struct.unpack("<4sI", header[36:]) == (b"data", 4800)
    streaming = wav_header(None)
    assert struct.unpack("<I", streaming[4:8])[0] == STREAMING_SIZE
    assert struct.unpack("<I", streaming[40:44])[0] == STREAMING_SIZE
    assert streaming[8:36] == header[8:36]


# --- pacing and streaming ------------------------------------------------------------------


def test_whole_file_only_after_generation_at_the_configured_pace() -> None:
    """stream=false: nothing until the last frame is made, then the whole WAV at once."""
    demo = Demo()
    frames = synthesize(TEXT, VIVIAN).total_frames
    d = demo.speech(input=TEXT)
    done_at = FIRST + (frames - 1) * FRAME_INTERVAL
    advance(demo.clock, done_at - 0.001)
    demo.flush()
    assert not has_result(d)
    advance(demo.clock, 0.002)
    demo.flush()
    response = result_of(d)
    assert response.code == 200
    assert response.length == 44 + frames * FRAME_BYTES


def test_stream_sends_the_first_chunk_before_generation_ends() -> None:
    """stream_format=audio, one-frame chunks: headers and a frame after the first-chunk delay,
    then a frame per tick."""
    demo = Demo(chunk_frames=1)
    d = demo.speech(input=TEXT, stream_format="audio")
    advance(demo.clock, FIRST - 0.001)
    demo.flush()
    assert not has_result(d)
    advance(demo.clock, 0.002)
    demo.flush()
    response = result_of(d)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["audio/wav"]
    assert response.length is UNKNOWN_LENGTH
    received: list[bytes] = []
    done = treq.collect(response, received.append)
    demo.flush()
    assert len(b"".join(received)) == 44 + FRAME_BYTES
    assert not has_result(done)

    advance(demo.clock, FRAME_INTERVAL)
    demo.flush()
    assert len(b"".join(received)) == 44 + 2 * FRAME_BYTES
    assert not has_result(done)

    run_generation(demo.clock)
    demo.flush()
    result_of(done)
    body = b"".join(received)
    assert body[:44] == wav_header(None)
    wav = read_wav(body)
    assert (wav.rate, wav.channels, wav.width) == (24000, 1, 2)
    # Streamed or not, the audio is the same.
    assert wav.pcm == demo.audio(input=TEXT)[44:]


def test_stream_chunks_are_one_frame_then_25() -> None:
    """The default cadence is vLLM-Omni's: the first chunk one codec frame (after the WAV
    header), then 25 frames (2 s) at a time, the last one what is left."""
    demo = Demo(rtf=0)
    text = TEXT * 2
    frames = synthesize(text, VIVIAN).total_frames
    assert frames > 26
    d = demo.speech(input=text, stream_format="audio", response_format="pcm")
    advance(demo.clock, FIRST)
    demo.flush()
    chunks: list[bytes] = []
    done = treq.collect(result_of(d), chunks.append)
    run_generation(demo.clock)
    demo.flush()
    result_of(done)
    sizes = [len(c) // FRAME_BYTES for c in chunks]
    rest = (frames - 1) % 25
    assert sizes == [1] + [25] * ((frames - 1) // 25) + ([rest] if rest else [])


def test_stream_true_alone_is_sse() -> None:
    """``stream: true`` without ``stream_format`` answers Server-Sent Events, as vLLM-Omni."""
    demo = Demo()
    response, body = demo.finish(demo.speech(input=TEXT, stream=True, response_format="pcm"))
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    *deltas, done = sse_events(body)
    assert {(e["type"], e["response_format"]) for e in deltas} == {("speech.audio.delta", "pcm")}
    assert done["type"] == "speech.audio.done"


@pytest.mark.parametrize("response_format", ["wav", "pcm"])
def test_sse_events_carry_the_same_audio_as_the_raw_stream(response_format: str) -> None:
    """stream_format=sse: base64 ``speech.audio.delta`` events, then ``speech.audio.done``."""
    demo = Demo()
    raw = demo.audio(input=TEXT, stream_format="audio", response_format=response_format)
    response, body = demo.finish(
        demo.speech(input=TEXT, stream=True, stream_format="sse", response_format=response_format)
    )
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    *deltas, done = sse_events(body)
    assert {e["type"] for e in deltas} == {"speech.audio.delta"}
    assert done["type"] == "speech.audio.done"
    frames = synthesize(TEXT, VIVIAN).total_frames
    assert done["usage"]["output_tokens"] == frames
    assert done["usage"]["input_token_details"]["audio_tokens"] == 0
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == raw


def test_sse_streams_even_without_stream_true() -> None:
    """An event stream is streamed: the first delta arrives after the first-chunk delay."""
    demo = Demo()
    d = demo.speech(input=TEXT, stream_format="sse")
    advance(demo.clock, FIRST)
    demo.flush()
    received: list[bytes] = []
    treq.collect(result_of(d), received.append)
    demo.flush()
    # wav: the header is a delta of its own, then the first frame's
    # (_generate_audio_chunks, serving_speech.py @ 1a48fce52460).
    events = sse_events(b"".join(received))
    assert [e["type"] for e in events] == ["speech.audio.delta", "speech.audio.delta"]
    assert len(base64.b64decode(events[0]["audio"])) == 44


def test_rtf_zero_generates_as_fast_as_the_reactor_runs() -> None:
    """rtf=0 and no first-chunk delay: the whole answer without time passing."""
    demo = Demo(first_chunk_delay=0, rtf=0)
    d = demo.speech(input=TEXT)
    advance(demo.clock, 0)
    demo.flush()
    assert result_of(d).code == 200
    assert demo.clock.seconds() == 0
