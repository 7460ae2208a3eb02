"""A deterministic synthetic voice: text in, 24 kHz mono 16-bit PCM out, one codec frame at a time.

Nothing here touches a reactor or a socket. The text becomes a *score* (syllable-like notes and
pauses, with a falling sentence melody and stressed syllables), which is then rendered through
a wavetable of harmonics shaped by vowel-like formants, so the result sounds voiced (clear
pitch, harmonics, envelopes) rather than like a beep or noise. The same text, voice and speed
always give the same bytes. The step below the utterances (``_generation``, ``_batch``,
``_stream``); the voices' numbers come from ``_profiles``.
"""

from __future__ import annotations

import math
import re
import struct
import sys
import unicodedata
from array import array
from collections.abc import Iterator

from attrs import frozen

from ._profiles import VoiceProfile, stable_unit

SAMPLE_RATE = 24_000
CHANNELS = 1
SAMPLE_WIDTH = 2
#: Qwen3-TTS-12Hz emits one codec frame per 80 ms of audio: 1920 samples at 24 kHz.
FRAME_SAMPLES = 1920
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
FRAME_BYTES = FRAME_SAMPLES * SAMPLE_WIDTH

#: What real streaming TTS servers put in a WAV header whose length is not known yet.
STREAMING_SIZE = 0xFFFFFFFF

_TABLE_SIZE = 1024
_TABLE_MASK = _TABLE_SIZE - 1
_PEAK = 0.32 * 32767


# --- text to score -------------------------------------------------------------------------

#: (F1, F2, F3) in Hz for an adult male tract; scaled per voice.
_FORMANTS: dict[str, tuple[float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (300.0, 2250.0, 3000.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (320.0, 900.0, 2250.0),
}
_VOWEL_ORDER = "aeiou"
_BANDWIDTHS = (90.0, 120.0, 180.0)

# Seconds at speed 1.0.
_SYLLABLE_SECONDS = 0.13
_PER_LETTER_SECONDS = 0.012
_WORD_GAP = 0.035
_COMMA_PAUSE = 0.22
_SENTENCE_PAUSE = 0.36
_LEAD_IN = 0.06
_TAIL = 0.12

# Full-width forms too, for Chinese, Japanese and Korean text.
_SENTENCE_END = ".!?\u3002\uff01\uff1f"
_CLAUSE_END = ",;:\uff0c\uff1b\uff1a\u3001"
_QUESTION = "?\uff1f"
_TOKEN = re.compile(rf"[^\W_]+|[{re.escape(_SENTENCE_END)}]+|[{re.escape(_CLAUSE_END)}]|\S")
_VOWEL_GROUP = re.compile(r"[aeiouy]+")


@frozen
class Note:
    """One syllable: a pitch glide under an envelope, on one vowel colour."""

    samples: int
    f_start: float
    f_end: float
    vowel: str
    gain: float


@frozen
class Rest:
    """Silence between words and sentences."""

    samples: int


Segment = Note | Rest


def _is_syllabic_script(char: str) -> bool:
    # CJK, kana and hangul: one character is (about) one syllable.
    code = ord(char)
    return 0x2E80 <= code <= 0x9FFF or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFAFF


def _syllables(word: str) -> list[tuple[str, int]]:
    """The word's syllables as (vowel colour, letters) pairs."""
    folded = "".join(
        c for c in unicodedata.normalize("NFKD", word.lower()) if not unicodedata.combining(c)
    )
    if word.isdigit():
        return [(_VOWEL_ORDER[int(d) % 5], 3) for d in word]
    out: list[tuple[str, int]] = []
    latin: list[str] = []

    def flush() -> None:
        text = "".join(latin)
        latin.clear()
        if not text:
            return
        groups = _VOWEL_GROUP.findall(text) or ["a"]
        # A silent final e ("there", "make") adds no syllable.
        if len(groups) > 1 and text.endswith("e") and text[-2] not in "aeiouy":
            groups.pop()
        letters = max(1, len(text) // len(groups))
        out.extend(("i" if g[0] == "y" else g[0], letters) for g in groups)

    for char in folded:
        if _is_syllabic_script(char):
            flush()
            out.append((_VOWEL_ORDER[ord(char) % 5], 3))
        else:
            latin.append(char)
    flush()
    return out


def _sentences(text: str) -> list[list[str]]:
    """Tokens grouped into sentences (each ends with its punctuation, if any)."""
    sentences: list[list[str]] = [[]]
    for token in _TOKEN.findall(text):
        sentences[-1].append(token)
        if token[0] in _SENTENCE_END:
            sentences.append([])
    return [s for s in sentences if s]


def _seconds_to_samples(seconds: float, speed: float) -> int:
    return max(1, round(seconds / speed * SAMPLE_RATE))


def score(text: str, voice: VoiceProfile, speed: float = 1.0) -> list[Segment]:
    """The notes and rests for ``text`` in ``voice``; durations scale with ``1 / speed``.

    The total length is padded to a whole number of codec frames, as the real model's is.
    """
    if not 0.25 <= speed <= 4.0:
        raise ValueError(f"speed must be between 0.25 and 4.0, not {speed!r}")
    segments: list[Segment] = [Rest(_seconds_to_samples(_LEAD_IN, speed))]
    semitone = 2.0 ** (1.0 / 12.0)
    for sentence in _sentences(text):
        words = [t for t in sentence if t[0].isalnum()]
        ending = sentence[-1] if not sentence[-1][0].isalnum() else "."
        question = ending[0] in _QUESTION
        total = sum(len(_syllables(w)) for w in words) or 1
        position = 0
        for token in sentence:
            if not token[0].isalnum():
                if token[0] in _SENTENCE_END:
                    segments.append(Rest(_seconds_to_samples(_SENTENCE_PAUSE, speed)))
                elif token[0] in _CLAUSE_END:
                    segments.append(Rest(_seconds_to_samples(_COMMA_PAUSE, speed)))
                continue
            syllables = _syllables(token)
            for index, (vowel, letters) in enumerate(syllables):
                progress = position / max(1, total - 1)
                position += 1
                # Declination: the melody falls through a statement; a question rises at the end.
                contour = voice.expressiveness * (0.5 - progress)
                if question and progress > 0.7:
                    contour += voice.expressiveness * 2.5 * (progress - 0.7) / 0.3
                stressed = index == 0 and (len(syllables) > 1 or stable_unit(token, "stress") > 0.5)
                wobble = (stable_unit(f"{token}/{index}", "pitch") - 0.5) * 1.5
                pitch = voice.f0 * semitone ** (contour + wobble + (1.5 if stressed else 0.0))
                glide = -0.8 if not (question and progress > 0.7) else 1.2
                seconds = _SYLLABLE_SECONDS + _PER_LETTER_SECONDS * letters
                seconds *= 0.9 + 0.2 * stable_unit(f"{token}/{index}", "length")
                if stressed:
                    seconds *= 1.15
                segments.append(
                    Note(
                        samples=_seconds_to_samples(seconds, speed),
                        f_start=pitch,
                        f_end=pitch * semitone**glide,
                        vowel=vowel,
                        gain=1.0 if stressed else 0.8,
                    )
                )
            segments.append(Rest(_seconds_to_samples(_WORD_GAP, speed)))
    # The last word's gap and the final full stop's pause become one short tail.
    while len(segments) > 1 and isinstance(segments[-1], Rest):
        segments.pop()
    segments.append(Rest(_seconds_to_samples(_TAIL, speed)))
    used = sum(s.samples for s in segments)
    pad = -used % FRAME_SAMPLES
    if pad:
        segments.append(Rest(pad))
    return segments


# --- rendering -----------------------------------------------------------------------------


def _wavetable(f0: float, vowel: str, voice: VoiceProfile) -> list[float]:
    """One period of a voiced sound at ``f0``: harmonics weighted by tilt and formants."""
    formants = [f * voice.formant_scale for f in _FORMANTS[vowel]]
    weights: list[float] = []
    k = 1
    while k * f0 < 5000.0 and k <= 32:
        f = k * f0
        resonance = 0.08 + sum(
            1.0 / (1.0 + ((f - fc) / bw) ** 2) for fc, bw in zip(formants, _BANDWIDTHS, strict=True)
        )
        weights.append(k ** (-voice.tilt) * resonance)
        k += 1
    table = [0.0] * _TABLE_SIZE
    step = 2.0 * math.pi / _TABLE_SIZE
    for h, weight in enumerate(weights, start=1):
        # Spread the harmonics' phases (Schroeder) so the waveform has no tall peaks.
        phase = math.pi * h * h / len(weights)
        for j in range(_TABLE_SIZE):
            table[j] += weight * math.sin(h * j * step + phase)
    peak = max(abs(v) for v in table) or 1.0
    return [v / peak for v in table]


_VIBRATO = [math.sin(2.0 * math.pi * j / _TABLE_SIZE) for j in range(_TABLE_SIZE)]


class Renderer:
    """Turns a score into PCM, frame by frame, keeping phase across notes."""

    def __init__(self, segments: list[Segment], voice: VoiceProfile) -> None:
        self.segments = segments
        self.voice = voice
        self.total_samples = sum(s.samples for s in segments)
        self._phase = 0.0
        self._vibrato_phase = 0.0
        self._tables: dict[tuple[str, int], list[float]] = {}

    @property
    def total_frames(self) -> int:
        """How many codec frames this utterance has."""
        return -(-self.total_samples // FRAME_SAMPLES)

    def frames(self) -> Iterator[bytes]:
        """Little-endian 16-bit PCM, one 80 ms frame (1920 samples) per item."""
        buffer = array("h")
        for segment in self.segments:
            if isinstance(segment, Rest):
                buffer.frombytes(bytes(segment.samples * SAMPLE_WIDTH))
            else:
                self._render_note(segment, buffer)
            while len(buffer) >= FRAME_SAMPLES:
                yield _le_bytes(buffer[:FRAME_SAMPLES])
                del buffer[:FRAME_SAMPLES]
        if buffer:
            # The score is frame-aligned, so this only guards against a hand-made one.
            buffer.frombytes(bytes(-len(buffer) % FRAME_SAMPLES * SAMPLE_WIDTH))
            yield _le_bytes(buffer)

    def _table(self, f0: float, vowel: str) -> list[float]:
        # Quarter-semitone buckets: repeated syllables reuse a table.
        key = (vowel, round(48.0 * math.log2(f0)))
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = _wavetable(f0, vowel, self.voice)
        return table

    def _render_note(self, note: Note, out: array[int]) -> None:
        n = note.samples
        table = self._table(math.sqrt(note.f_start * note.f_end), note.vowel)
        attack = min(int(0.02 * SAMPLE_RATE), n // 3) or 1
        release = min(int(0.05 * SAMPLE_RATE), n // 3) or 1
        scale = _TABLE_SIZE / SAMPLE_RATE
        vibrato_step = 5.5 * scale
        df = (note.f_end - note.f_start) / n
        amplitude = _PEAK * note.gain
        phase = self._phase
        vphase = self._vibrato_phase
        f = note.f_start
        vibrato = _VIBRATO
        samples = [0] * n
        for i in range(n):
            if i < attack:
                env = 0.5 - 0.5 * math.cos(math.pi * i / attack)
            elif i >= n - release:
                env = 0.5 - 0.5 * math.cos(math.pi * (n - i) / release)
            else:
                # A slow decay over the syllable, as the breath pressure falls.
                env = 1.0 - 0.25 * i / n
            phase += f * scale * (1.0 + 0.008 * vibrato[int(vphase) & _TABLE_MASK])
            vphase += vibrato_step
            f += df
            samples[i] = int(amplitude * env * table[int(phase) & _TABLE_MASK])
        self._phase = phase % _TABLE_SIZE
        self._vibrato_phase = vphase % _TABLE_SIZE
        out.extend(samples)


def _le_bytes(samples: array[int]) -> bytes:
    if sys.byteorder == "big":
        samples = array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def synthesize(text: str, voice: VoiceProfile, speed: float = 1.0) -> Renderer:
    """A renderer for ``text`` spoken by ``voice`` at ``speed``."""
    return Renderer(score(text, voice, speed), voice)


# --- WAV -----------------------------------------------------------------------------------


def wav_header(data_bytes: int | None, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 44-byte PCM WAV header for mono 16-bit audio (24 kHz unless told).

    With ``data_bytes=None`` the RIFF and data sizes are 0xFFFFFFFF, as streaming servers
    send when the length is not known yet; readers then read to the end of the stream.
    """
    if data_bytes is None:
        riff_size = data_size = STREAMING_SIZE
    else:
        if not 0 <= data_bytes <= STREAMING_SIZE - 36:
            raise ValueError(f"a WAV file cannot hold {data_bytes} bytes of audio")
        riff_size, data_size = 36 + data_bytes, data_bytes
    byte_rate = sample_rate * CHANNELS * SAMPLE_WIDTH
    return b"".join(
        [
            struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE"),
            struct.pack(
                "<4sIHHIIHH",
                b"fmt ",
                16,
                1,  # PCM
                CHANNELS,
                sample_rate,
                byte_rate,
                CHANNELS * SAMPLE_WIDTH,
                8 * SAMPLE_WIDTH,
            ),
            struct.pack("<4sI", b"data", data_size),
        ]
    )
