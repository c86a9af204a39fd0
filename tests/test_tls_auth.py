"""TLS with verification on, mutual TLS, and a password read from the environment."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent.app.config import load_config
from agent.app.runtime import Agent
from agent.south.registry import load_drivers
from tests.brokers import Mosquitto
from tests.certs import make_pki
from tests.e2e import until


@pytest.fixture
def tls_broker(tmp_path: Path) -> Mosquitto:
    pki = make_pki(tmp_path / "pki")
    pwfile = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "gw", "s3cret"], check=True)
    broker = Mosquitto(
        tmp_path / "mosquitto",
        extra_conf=(
            f"cafile {pki}/ca.pem\ncertfile {pki}/server.pem\nkeyfile {pki}/server.key\n"
            f"require_certificate true\npassword_file {pwfile}\n"
        ),
        anonymous=False,
    )
    broker.start()
    yield broker  # type: ignore[misc]
    broker.stop()


def _config(tmp_path: Path, port: int, ca: str, password_env: str = "EDGE_TEST_PASS") -> Path:
    pki = tmp_path / "pki"
    doc = {
        "agent": {"id": "tls-gw", "data_dir": str(tmp_path / "data")},
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "username": "gw",
            "password_env": password_env,
            "reconnect_min": "50ms",
            "reconnect_max": "200ms",
            "tls": {
                "ca_file": ca,
                "cert_file": str(pki / "client.pem"),
                "key_file": str(pki / "client.key"),
            },
        },
        "metrics": {"listen": None},
    }
    path = tmp_path / "tls.yaml"
    path.write_text(json.dumps(doc))
    return path


async def _outcome(path: Path, *, expect_refusals: bool) -> tuple[bool, float]:
    """(connected?, failed attempts) once the agent connected, or failed to twice."""
    config = load_config(path, load_drivers(), resolve_secrets=True)
    agent = Agent(config)

    def errors() -> float:
        return agent.metrics.registry.get_sample_value("edge_agent_publish_errors_total") or 0

    await agent.start()
    try:
        if expect_refusals:
            await until(lambda: errors() >= 2, timeout=10)
        else:
            await until(agent.publisher.connected.is_set, timeout=10)
        return agent.publisher.connected.is_set(), errors()
    finally:
        await agent.stop()


async def test_mutual_tls_with_verification_and_env_password(
    tmp_path: Path, tls_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_TEST_PASS", "s3cret")
    path = _config(tmp_path, tls_broker.port, str(tmp_path / "pki" / "ca.pem"))
    ok, errors = await _outcome(path, expect_refusals=False)
    assert ok and errors == 0


async def test_untrusted_broker_certificate_is_refused(
    tmp_path: Path, tls_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_TEST_PASS", "s3cret")
    other = make_pki(tmp_path / "other", ca_name="someone-else")
    path = _config(tmp_path, tls_broker.port, str(other / "ca.pem"))
    ok, errors = await _outcome(path, expect_refusals=True)
    assert not ok and errors >= 2  # verification is on by default: no silent fallback


async def test_wrong_password_is_refused_and_retried(
    tmp_path: Path, tls_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_TEST_PASS", "wrong")
    path = _config(tmp_path, tls_broker.port, str(tmp_path / "pki" / "ca.pem"))
    ok, errors = await _outcome(path, expect_refusals=True)
    assert not ok and errors >= 2  # refused, backed off, tried again
