"""Shared pieces of the OPC UA tests: certificates, device entries, a driver harness, the CLI.

Named ``test_opcua_*`` to live beside the tests that use it; the one test here checks the
certificates it makes are what OPC UA needs (the application URI in the SAN).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.base import Reading
from drivers.opcua.driver import OpcuaDriver
from simulators.opcua_cnc import APP_URI, POINTS, Point

CLIENT_URI = "urn:edge-agent:gateway"
EDGE_AGENT = str(Path(sys.executable).with_name("edge-agent"))


@dataclass(frozen=True)
class Pki:
    """The files of both sides: the server's pair, the agent's pair, and a stranger's pair
    (valid, but trusted by nobody)."""

    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


async def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    files = {}
    for who, uri, use in (
        ("server", APP_URI, ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", CLIENT_URI, ExtendedKeyUsageOID.CLIENT_AUTH),
        ("stranger", CLIENT_URI, ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        cert, key = folder / f"{who}.der", folder / f"{who}.pem"
        await setup_self_signed_certificate(
            key, cert, uri, host, [use], {"organizationName": "edge-agent test"}
        )
        files[f"{who}_cert"], files[f"{who}_key"] = cert, key
    return Pki(**files)


def tag_name(point: Point) -> str:
    return point.path.replace("/", "_").lower()


def every_type_tags() -> list[dict[str, Any]]:
    """Every readable point of the simulator, by namespace URI."""
    return [{"name": tag_name(p), "node": p.node_string} for p in POINTS.values() if p.readable]


def device(endpoint: str, tags: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A device entry for the simulator (anonymous, no security unless ``extra`` says)."""
    connection = {"endpoint": endpoint, "timeout": "2s", "keepalive": "500ms"}
    connection.update(extra.pop("connection", {}))
    return {"name": "lathe-3", "driver": "opcua", "connection": connection, "tags": tags, **extra}


async def first_readings(driver: OpcuaDriver) -> list[Reading]:
    """Connect, poll as the agent does until a poll hands readings (a subscription's first
    values take a publishing interval), close."""
    await driver.connect()
    try:
        async with asyncio.timeout(5):
            while not (readings := await driver.poll()):  # noqa: ASYNC110 - polls as the agent
                await asyncio.sleep(0.1)
    finally:
        await driver.close()
    return readings


async def edge_agent(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """``edge-agent ARGS`` as an installed command: its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        EDGE_AGENT,
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_certificates_carry_the_application_uri(tmp_path: Path) -> None:
    pki = await make_pki(tmp_path)
    cert = x509.load_der_x509_certificate(pki.client_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert CLIENT_URI in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert pki.client_cert.read_bytes() != pki.stranger_cert.read_bytes()


def agent_header(tmp: Path, broker_port: int) -> str:
    """The agent and broker sections of a test config, as YAML text (devices come after)."""
    return (
        "agent: {id: test-gw, data_dir: " + json.dumps(str(tmp / "data")) + "}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker_port}, reconnect_min: 50ms, "
        "reconnect_max: 500ms, keepalive: 5}\n"
        "buffer: {max_size: 16MB}\n"
        "metrics: {listen: null}\n"
    )


def write_config(tmp: Path, broker_port: int, devices: list[dict[str, Any]]) -> Path:
    path = tmp / "agent.yaml"
    path.write_text(agent_header(tmp, broker_port) + "devices: " + json.dumps(devices) + "\n")
    return path
