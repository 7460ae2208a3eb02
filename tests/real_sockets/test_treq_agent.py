"""An embedder may hand treq the gateway's own upstream client (``TTSProxy.agent``).

The lean client is a plain ``IAgent``: in-process code that shares the gateway's pool of
upstream connections (say, an ASR step that also asks the TTS container for a voice list)
can wrap it in ``treq.HTTPClient`` and get whole bodies and streamed ones, as from Twisted's
own ``Agent``. Run on pytest-twisted's reactor against the demo upstream on a real port.
"""

from __future__ import annotations

import json

import pytest
import treq
from treq.client import HTTPClient
from twisted.internet.defer import maybeDeferred
from twisted.web.http_headers import Headers

from aistack_tts import TTSProxy
from aistack_tts_demo import listen_demo
from support.reactor import reactor

pytestmark = pytest.mark.real_sockets


async def test_treq_over_the_gateways_lean_agent() -> None:
    port = await listen_demo(reactor, first_chunk_delay=0.0, rtf=0.0)
    base = f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
    proxy = TTSProxy(base, reactor=reactor)
    http = HTTPClient(proxy.agent)
    try:
        listed = await http.get(f"{base}/v1/audio/voices")
        assert listed.code == 200
        assert "vivian" in json.loads(await listed.content())["voices"]

        spoken = await http.post(
            f"{base}/v1/audio/speech",
            data=json.dumps(
                {
                    "input": "Hello there.",
                    "response_format": "pcm",
                    "stream": True,
                    "stream_format": "audio",
                }
            ).encode(),
            headers=Headers({b"content-type": [b"application/json"]}),
        )
        assert spoken.code == 200
        chunks: list[bytes] = []
        await treq.collect(spoken, chunks.append)
        assert len(chunks) > 1  # streamed as made, not one buffered body
        assert sum(map(len, chunks)) % 2 == 0  # whole 16-bit samples
    finally:
        await proxy.close()
        await maybeDeferred(port.stopListening)
