"""``POST /v1/audio/speech/batch``: each item checked as a speech request and spoken whole.

Beside ``aistack_tts_demo._generation``, at the same step: a plain function from the body to
the batch's answer (no pacing, no request object).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from ._api_error import APIError, json_object, not_found
from ._encode import CONTENT_TYPES, encode
from ._speech import MODEL_NAME, parse_speech_request, usage
from ._synth import synthesize
from ._voices import VoiceRegistry

#: ``BatchSpeechRequest``: its shared defaults (each item may override them) and its limit.
_BATCH_DEFAULTS = (
    "voice",
    "response_format",
    "speed",
    "task_type",
    "language",
    "instructions",
    "ref_audio",
    "ref_text",
    "max_new_tokens",
)
MAX_BATCH_ITEMS = 32


def speech_batch(raw: bytes, voices: VoiceRegistry, model_name: str = MODEL_NAME) -> Any:
    """``POST /v1/audio/speech/batch``: each item spoken whole, results in order.

    An item that fails its checks is an ``"error"`` result, not a failed batch, as in
    vLLM-Omni; the audio is made at once (no pacing: the batch answers when all are done).
    """
    body = json_object(raw)
    items = body.get("items")
    if not isinstance(items, list) or not items:
        raise APIError("items: List should have at least 1 item after validation", param="items")
    if len(items) > MAX_BATCH_ITEMS:
        raise APIError(
            f"Batch contains {len(items)} items, exceeding the maximum of {MAX_BATCH_ITEMS}."
        )
    model = body.get("model")
    if isinstance(model, str) and model and model != model_name:
        raise not_found(f"The model `{model}` does not exist.", param="model")
    results: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise APIError(f"items.{index}: Input should be a valid dictionary", param="items")
        merged = {k: body[k] for k in _BATCH_DEFAULTS if body.get(k) is not None}
        merged.update({k: v for k, v in item.items() if v is not None})
        merged["stream"] = False
        merged.pop("stream_format", None)
        try:
            speech = parse_speech_request(json.dumps(merged).encode(), voices, model_name)
        except APIError as e:
            results.append({"index": index, "status": "error", "error": e.message})
            continue
        renderer = synthesize(speech.input, speech.voice, speech.speed)
        data = encode(b"".join(renderer.frames()), speech.response_format)
        results.append(
            {
                "index": index,
                "status": "success",
                "audio_data": base64.b64encode(data).decode("ascii"),
                "media_type": CONTENT_TYPES[speech.response_format].decode(),
                "usage": usage(speech, renderer.total_frames),
            }
        )
    succeeded = sum(1 for r in results if r["status"] == "success")
    batch_id = hashlib.sha256(raw).hexdigest()[:32]
    return {
        "id": f"speech-batch-{batch_id}",
        "results": results,
        "total": len(results),
        "succeeded": succeeded,
        "failed": len(results) - succeeded,
    }
