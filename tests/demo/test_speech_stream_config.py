"""The WebSocket session's ``session.config`` as vLLM-Omni's pydantic model has it, and its events.

Fidelity tests: each cites the real source (vllm-project/vllm-omni unless said otherwise) it
follows. ``AUDIO`` is ``vllm_omni/entrypoints/openai/protocol/audio.py`` and ``HANDLER``
``vllm_omni/entrypoints/openai/serving_speech_stream.py``, both @ 0131cb556045.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from pydantic.version import version_short

import aistack_tts_demo
from aistack_tts_demo._encode import encode
from aistack_tts_demo._stream_config import parse_stream_config
from aistack_tts_demo._synth import synthesize
from support.demo import run_generation
from support.demo_ws import StreamWire

MODEL = aistack_tts_demo.MODEL_NAME


def more(kind: str) -> str:
    """The last line of each error in ``str(ValidationError)``, for this pydantic."""
    return (
        f"    For further information visit https://errors.pydantic.dev/{version_short()}/v/{kind}"
    )


def closed_after_error(wire: StreamWire) -> str:
    """The one error event the session sent before its close (1000); its message."""
    [(op1, error), (op2, close)] = wire.frames()
    assert (op1, op2, close[:2]) == (0x1, 0x8, struct.pack("!H", 1000))
    event = json.loads(error)
    assert list(event) == ["type", "message"]
    assert event["type"] == "error"
    message: str = event["message"]
    return message


def spoken(wire: StreamWire, text: str) -> list[dict[str, Any]]:
    """Speak ``text`` as one utterance; the events that came of it."""
    wire.event(type="input.text", text=text)
    wire.event(type="input.done")
    run_generation(wire.clock)
    return wire.events()


# HANDLER _build_config: f"Invalid session config: {e}" of the whole ValidationError (every
# error, pydantic's own str); AUDIO StreamingSpeechSessionConfig: the fields' order, bounds,
# Literals, the voice/speaker aliases and validate_streaming_constraints.
@pytest.mark.parametrize(
    ("config", "errors"),
    [
        (
            {"split_granularity": "word", "speed": 9},
            "2 validation errors for StreamingSpeechSessionConfig\n"
            "speed\n"
            "  Input should be less than or equal to 4 "
            "[type=less_than_equal, input_value=9, input_type=int]\n"
            f"{more('less_than_equal')}\n"
            "split_granularity\n"
            "  Input should be 'none', 'sentence' or 'clause' "
            "[type=literal_error, input_value='word', input_type=str]\n"
            f"{more('literal_error')}",
        ),
        (
            {"speaker": 5},
            "1 validation error for StreamingSpeechSessionConfig\n"
            "speaker\n"
            "  Input should be a valid string [type=string_type, input_value=5, input_type=int]\n"
            f"{more('string_type')}",
        ),
        (
            {"stream_audio": True},
            "1 validation error for StreamingSpeechSessionConfig\n"
            "  Value error, WebSocket streaming audio (stream_audio=true) requires "
            "response_format='pcm'. Got response_format='wav'. "
            "[type=value_error, input_value={'stream_audio': True}, input_type=dict]\n"
            f"{more('value_error')}",
        ),
        (
            {"seed": 2**63, "max_new_tokens": 0},
            "2 validation errors for StreamingSpeechSessionConfig\n"
            "max_new_tokens\n"
            "  Input should be greater than or equal to 1 "
            "[type=greater_than_equal, input_value=0, input_type=int]\n"
            f"{more('greater_than_equal')}\n"
            "seed\n"
            "  Input should be less than or equal to 9223372036854775807 "
            "[type=less_than_equal, input_value=9223372036854775808, input_type=int]\n"
            f"{more('less_than_equal')}",
        ),
    ],
)
def test_refused_config_is_pydantics_whole_validation_error(
    config: dict[str, Any], errors: str
) -> None:
    wire = StreamWire()
    wire.event(type="session.config", **config)
    assert closed_after_error(wire) == f"Invalid session config: {errors}"


def test_config_is_validated_in_lax_mode() -> None:
    """Strings for numbers and booleans, a whole float for an int, ``speaker`` for ``voice``:
    pydantic's lax mode takes them (AUDIO StreamingSpeechSessionConfig, built with ``**`` by
    HANDLER _build_config), and the utterance is spoken as asked."""
    wire = StreamWire()
    wire.event(
        type="session.config",
        speaker="Ryan",
        speed="1.5",
        stream_audio="false",
        word_timestamps="no",
        non_streaming_mode=1,
        seed="7",
        max_new_tokens=5.0,
        initial_codec_chunk_frames="0",
        unknown_field=[1],
    )
    events = spoken(wire, "Hello.")
    assert [e["type"] for e in events] == ["audio.start", "audio.done", "session.done"]
    ryan = aistack_tts_demo.VoiceRegistry().get("ryan")
    assert ryan is not None
    [audio] = wire.audio()
    assert audio == encode(b"".join(synthesize("Hello.", ryan, 1.5).frames()), "wav")
    # Lax for every field; x_vector_only_mode itself is then refused at generation on this
    # checkpoint (the adapter's "only valid for Base task"), so it is checked as parsed.
    lax = parse_stream_config({"type": "session.config", "x_vector_only_mode": "off"}, MODEL)
    assert lax.x_vector_only_mode is False


def test_config_fields_as_the_session_keeps_them() -> None:
    """AUDIO StreamingSpeechSessionConfig: the defaults, ``voice`` before ``speaker``, a null
    speed made 1.0 by validate_streaming_constraints when streaming, the embedding as floats."""
    config = parse_stream_config({"type": "session.config"}, MODEL)
    assert (config.response_format, config.speed, config.split_granularity) == ("wav", 1.0, "none")
    assert (config.stream_audio, config.word_timestamps, config.voice) == (False, False, None)
    config = parse_stream_config(
        {
            "voice": "Vivian",
            "speaker": "Ryan",
            "response_format": "pcm",
            "stream_audio": True,
            "speed": None,
            "speaker_embedding": [1, "0.5"],
        },
        MODEL,
    )
    assert (config.voice, config.speed, config.speaker_embedding) == ("Vivian", 1.0, [1.0, 0.5])
    assert parse_stream_config({"speed": None}, MODEL).speed is None


def test_utterance_request_carries_the_sessions_fields() -> None:
    """HANDLER _generate_and_send builds OpenAICreateSpeechRequest of the config's fields
    (``stream`` from ``stream_audio``); the demo's body leaves out those that are null."""
    config = parse_stream_config(
        {"voice": "Ryan", "language": "English", "seed": 3, "max_new_tokens": 100}, MODEL
    )
    assert config.speech_fields("Hi.") == {
        "input": "Hi.",
        "voice": "Ryan",
        "language": "English",
        "response_format": "wav",
        "speed": 1.0,
        "max_new_tokens": 100,
        "stream": False,
        "word_timestamps": False,
        "seed": 3,
    }


def test_unknown_model_is_the_str_of_vllms_error_response() -> None:
    """HANDLER _build_config sends ``str(error)`` of _check_model's ErrorResponse: pydantic's
    repr of ErrorInfo (message, type, param, code: vllm-project/vllm
    vllm/entrypoints/openai/engine/protocol.py @ 040a2cc2a629), quotes and all."""
    wire = StreamWire()
    wire.event(type="session.config", model="tts'1")
    assert closed_after_error(wire) == (
        'error=ErrorInfo(message="The model `tts\'1` does not exist.", '
        "type='NotFoundError', param='model', code=404)"
    )


def test_later_refused_config_keeps_the_previous_one() -> None:
    """HANDLER handle_session: a refused config after the first is an error and the session
    goes on with the config it had ("Keep serving with the previous config")."""
    wire = StreamWire()
    wire.event(type="session.config", voice="Ryan", response_format="flac")
    wire.event(type="session.config", response_format="aac")
    [error] = wire.events()
    assert error["message"].startswith(
        "Invalid session config: 1 validation error for StreamingSpeechSessionConfig\n"
        "response_format\n  Input should be 'wav', 'pcm', 'flac', 'mp3' or 'opus' "
    )
    _error, start, _done, _session_done = spoken(wire, "Still flac.")
    assert start["format"] == "flac"


# HANDLER _generate_and_send builds the OpenAICreateSpeechRequest before its try, so its
# ValidationError reaches handle_session's catch-all: f"Internal error: {e}", and the handler
# returns (the close). AUDIO OpenAICreateSpeechRequest: validate_speaker_embedding (a field
# error, so the model validators do not run) and validate_embedding_constraints.
@pytest.mark.parametrize(
    ("config", "errors"),
    [
        (
            {"speaker_embedding": [0.5, float("nan")], "ref_audio": "data:audio/wav;base64,"},
            "1 validation error for OpenAICreateSpeechRequest\n"
            "speaker_embedding\n"
            "  Value error, 'speaker_embedding' values must be finite (no NaN or Inf) "
            "[type=value_error, input_value=[0.5, nan], input_type=list]\n"
            f"{more('value_error')}",
        ),
        (
            {"speaker_embedding": [0.5], "ref_audio": "data:audio/wav;base64,"},
            "1 validation error for OpenAICreateSpeechRequest\n"
            "  Value error, 'speaker_embedding' and 'ref_audio' are mutually exclusive "
            "[type=value_error, input_value={'input': 'Hi.', 'model':...s': False, "
            "'seed': None}, input_type=dict]\n"
            f"{more('value_error')}",
        ),
    ],
)
def test_speech_request_refused_as_built_is_an_internal_error_then_the_close(
    config: dict[str, Any], errors: str
) -> None:
    wire = StreamWire()
    wire.event(type="session.config", **config)
    assert wire.frames() == [], "the config itself is valid"
    wire.event(type="input.text", text="Hi.")
    wire.event(type="input.done")
    run_generation(wire.clock)
    assert closed_after_error(wire) == f"Internal error: {errors}"


def test_word_timestamps_as_a_string_is_refused_at_generation() -> None:
    """``"yes"`` is true to pydantic; HANDLER _generate_and_send then refuses it as a server
    without --forced-aligner does: an error, no audio.start/audio.done, the sentence counted."""
    wire = StreamWire()
    wire.event(type="session.config", word_timestamps="yes")
    error, done = spoken(wire, "Hi.")
    assert error["message"].startswith("word_timestamps=true but the server was launched without")
    assert done == {"type": "session.done", "utterance_index": 0, "total_sentences": 1}


def test_events_are_compact_json_with_text_as_it_is() -> None:
    """The handler sends events with Starlette's ``send_json``: ``json.dumps(data,
    separators=(",", ":"), ensure_ascii=False)`` (encode/starlette starlette/websockets.py @
    00380efc1a60, as Kludex/starlette); keys in HANDLER _generate_and_send's order."""
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian")
    spoken(wire, "你好。")
    texts = [payload for opcode, payload in wire.frames() if opcode == 0x1]
    assert (
        texts[0]
        == (
            '{"type":"audio.start","utterance_index":0,"sentence_index":0,'
            '"sentence_text":"你好。","format":"wav"}'
        ).encode()
    )
    assert texts[1].startswith(b'{"type":"audio.done","utterance_index":0,"sentence_index":0,')
    assert texts[2] == b'{"type":"session.done","utterance_index":0,"total_sentences":1}'
