"""WebSocket passthrough and HTTP calls to an https upstream, verified and not.

The demo upstream listens with TLS (a test CA, a server certificate for localhost, made here
with ``cryptography``); the gateway trusts the CA through ``SSL_CERT_FILE``, or does not.
"""

from __future__ import annotations

import datetime
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import deferToThread

from support.reactor import twisted_test, until
from support.websocket import PATIENCE, Stacks, rejection, speech_of, utterance

pytestmark = [pytest.mark.real_sockets]


def tls_files(directory: Path) -> tuple[Path, Any]:
    """A test CA (its PEM file) and the options of a server certificate it signed for localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    from twisted.internet.ssl import PrivateCertificate

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aistack-tts test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    server = PrivateCertificate.loadPEM(key_pem + leaf.public_bytes(serialization.Encoding.PEM))
    return ca_file, server.options()


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@twisted_test
async def test_https_upstream_serves_calls_and_websocket_sessions(
    ws_stacks: Stacks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An https upstream whose certificate verifies (a CA the gateway trusts through
    SSL_CERT_FILE): HTTP calls go over TLS, and so does a WebSocket session, audio and all."""
    ca_file, server = tls_files(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    stack = ws_stacks.demo(tls=server)

    def voices() -> dict[str, Any]:
        url = f"http://127.0.0.1:{stack.port}/v1/audio/voices"
        with urllib.request.urlopen(url, timeout=PATIENCE) as answer:
            assert answer.status == 200
            body: dict[str, Any] = json.loads(answer.read())
            return body

    assert "vivian" in (await deferToThread(voices))["voices"]
    heard = await deferToThread(utterance, stack.url(), ["Hello over TLS."])
    assert heard.audio[0] == speech_of("Hello over TLS.")
    assert heard.events[-1]["type"] == "session.done"
    await until(lambda: stack.slot_free, "the slot to come back", timeout=PATIENCE)


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@twisted_test
async def test_https_upstream_whose_certificate_does_not_verify_gets_an_envelope(
    ws_stacks: Stacks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate from a CA the gateway does not trust: never a connection to it; the
    client gets the gateway's envelope (HTTP call and WebSocket handshake alike)."""
    _, server = tls_files(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    stack = ws_stacks.demo(tls=server)

    def voices() -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{stack.port}/v1/audio/voices"
        try:
            urllib.request.urlopen(url, timeout=PATIENCE).close()
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
        raise AssertionError("the call was served by an upstream that did not verify")

    status, body = await deferToThread(voices)
    assert status == 502, body
    assert (body["error"]["type"], body["error"]["provider"]) == ("upstream_error", "qwen3-tts")
    assert "certificate verify failed" in body["error"]["message"]
    refused = await deferToThread(rejection, stack.url())
    assert refused.response.status_code == status
    await until(lambda: stack.slot_free, "the slot to come back", timeout=PATIENCE)
