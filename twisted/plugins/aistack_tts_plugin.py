"""The ``twist aistack-tts`` plugin.

ServiceMaker imports ``aistack_tts._service`` (and with it klein and the reactor-using code)
only when this plugin is run, not when twist lists its plugins.
"""

from twisted.application.service import ServiceMaker

aistack_tts = ServiceMaker(
    "aistack-tts",
    "aistack_tts._plugin",
    "Transparent streaming gateway for Qwen3-TTS (/v1/audio/*) that guards one GPU slot",
    "aistack-tts",
)
