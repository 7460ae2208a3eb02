"""The ``twist aistack-tts-demo-upstream`` plugin: a stand-in Qwen3-TTS server.

ServiceMaker imports ``aistack_tts_demo._plugin`` (and with it klein) only when this plugin is
run, not when twist lists its plugins.
"""

from twisted.application.service import ServiceMaker

aistack_tts_demo_upstream = ServiceMaker(
    "aistack-tts-demo-upstream",
    "aistack_tts_demo._plugin",
    "Demo Qwen3-TTS upstream (vLLM-Omni /v1/audio/speech and /v1/audio/voices, synthetic voice)",
    "aistack-tts-demo-upstream",
)
