"""The demo's ``/v1/audio/voices`` routes, held to vLLM-Omni's (fidelity tests).

Sources: ``vllm_omni/entrypoints/openai/api_server.py`` @ 005fd8eae138 (routes ``list_voices``,
``upload_voice``, ``delete_voice``), ``serving_speech.py`` @ 01bc4171df2a (``upload_voice``,
``upload_voice_embedding``, ``delete_voice``, ``_validate_speaker_name``,
``_next_upload_timestamp``, ``_check_upload_cap``), FastAPI 0.165 / Starlette 1.10 for the form;
the form-layer answers were checked side by side against a FastAPI app with the real signature.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from aistack_tts_demo import VOICES, DemoUpstream
from aistack_tts_demo._voice_upload import MAX_VOICE_SAMPLE_BYTES
from support.demo import BOUNDARY, MULTIPART, TEXT, silent_wav

NOW = 1_700_000_000
Part = tuple[str, bytes] | tuple[str, bytes, str, str | None]
SITE = "/usr/local/lib/python3.12/dist-packages/vllm_omni/entrypoints/openai/api_server.py"
#: FastAPI's endpoint context: upload_voice's first decorator is line 1238 of api_server.py
#: @ 005fd8eae138 (not wrapped by with_cancellation, so the file is vllm_omni's own).
WHERE = f'\n\n  File "{SITE}", line 1238, in upload_voice\n    POST /v1/audio/voices'
ALLOWED = (
    "{'audio/mpeg', 'audio/wav', 'audio/x-wav', 'audio/ogg', 'audio/aac', 'audio/flac', "
    "'audio/webm', 'audio/mp4'}"
)


def form(*parts: Part) -> bytes:
    """A multipart body: ``(name, value)`` text parts, ``(name, data, filename, type)`` files."""
    out = b""
    for part in parts:
        disposition = f'Content-Disposition: form-data; name="{part[0]}"'
        if len(part) == 2:
            head = disposition + "\r\n"
        else:
            head = disposition + f'; filename="{part[2]}"\r\n'
            if part[3] is not None:
                head += f"Content-Type: {part[3]}\r\n"
        out += f"--{BOUNDARY}\r\n{head}\r\n".encode() + part[1] + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def sample(data: bytes, filename: str = "me.wav", content_type: str | None = "audio/wav") -> Part:
    return ("audio_sample", data, filename, content_type)


def voice_form(name: str = "my_voice", *extra: Part, audio: Part | None = None) -> bytes:
    audio = sample(silent_wav(1.5)) if audio is None else audio
    return form(("name", name.encode()), ("consent", b"consent-1"), *extra, audio)


class Voices:
    """The demo's own Site (multipart left to the route, as ``site()`` serves it), one
    keep-alive connection; the clock at ``NOW``."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)  # before the connection, whose idle timeout runs on it
        site = DemoUpstream(reactor=self.clock).site()
        self.protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        assert self.protocol is not None
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None
    ) -> tuple[int, str | None, bytes]:
        self.transport.clear()
        head = f"{method} {path} HTTP/1.1\r\nHost: demo\r\nContent-Length: {len(body)}\r\n"
        if content_type is not None:
            head += f"Content-Type: {content_type}\r\n"
        self.protocol.dataReceived(head.encode() + b"\r\n" + body)
        raw_head, _, payload = self.transport.value().partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        assert int(headers["content-length"]) == len(payload)
        return int(lines[0].split()[1]), headers.get("content-type"), payload

    def upload(self, body: bytes, content_type: str | None = MULTIPART) -> tuple[int, Any]:
        status, media_type, raw = self.request("POST", "/v1/audio/voices", body, content_type)
        assert media_type == "application/json"
        return status, json.loads(raw)

    def listing(self) -> dict[str, Any]:
        status, _, raw = self.request("GET", "/v1/audio/voices")
        assert status == 200
        listed: dict[str, Any] = json.loads(raw)
        return listed


def refused(demo: Voices, body: bytes) -> str:
    """The route's own refusal: vLLM's ErrorResponse as a JSONResponse with its code, 400."""
    status, answer = demo.upload(body)
    # vllm_omni/entrypoints/openai/api_server.py (the stored copies with
    # _create_speech_error_json_response): the upload route's ValueError is answered with
    # _error_response_to_json_response, status = the error's code.
    assert status == 400, answer
    assert set(answer) == {"error"}
    error = answer["error"]
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", None, 400)
    message: str = error["message"]
    return message


# --- listing, upload, delete ---------------------------------------------------------------


def test_listing_without_uploads() -> None:
    # api_server.py list_voices: {"voices": sorted(supported_speakers), "uploaded_voices": []}
    # as Starlette's compact JSONResponse.
    status, media_type, raw = Voices().request("GET", "/v1/audio/voices")
    assert (status, media_type) == (200, "application/json")
    names = sorted(v.lower() for v in VOICES)
    assert (
        raw == json.dumps({"voices": names, "uploaded_voices": []}, separators=(",", ":")).encode()
    )


def test_upload_answer_and_listing_entry() -> None:
    # serving_speech.py upload_voice: the answer's voice is name, consent, created_at,
    # mime_type, file_size, then ref_text/speaker_description when set (stripped);
    # api_server.py list_voices lists name, consent, created_at, file_size, mime_type,
    # embedding_source ("audio"), embedding_dim (None for a sample), then the texts.
    demo = Voices()
    data = silent_wav(1.2)
    body = voice_form(
        " My_Voice ",
        ("ref_text", b"  The words. "),
        ("speaker_description", b" "),
        audio=sample(data),
    )
    status, answer = demo.upload(body)
    assert status == 200
    uploaded = {"name": "My_Voice", "consent": "consent-1", "created_at": NOW}
    assert list(answer["voice"].items()) == list(
        {
            **uploaded,
            "mime_type": "audio/wav",
            "file_size": len(data),
            "ref_text": "The words.",
        }.items()
    )
    assert answer == {"success": True, "voice": answer["voice"]}
    listed = demo.listing()
    assert "my_voice" in listed["voices"]
    assert [list(entry.items()) for entry in listed["uploaded_voices"]] == [
        list(
            {
                **uploaded,
                "file_size": len(data),
                "mime_type": "audio/wav",
                "embedding_source": "audio",
                "embedding_dim": None,
                "ref_text": "The words.",
            }.items()
        )
    ]


def test_uploaded_voice_is_refused_by_the_customvoice_checkpoint_then_deleted() -> None:
    # api_server.py delete_voice: 200 {"success", "message"}; unknown: 404
    # {"success": false, "error": "Voice '<name>' not found"}; names match in lower case.
    demo = Voices()
    assert demo.upload(voice_form("My_Voice"))[0] == 200
    speech = json.dumps({"input": TEXT, "voice": "MY_VOICE"}).encode()
    status, _, raw = demo.request("POST", "/v1/audio/speech", speech, "application/json")
    assert status == 400
    assert json.loads(raw)["error"]["message"].startswith(
        "Qwen3-TTS CustomVoice checkpoint does not support task_type='Base'."
    )
    status, _, raw = demo.request("DELETE", "/v1/audio/voices/MY_VOICE")
    assert (status, json.loads(raw)) == (
        200,
        {"success": True, "message": "Voice 'MY_VOICE' deleted successfully"},
    )
    assert demo.listing()["uploaded_voices"] == []
    status, _, raw = demo.request("DELETE", "/v1/audio/voices/My_Voice")
    assert (status, raw) == (
        404,
        b'{"success":false,"error":"Voice \'My_Voice\' not found"}',
    )


def test_created_at_is_monotonic() -> None:
    # serving_speech.py _next_upload_timestamp: max(int(time.time()), last + 1).
    demo = Voices()
    stamps = [demo.upload(voice_form(f"v{i}"))[1]["voice"]["created_at"] for i in range(3)]
    demo.clock.advance(10)
    stamps.append(demo.upload(voice_form("later"))[1]["voice"]["created_at"])
    assert stamps == [NOW, NOW + 1, NOW + 2, NOW + 10]


def test_a_reupload_replaces_and_moves_to_the_end() -> None:
    # serving_speech.py _evict_existing_upload pops the old entry; the new one is added last.
    demo = Voices()
    for name in ("first", "second"):
        assert demo.upload(voice_form(name))[0] == 200
    assert demo.upload(voice_form("FIRST", ("ref_text", b"Hi.")))[0] == 200
    entries = demo.listing()["uploaded_voices"]
    assert [(e["name"], e.get("ref_text")) for e in entries] == [("second", None), ("FIRST", "Hi.")]


def test_a_failed_reupload_leaves_no_voice() -> None:
    # serving_speech.py upload_voice: the old upload is evicted (and a timestamp taken) under the
    # lock before the sample is decoded, so a re-upload that fails loses the voice.
    demo = Voices()
    assert demo.upload(voice_form("keep"))[0] == 200
    assert refused(demo, voice_form("keep", audio=sample(silent_wav(0.5)))).startswith(
        "Reference audio too short"
    )
    assert demo.listing()["uploaded_voices"] == []
    assert demo.upload(voice_form("keep"))[1]["voice"]["created_at"] == NOW + 2


def test_upload_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # serving_speech.py _check_upload_cap (SPEAKER_MAX_UPLOADED, default 1000), after eviction.
    monkeypatch.setattr("aistack_tts_demo._voices.MAX_UPLOADED_VOICES", 2)
    demo = Voices()
    for name in ("a", "b", "A"):
        assert demo.upload(voice_form(name))[0] == 200
    assert refused(demo, voice_form("c")) == (
        "Uploaded voice limit reached (2). Delete an existing voice before registering a new "
        "one, or raise the cap via SPEAKER_MAX_UPLOADED."
    )


# --- the route's refusals ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["  ", ".", " .. ", "a/b", "a\\b", "a\x00b"])
def test_invalid_names(name: str) -> None:
    # serving_speech.py _validate_speaker_name, with the name as sent (repr, untrimmed).
    assert refused(Voices(), voice_form(name)) == (
        f"Invalid voice name {name!r}: must be non-empty, no path separators or NUL"
    )


@pytest.mark.parametrize(
    ("filename", "content_type", "listed_as"),
    [
        ("me.wav", "audio/x-wav", "audio/x-wav"),
        ("me.MP3", "application/octet-stream", "audio/mpeg"),
        ("me.bin", "application/octet-stream", "audio/wav"),
        ("", "audio/flac", "audio/flac"),
    ],
)
def test_mime_types_accepted(filename: str, content_type: str, listed_as: str) -> None:
    # serving_speech.py upload_voice: the part's content type, or by the file name's ending
    # for application/octet-stream (else audio/wav); the audio is decoded by its content.
    answer = Voices().upload(voice_form(audio=sample(silent_wav(1.5), filename, content_type)))
    assert answer[1]["voice"]["mime_type"] == listed_as


@pytest.mark.parametrize(
    "content_type", ["audio/wave", "Audio/WAV", "audio/wav; codecs=1", "text/plain", None]
)
def test_mime_types_refused(content_type: str | None) -> None:
    # serving_speech.py upload_voice: allowed_mime_types compared with the header as sent (a
    # part without one is None); the message prints the set (here in its literal's order).
    message = refused(Voices(), voice_form(audio=sample(silent_wav(1.5), "me.wav", content_type)))
    assert message == f"Unsupported MIME type: {content_type}. Allowed: {ALLOWED}"


def test_sample_size_limit() -> None:
    # serving_speech.py upload_voice: MAX_FILE_SIZE 10 MB, checked before the MIME type.
    exact = silent_wav(20)
    exact += bytes(MAX_VOICE_SAMPLE_BYTES - len(exact))
    demo = Voices()
    assert demo.upload(voice_form("big", audio=sample(exact)))[1]["voice"]["file_size"] == len(
        exact
    )
    message = refused(demo, voice_form("bigger", audio=sample(exact + b"x", "a.txt", "text/plain")))
    assert message == f"File size exceeds maximum limit of 10MB. Got {len(exact) + 1} bytes."


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"abc", "Could not decode audio file: Error opening <_io.BytesIO object>: "),
        (
            silent_wav(0.5),
            "Reference audio too short (0.5s). At least 1s of clear speech is required.",
        ),
        (
            silent_wav(31),
            "Reference audio too long (31.0s). Maximum 30s supported \u2014 use a shorter clip.",
        ),
    ],
)
def test_sample_must_decode_and_last_1_to_30_seconds(data: bytes, says: str) -> None:
    # serving_speech.py upload_voice (_REF_AUDIO_MIN/MAX_DURATION); create_error_response's
    # sanitize_message drops the object's address from libsndfile's message.
    assert refused(Voices(), voice_form(audio=sample(data))).startswith(says)


def test_audio_and_embedding_together_or_neither() -> None:
    # api_server.py upload_voice: checked before either upload; an empty form value is none.
    demo = Voices()
    both = voice_form("x", ("speaker_embedding", b"[1.0]"))
    assert refused(demo, both) == "'audio_sample' and 'speaker_embedding' are mutually exclusive"
    neither = form(("name", b"x"), ("consent", b"c"), ("speaker_embedding", b""))
    assert refused(demo, neither) == "Either 'audio_sample' or 'speaker_embedding' must be provided"


# --- speaker embeddings --------------------------------------------------------------------


def embedding_form(values: Any, name: str = "emb", *extra: Part) -> bytes:
    text = values if isinstance(values, str) else json.dumps(values)
    return form(
        ("name", name.encode()), ("consent", b"c1"), ("speaker_embedding", text.encode()), *extra
    )


def test_embedding_upload_is_stored_and_listed() -> None:
    # serving_speech.py upload_voice_embedding: answer name, consent, created_at,
    # embedding_source "direct", embedding_dim; stored as a safetensors file whose size is
    # listed, mime_type application/x-safetensors; ref_text is not taken.
    demo = Voices()
    status, answer = demo.upload(embedding_form([0.5] * 1024, "emb", ("ref_text", b"Hi.")))
    assert (status, answer) == (
        200,
        {
            "success": True,
            "voice": {
                "name": "emb",
                "consent": "c1",
                "created_at": NOW,
                "embedding_source": "direct",
                "embedding_dim": 1024,
            },
        },
    )
    # The safetensors format: 8-byte length, the JSON header padded with spaces to 8, the data.
    header = (
        '{"__metadata__":{"name":"emb","voice_name_lower":"emb","consent":"c1",'
        f'"created_at":"{NOW}","mime_type":"application/x-safetensors",'
        f'"original_filename":"emb_c1_{NOW}.safetensors","embedding_source":"direct",'
        '"embedding_dim":"1024"},"speaker_embedding":{"dtype":"F32","shape":[1024],'
        '"data_offsets":[0,4096]}}'
    )
    size = 8 + -(-len(header) // 8) * 8 + 4096
    assert demo.listing()["uploaded_voices"] == [
        {
            "name": "emb",
            "consent": "c1",
            "created_at": NOW,
            "file_size": size,
            "mime_type": "application/x-safetensors",
            "embedding_source": "direct",
            "embedding_dim": 1024,
        }
    ]


@pytest.mark.parametrize(
    ("values", "says"),
    [
        (
            "[1,",
            "'speaker_embedding' must be valid JSON: Expecting value: line 1 column 4 (char 3)",
        ),
        ([], "'speaker_embedding' must be a non-empty list of numbers"),
        ({"a": 1}, "'speaker_embedding' must be a non-empty list of numbers"),
        ([0.1] * 4097, "'speaker_embedding' exceeds maximum length (4096 elements)"),
        ([0.1, "x"], "'speaker_embedding' must contain only numeric values"),
        ("[0.1, NaN]", "'speaker_embedding' values must be finite (no NaN or Inf)"),
        ("[1e999]", "'speaker_embedding' values must be finite (no NaN or Inf)"),
        ("[" + "9" * 400 + "]", "Failed to upload voice: int too large to convert to float"),
        (
            [0.1] * 2048,
            "speaker_embedding has 2048 dimensions; expected 1024 for the loaded Qwen3-TTS model",
        ),
        (
            [True] * 3,
            "speaker_embedding has 3 dimensions; expected 1024 for the loaded Qwen3-TTS model",
        ),
    ],
)
def test_embedding_refusals(values: Any, says: str) -> None:
    # serving_speech.py upload_voice_embedding's checks, in order; Python's json (NaN accepted,
    # then refused) and isinstance (booleans are numbers); a huge integer overflows
    # math.isfinite, which the route's `except Exception` words as "Failed to upload voice".
    assert refused(Voices(), embedding_form(values)) == says


# --- FastAPI's form handling ---------------------------------------------------------------


def framework_refusal(demo: Voices, body: bytes, content_type: str | None = MULTIPART) -> str:
    status, answer = demo.upload(body, content_type)
    assert status == 400
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("Bad Request", None, 400)
    message: str = error["message"]
    return message


def validation_message(*entries: str) -> str:
    count = len(entries)
    lines = "".join(f"  {entry}\n" for entry in entries)
    head = f"{count} validation error{'s' if count > 1 else ''}:\n{lines}".rstrip("\n")
    return f"{head}{WHERE} [{', '.join(entries)}]"


def missing(name: str) -> str:
    return (
        f"{{'type': 'missing', 'loc': ('body', '{name}'), 'msg': 'Field required', 'input': None}}"
    )


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (form(("other", b"x")), MULTIPART),
        (b'{"name": "x", "consent": "c"}', "application/json"),
        (b"", MULTIPART),
        (form(("name", b""), ("consent", b"")), MULTIPART),
    ],
    ids=["no-fields", "json", "empty", "empty-values"],
)
def test_missing_fields(body: bytes, content_type: str) -> None:
    # FastAPI: consent and name are Form(...); a body that is not a form is an empty form, an
    # empty value is no value; errors in parameter order, then vLLM's validation handler.
    message = framework_refusal(Voices(), body, content_type)
    assert message == validation_message(missing("consent"), missing("name"))


def test_wrong_kinds_of_part() -> None:
    # FastAPI: text where the UploadFile is due (fastapi/datastructures.py UploadFile._validate);
    # a file where text is due is pydantic's string_type, the UploadFile as its input.
    body = form(("audio_sample", b"abc"), ("name", b"x", "n.txt", None), ("consent", b"c"))
    entries = (
        "{'type': 'value_error', 'loc': ('body', 'audio_sample'), 'msg': \"Value error, Expected "
        "UploadFile, received: <class 'str'>\", 'input': 'abc', 'ctx': {'error': "
        "ValueError(\"Expected UploadFile, received: <class 'str'>\")}}",
        "{'type': 'string_type', 'loc': ('body', 'name'), 'msg': 'Input should be a valid "
        "string', 'input': UploadFile(filename='n.txt', size=1, headers=Headers({'content-"
        'disposition\': \'form-data; name="name"; filename="n.txt"\'}))}',
    )
    assert framework_refusal(Voices(), body) == validation_message(*entries)


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (form(("name", b"x")), "multipart/form-data", "Missing boundary in multipart."),
        (b"garbage", MULTIPART, "Invalid multipart data."),
        (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
            MULTIPART,
            'The Content-Disposition header field "name" must be provided.',
        ),
        (
            form(("name", b"x" * (1024 * 1024 + 1))),
            MULTIPART,
            "Part exceeded maximum size of 1024KB.",
        ),
    ],
)
def test_bodies_starlette_cannot_parse(body: bytes, content_type: str, says: str) -> None:
    # starlette/formparsers.py MultiPartParser: MultiPartException -> HTTPException(400),
    # answered by vLLM's http_exception_handler with the status phrase as the type.
    assert framework_refusal(Voices(), body, content_type) == says


def test_last_value_wins_and_a_truncated_part_is_dropped() -> None:
    # Starlette FormData.get: the last value of a name; a part the body ends inside is not kept.
    body = voice_form("first", ("name", b"second"))
    assert Voices().upload(body)[1]["voice"]["name"] == "second"
    truncated = form(("consent", b"c"), ("name", b"x"))[: -len(f"--{BOUNDARY}--\r\n") - 2]
    assert framework_refusal(Voices(), truncated) == validation_message(missing("name"))


def test_a_body_past_the_demo_guard_is_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo's own limit (64 MiB): answered as a sample over 10 MB, sized by the body.
    monkeypatch.setattr("aistack_tts_demo._app.MAX_UPLOAD_BODY", 100)
    body = b"x" * 101
    assert refused(Voices(), body) == "File size exceeds maximum limit of 10MB. Got 101 bytes."
