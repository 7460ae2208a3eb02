"""The voices' numbers: the model's nine speakers, and one derived for each uploaded sample.

The lowest step of the demo's audio: a ``VoiceProfile`` is what ``aistack_tts_demo._synth``
renders with, derived by hashing (not ``random``), so a voice sounds the same on every run.
"""

from __future__ import annotations

import hashlib

from attrs import frozen


@frozen
class VoiceProfile:
    """The few numbers that make one voice sound unlike another."""

    name: str
    #: Speaking pitch in Hz.
    f0: float
    #: Spectral tilt: higher is darker (harmonic k has weight k**-tilt).
    tilt: float
    #: Vocal tract length factor applied to the vowel formants (>1: shorter tract, brighter).
    formant_scale: float
    #: Pitch range of the sentence melody, in semitones.
    expressiveness: float


def stable_unit(seed: str, salt: str) -> float:
    """A stable number in [0, 1) from ``seed`` (hash, not ``random``: same on every run)."""
    digest = hashlib.sha256(f"{salt}\x00{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _profile(name: str, f0: float, formant_scale: float) -> VoiceProfile:
    key = name.lower()
    return VoiceProfile(
        name=name,
        f0=f0,
        tilt=0.9 + 0.5 * stable_unit(key, "tilt"),
        formant_scale=formant_scale,
        expressiveness=2.0 + 2.5 * stable_unit(key, "range"),
    )


#: The CustomVoice model's nine speakers, with a pitch and tract length to suit each.
BUILTIN_PROFILES: tuple[VoiceProfile, ...] = (
    _profile("Vivian", 218.0, 1.17),
    _profile("Serena", 196.0, 1.14),
    _profile("Uncle_Fu", 96.0, 0.94),
    _profile("Dylan", 128.0, 1.02),
    _profile("Eric", 117.0, 1.0),
    _profile("Ryan", 109.0, 0.98),
    _profile("Aiden", 136.0, 1.04),
    _profile("Ono_Anna", 242.0, 1.2),
    _profile("Sohee", 228.0, 1.18),
)


def profile_for_upload(name: str, sample_digest: bytes) -> VoiceProfile:
    """A voice for an uploaded sample: derived from its name and the sample's bytes."""
    seed = name.lower() + sample_digest.hex()
    return VoiceProfile(
        name=name,
        f0=90.0 + 160.0 * stable_unit(seed, "f0"),
        tilt=0.9 + 0.5 * stable_unit(seed, "tilt"),
        formant_scale=0.92 + 0.3 * stable_unit(seed, "formant"),
        expressiveness=2.0 + 2.5 * stable_unit(seed, "range"),
    )
