"""compose.yaml and the Dockerfile agree with the gateway's defaults and its 503 hint.

Docker cannot run here, so the deployment files are checked as data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from aistack_tts._config import DEFAULT_UPSTREAM
from aistack_tts._errors import COMPOSE_HINT

ROOT = Path(__file__).resolve().parent.parent
MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_vllm_omni_serves_the_model_on_the_default_upstream_port() -> None:
    """The TTS service runs vLLM-Omni on the port the gateway uses by default, with a GPU."""
    service = compose()["services"]["qwen3-tts"]
    command = service["command"]
    assert command[:3] == ["vllm", "serve", MODEL]
    assert "--omni" in command
    port = command[command.index("--port") + 1]
    assert int(port) == urlsplit(DEFAULT_UPSTREAM).port == 8091
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert f":{port}/health" in " ".join(service["healthcheck"]["test"])


def test_the_image_is_a_pinned_release_and_its_cache_is_the_volume() -> None:
    """A release tag (not latest or a nightly), and the model cache inside the volume."""
    service = compose()["services"]["qwen3-tts"]
    name, _, tag = service["image"].partition(":")
    assert name == "vllm/vllm-omni"
    assert tag.startswith("v"), tag
    assert tag[1:].replace(".", "").isdigit(), tag
    cache = service["environment"]["HF_HOME"]
    assert any(volume.split(":")[1] == cache for volume in service["volumes"])


def test_gateway_points_at_the_tts_service() -> None:
    """The gateway's upstream names the TTS service and its port; it waits for it to be healthy."""
    services = compose()["services"]
    gateway = services["aistack-tts"]
    upstream = urlsplit(gateway["environment"]["AISTACK_TTS_UPSTREAM"])
    assert upstream.hostname in services
    tts_command = services[upstream.hostname]["command"]
    assert str(upstream.port) == tts_command[tts_command.index("--port") + 1]
    assert gateway["depends_on"][upstream.hostname]["condition"] == "service_healthy"
    listen = gateway["environment"]["AISTACK_TTS_LISTEN"]
    assert listen == "tcp:8000:interface=0.0.0.0"
    assert gateway["ports"] == ["127.0.0.1:8000:8000"]


def test_unavailable_hint_matches_the_compose_stack() -> None:
    """The 503 upstream_unavailable message tells the operator the command and the model."""
    assert "docker compose up -d" in COMPOSE_HINT
    assert MODEL in COMPOSE_HINT
    assert "docker compose up -d" in (ROOT / "compose.yaml").read_text()


def test_dockerfile_runs_the_twist_plugin() -> None:
    """The image installs the package (with its plugin) and runs `twist aistack-tts`."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY twisted ./twisted" in dockerfile
    assert 'CMD ["twist", "aistack-tts"]' in dockerfile
    assert "EXPOSE 8000" in dockerfile
