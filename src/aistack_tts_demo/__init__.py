"""A demo upstream that behaves like vLLM-Omni serving Qwen3-TTS-12Hz-0.6B-CustomVoice.

Not a step of the gateway's request way but what is at its far end: a package beside the
gateway (``aistack_tts``, same distribution, the ``demo`` extra brings its dependencies). It
uses only the gateway's public API (``aistack_tts.__all__``); the gateway never imports it.

It answers ``/v1/audio/speech`` with a deterministic synthetic voice made one 80 ms frame at a
time, and ``/v1/audio/voices`` for listing, uploading and deleting voices, so the gateway can be
tried and tested without the GPU container. ``/v1/audio/speech/stream`` speaks vLLM-Omni's
streaming-text WebSocket protocol (text buffered until ``input.done``, one wav per utterance
by default)::

    from aistack_tts_demo import DemoUpstream, listen_demo

    site = DemoUpstream(reactor=reactor, first_chunk_delay=0.1, rtf=0.5).site()
    port = await listen_demo(reactor)  # 127.0.0.1, an ephemeral port: port.getHost().port
"""

from ._api_error import APIError
from ._app import DemoUpstream, listen_demo
from ._speech import MODEL_NAME, SpeechRequest, parse_speech_request
from ._stream import STREAM_PATH
from ._stream_config import SpeechTextSplitter, StreamConfig, StreamError, parse_stream_config
from ._voices import VOICES, VoiceRegistry

__all__ = [
    "MODEL_NAME",
    "STREAM_PATH",
    "VOICES",
    "APIError",
    "DemoUpstream",
    "SpeechRequest",
    "SpeechTextSplitter",
    "StreamConfig",
    "StreamError",
    "VoiceRegistry",
    "listen_demo",
    "parse_speech_request",
    "parse_stream_config",
]
