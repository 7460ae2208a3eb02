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


# Resampling. vLLM-Omni resamples with torchaudio (``AudioMixin._resample_audio``:
# ``torchaudio.functional.resample``, a Hann-windowed sinc, 6 zero crossings, rolloff 0.99;
# streamed chunks through its ``StreamingAudioResampler``). The demo has no torch: the same
# kind of filter in numpy, for the one ratio the model offers (24 kHz to 8 kHz, by 3).
_ZERO_CROSSINGS = 6
_ROLLOFF = 0.99


def _lowpass(factor: int) -> np.ndarray:
    half = _ZERO_CROSSINGS * factor
    n = np.arange(-half, half + 1, dtype=np.float64)
    cutoff = _ROLLOFF / (2 * factor)
    taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hanning(2 * half + 1)
    normalized: np.ndarray = taps / taps.sum()
    return normalized


def _factor(target_rate: int) -> int:
    if SAMPLE_RATE % target_rate:
        raise ValueError(f"cannot resample {SAMPLE_RATE} Hz to {target_rate} Hz")
    return SAMPLE_RATE // target_rate


def _to_pcm(samples: np.ndarray) -> bytes:
    return np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()


def resample(pcm: bytes, target_rate: int) -> bytes:
    """Whole 24 kHz 16-bit audio at ``target_rate`` (a divisor of 24 kHz)."""
    factor = _factor(target_rate)
    if factor == 1:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return _to_pcm(np.convolve(samples, _lowpass(factor), mode="same")[::factor])


class StreamResampler:
    """Chunks of 24 kHz audio resampled as they come, the filter's history carried over."""

    def __init__(self, target_rate: int) -> None:
        self.factor = _factor(target_rate)
        self._taps = _lowpass(self.factor)
        self._history = np.zeros(len(self._taps) - 1)
        self._phase = 0

    def process(self, pcm: bytes) -> bytes:
        """The resampled samples of this chunk (whole chunks of frames divide evenly)."""
        if self.factor == 1:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        padded = np.concatenate([self._history, samples])
        filtered = np.convolve(padded, self._taps, mode="valid")
        self._history = padded[len(padded) - len(self._history) :]
        out = filtered[self._phase :: self.factor]
        self._phase = (self._phase - len(filtered)) % self.factor
        return _to_pcm(out)


def encode(pcm: bytes, response_format: str, sample_rate: int = SAMPLE_RATE) -> bytes:
    """``pcm`` (16-bit, 24 kHz mono) as a file in ``response_format`` at ``sample_rate``."""
    pcm = resample(pcm, sample_rate)
    if response_format == "pcm":
        return pcm
    container, subtype = _CONTAINERS[response_format]
    samples = np.frombuffer(pcm, dtype="<i2")
    out = io.BytesIO()
    soundfile.write(out, samples, sample_rate, format=container, subtype=subtype)
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


__all__ = [
    "CHANNELS",
    "CONTENT_TYPES",
    "RESPONSE_FORMATS",
    "STREAM_FORMATS",
    "StreamResampler",
    "decode",
    "encode",
    "resample",
]
