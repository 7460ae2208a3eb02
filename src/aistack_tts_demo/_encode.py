"""The five response formats, encoded by libsndfile through ``soundfile`` as vLLM-Omni does.

vLLM-Omni's ``AudioMixin`` writes its audio with ``soundfile`` too; the demo hands it the same
24 kHz mono 16-bit samples and takes the container it makes.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile

from ._synth import CHANNELS, SAMPLE_RATE

#: ``response_format`` → (libsndfile container, subtype); ``pcm`` is the samples themselves.
_CONTAINERS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "opus": ("OGG", "OPUS"),
}

#: The formats and their content types, as vLLM-Omni names them.
CONTENT_TYPES: dict[str, bytes] = {
    "wav": b"audio/wav",
    "pcm": b"audio/pcm",
    "flac": b"audio/flac",
    "mp3": b"audio/mpeg",
    "opus": b"audio/ogg",
}
RESPONSE_FORMATS: tuple[str, ...] = tuple(CONTENT_TYPES)
#: What can be streamed: a header-less or length-less container that concatenates.
STREAM_FORMATS: tuple[str, ...] = ("pcm", "wav")


def encode(pcm: bytes, response_format: str) -> bytes:
    """``pcm`` (little-endian 16-bit, 24 kHz mono) as a whole file in ``response_format``."""
    if response_format == "pcm":
        return pcm
    container, subtype = _CONTAINERS[response_format]
    samples = np.frombuffer(pcm, dtype="<i2")
    out = io.BytesIO()
    soundfile.write(out, samples, SAMPLE_RATE, format=container, subtype=subtype)
    return out.getvalue()


def decode(data: bytes) -> tuple[int, float]:
    """(sample rate, seconds) of an audio file; ``ValueError`` if libsndfile cannot read it."""
    try:
        info = soundfile.info(io.BytesIO(data))
    except (RuntimeError, soundfile.LibsndfileError, TypeError) as e:
        raise ValueError(str(e)) from None
    if info.samplerate <= 0 or info.channels < 1:
        raise ValueError("no audio")
    return int(info.samplerate), float(info.frames) / float(info.samplerate)


__all__ = ["CHANNELS", "CONTENT_TYPES", "RESPONSE_FORMATS", "STREAM_FORMATS", "decode", "encode"]
