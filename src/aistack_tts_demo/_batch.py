"""``POST /v1/audio/speech/batch``: each item checked as a speech request and spoken whole.

Beside ``aistack_tts_demo._generation``, at the same step: a plain function from the body to
the batch's answer (no pacing, no request object). Mirrors ``create_speech_batch`` and its
route (``serving_speech.py`` @ 1a48fce52460, ``api_server.py`` @ 005fd8eae138).
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from ._api_error import APIError
from ._encode import CONTENT_TYPES, encode
from ._framework import Endpoint, json_request
from ._speech import MODEL_NAME, check_model, speech_request, usage
from ._speech_models import BatchSpeechRequest
from ._synth import synthesize
from ._voices import VoiceRegistry

#: ``tts_batch_max_items``' default.
MAX_BATCH_ITEMS = 32
#: ``create_speech_batch``'s first decorator in ``api_server.py`` @ 005fd8eae138.
BATCH_ENDPOINT = Endpoint(
    function="create_speech_batch", line=1115, method="POST", path="/v1/audio/speech/batch"
)


def _result(index: int, **fields: Any) -> dict[str, Any]:
    """A ``SpeechBatchItemResult`` as ``model_dump`` gives it: every key, unset ones null."""
    result: dict[str, Any] = {
        "index": index,
        "status": "error",
        "audio_data": None,
        "media_type": None,
        "error": None,
        "usage": None,
    }
    result.update(fields)
    return result


def speech_batch(
    raw: bytes,
    content_type: str | None,
    voices: VoiceRegistry,
    model_name: str = MODEL_NAME,
) -> dict[str, Any]:
    """``POST /v1/audio/speech/batch``: each item spoken whole, results in order.

    A body or an item that fails the schema fails the whole request (FastAPI's 400); an item
    that fails the server's own checks is an ``"error"`` result.
    """
    batch = json_request(BatchSpeechRequest, raw, content_type, BATCH_ENDPOINT)
    if len(batch.items) > MAX_BATCH_ITEMS:
        # A ValueError the route turns into HTTPException(400): vLLM's handler names the
        # status phrase as the type.
        raise APIError(
            f"Batch contains {len(batch.items)} items, exceeding the maximum of {MAX_BATCH_ITEMS}.",
            type="Bad Request",
        )
    check_model(batch.model, model_name)
    results: list[dict[str, Any]] = []
    for index, item in enumerate(batch.items):
        # No "default" voice here: only create_speech maps it to no voice.
        try:
            speech = speech_request(batch.merged(item), voices)
        except APIError as e:
            results.append(_result(index, error=e.message))
            continue
        renderer = synthesize(speech.input, speech.voice, speech.speed)
        frames = min(renderer.total_frames, speech.max_frames)
        pcm = b"".join(frame for _, frame in zip(range(frames), renderer.frames(), strict=False))
        data = encode(pcm, speech.response_format, speech.sample_rate)
        results.append(
            _result(
                index,
                status="success",
                audio_data=base64.b64encode(data).decode("ascii"),
                media_type=CONTENT_TYPES[speech.response_format].decode(),
                usage=usage(speech, frames),
            )
        )
    succeeded = sum(1 for r in results if r["status"] == "success")
    return {
        # vLLM's random_uuid(): 32 hex digits.
        "id": f"speech-batch-{uuid.uuid4().hex}",
        "results": results,
        "total": len(results),
        "succeeded": succeeded,
        "failed": len(results) - succeeded,
    }
