"""What the suites that ask for speech through a real gateway share, and how they read it.

The contract a client sees: the model's name, 24 kHz mono 16-bit audio in 80 ms codec frames,
sample texts; ``read_wav`` (a WAV file's header and samples, via the stdlib ``wave``) and
``error_body`` (the JSON body of an ``openai`` SDK error).
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from typing import Any, cast

import openai

MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
SAMPLE_RATE = 24_000
#: One Qwen3-TTS-12Hz codec frame: 80 ms of 24 kHz mono 16-bit PCM.
FRAME_BYTES = 1920 * 2
#: Everything normally happens in milliseconds to a couple of seconds; this only bounds a hang.
PATIENCE = 15.0

SHORT_TEXT = "Hello there."
#: About 3 s of audio: at rtf 0.5 its generation takes about 1.5 s.
LONG_TEXT = "Hello from aistack. The quick brown fox jumps over the lazy dog."


@dataclass
class WavInfo:
    rate: int
    channels: int
    width: int
    #: Frames the header declares.
    frames: int
    pcm: bytes

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


def read_wav(data: bytes) -> WavInfo:
    with wave.open(io.BytesIO(data), "rb") as wav:
        return WavInfo(
            rate=wav.getframerate(),
            channels=wav.getnchannels(),
            width=wav.getsampwidth(),
            frames=wav.getnframes(),
            pcm=wav.readframes(1 << 30),
        )


def error_body(error: openai.APIStatusError) -> dict[str, Any]:
    assert isinstance(error.body, dict), error.body
    return cast(dict[str, Any], error.body)
