"""A server with several endpoints and two certificates: discover lists every one truthfully,
suggests the strongest, saves the right certificate; the agent uses the endpoint its policy and
mode name, and says which certificate that endpoint presents when it trusts another one.

The simulator offers None, Basic256Sha256 SignAndEncrypt and Basic256 SignAndEncrypt with
certificate A, Aes256_Sha256_RsaPss Sign and SignAndEncrypt with certificate B: what a machine
with an old and a new certificate looks like.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.app.config import load_config
from agent.south.registry import load_drivers
from drivers.base import DeviceError, Quality
from drivers.opcua.config import OpcuaDevice
from drivers.opcua.discover import parser, run
from drivers.opcua.driver import OpcuaDriver
from drivers.opcua.endpoints import thumbprint
from simulators.opcua_cnc import POINTS, CncSimulator, ServerCert
from tests.brokers import free_port
from tests.test_opcua_support import Pki, device, edge_agent, first_readings, make_pki

pytestmark = pytest.mark.asyncio(loop_scope="module")

USER, PASSWORD = "collector", "s3cret-lathe"
OFFERED = [
    "NoSecurity",
    "Basic256Sha256_SignAndEncrypt",
    "Aes256Sha256RsaPss_Sign",
    "Aes256Sha256RsaPss_SignAndEncrypt",
    "Basic256_SignAndEncrypt",
]


@dataclass(frozen=True)
class Rig:
    sim: CncSimulator
    a: Pki  # certificate A (the default) and the trusted client
    b: Pki  # certificate B (Aes256_Sha256_RsaPss only)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    a = await make_pki(tmp_path_factory.mktemp("pki-a"))
    b = await make_pki(tmp_path_factory.mktemp("pki-b"))
    sim = CncSimulator(
        port=free_port(),
        update_interval=None,
        cert=ServerCert(a.server_cert, a.server_key),
        policy_certs={"Aes256_Sha256_RsaPss": ServerCert(b.server_cert, b.server_key)},
        policies=OFFERED,
        users={USER: PASSWORD},
        tokens=["anonymous", "username"],
        trusted=[a.client_cert],
    )
    await sim.start()
    yield Rig(sim, a, b)
    await sim.stop()


async def discover(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``edge-agent discover opcua ARGV`` in this process (the CLI hands over to ``run``)."""
    capsys.readouterr()
    out = io.StringIO()
    args: argparse.Namespace = parser().parse_args(list(argv))
    code = await run(args, out)
    return code, out.getvalue(), capsys.readouterr().err


def trusted_client(rig: Rig, security: str) -> list[str]:
    """discover's arguments for a secure channel with ``security`` ("policy,mode") as the client
    the server trusts."""
    return [
        "--security",
        security,
        "--cert",
        str(rig.a.client_cert),
        "--key",
        str(rig.a.client_key),
    ]


def secure_device(
    rig: Rig, policy: str, mode: str, server_cert: Path, **security: Any
) -> OpcuaDevice:
    sec = {
        "policy": policy,
        "mode": mode,
        "cert_file": str(rig.a.client_cert),
        "key_file": str(rig.a.client_key),
        "server_cert_file": str(server_cert),
        **security,
    }
    tags = [{"name": "speed", "node": POINTS["Spindle/Speed"].node_string}]
    entry = device(rig.sim.endpoint, tags, connection={"security": sec, "timeout": "1s"})
    return OpcuaDevice.model_validate({**entry, "mode": "poll", "poll_interval": "1s"})


async def read_once(dev: OpcuaDevice) -> object:
    driver = OpcuaDriver(dev)
    await driver.connect()
    try:
        (reading,) = await driver.poll()
    finally:
        await driver.close()
    assert reading.quality is Quality.GOOD
    return reading.value


async def test_the_endpoint_list_names_every_policy_mode_token_and_certificate(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await discover(rig.sim.endpoint, "--endpoints", capsys=capsys)
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    table = {(r[1], r[2]): r for r in rows if r[:1] in (["ok"], ["no"])}
    assert set(table) == {
        ("None", "None"),
        ("Basic256Sha256", "SignAndEncrypt"),
        ("Aes256_Sha256_RsaPss", "Sign"),
        ("Aes256_Sha256_RsaPss", "SignAndEncrypt"),
        ("Basic256", "SignAndEncrypt"),
    }
    assert [k for k, r in table.items() if r[0] == "no"] == [("Basic256", "SignAndEncrypt")]
    assert "deprecated (SHA-1): needs allow_deprecated: true" in out
    for row in table.values():
        assert row[3:5] == ["Anonymous,", "UserName"]
    # Each endpoint points at its own certificate, listed with its thumbprint.
    labels = {key: " ".join(row[5:7]) for key, row in table.items()}
    a_label, b_label = (
        labels["Basic256Sha256", "SignAndEncrypt"],
        labels["Aes256_Sha256_RsaPss", "Sign"],
    )
    assert a_label != b_label and labels["Basic256", "SignAndEncrypt"] == a_label
    assert f"{a_label}: " in out and thumbprint(rig.a.server_cert.read_bytes()) in out
    line_b = next(line for line in out.splitlines() if line.strip().startswith(f"{b_label}:"))
    assert thumbprint(rig.b.server_cert.read_bytes()) in line_b
    assert re.search(r"valid \d{4}-\d\d-\d\d to \d{4}-\d\d-\d\d", line_b)
    assert "Strongest endpoint the agent supports: Aes256_Sha256_RsaPss SignAndEncrypt." in out
    assert "    policy: Aes256_Sha256_RsaPss\n    mode: SignAndEncrypt\n" in out


async def test_the_endpoint_list_as_json_for_scripts(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await discover(rig.sim.endpoint, "--endpoints", "--json", capsys=capsys)
    assert code == 0
    doc = json.loads(out)
    by_key = {(e["policy"], e["mode"]): e for e in doc["endpoints"]}
    assert len(by_key) == len(OFFERED)
    sha_a = thumbprint(rig.a.server_cert.read_bytes())
    sha_b = thumbprint(rig.b.server_cert.read_bytes())
    for (policy, _), entry in by_key.items():
        expected = sha_b if policy == "Aes256_Sha256_RsaPss" else sha_a
        assert entry["server_certificate"]["sha1"] == expected, policy
        assert entry["user_tokens"] == ["Anonymous", "UserName"]
    assert by_key["Basic256", "SignAndEncrypt"]["supported"] is False
    assert doc["suggested_security"] == {"policy": "Aes256_Sha256_RsaPss", "mode": "SignAndEncrypt"}
    # allowed, the deprecated endpoint is usable but never the strongest
    _, out, _ = await discover(
        rig.sim.endpoint, "--endpoints", "--json", "--allow-deprecated", capsys=capsys
    )
    doc = json.loads(out)
    assert all(e["supported"] for e in doc["endpoints"])
    assert doc["suggested_security"]["policy"] == "Aes256_Sha256_RsaPss"


@pytest.mark.parametrize(
    ("security", "which"),
    [
        ("Aes256_Sha256_RsaPss,Sign", "b"),
        ("Basic256Sha256,SignAndEncrypt", "a"),
        (None, "b"),  # no --security: the strongest endpoint's
    ],
)
async def test_save_server_cert_saves_the_certificate_of_that_endpoint(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str], security: str | None, which: str
) -> None:
    saved = tmp_path / "lathe-3.der"
    extra = ["--security", security] if security else []
    code, out, err = await discover(
        rig.sim.endpoint, *extra, "--save-server-cert", str(saved), capsys=capsys
    )
    assert code == 0, err
    assert out == ""
    pki = rig.a if which == "a" else rig.b
    assert saved.read_bytes() == pki.server_cert.read_bytes()
    assert thumbprint(saved.read_bytes()) in err


@pytest.mark.parametrize(
    ("policy", "mode", "which"),
    [
        ("Basic256Sha256", "SignAndEncrypt", "a"),
        ("Aes256_Sha256_RsaPss", "Sign", "b"),
        ("Aes256_Sha256_RsaPss", "SignAndEncrypt", "b"),
    ],
)
async def test_the_agent_collects_through_each_endpoint_with_its_certificate(
    rig: Rig, policy: str, mode: str, which: str
) -> None:
    pki = rig.a if which == "a" else rig.b
    assert await read_once(secure_device(rig, policy, mode, pki.server_cert)) == 1200.0


@pytest.mark.parametrize(
    ("policy", "mode", "trusted", "presented"),
    [
        ("Aes256_Sha256_RsaPss", "SignAndEncrypt", "a", "b"),
        ("Basic256Sha256", "SignAndEncrypt", "b", "a"),
    ],
)
async def test_trusting_another_endpoints_certificate_is_named(
    rig: Rig, policy: str, mode: str, trusted: str, presented: str
) -> None:
    """The trusted certificate is the server's, only not this endpoint's: the reason says so
    and the detail gives the thumbprint the endpoint presents."""
    pkis = {"a": rig.a, "b": rig.b}
    dev = secure_device(rig, policy, mode, pkis[trusted].server_cert)
    driver = OpcuaDriver(dev)
    with pytest.raises(DeviceError) as info:
        await driver.connect()
    await driver.close()
    assert info.value.reason == "server certificate is not server_cert_file"
    assert thumbprint(pkis[presented].server_cert.read_bytes()) in str(info.value)


async def test_a_policy_and_mode_the_server_lacks_is_named(rig: Rig) -> None:
    dev = secure_device(rig, "Basic256Sha256", "Sign", rig.a.server_cert)
    driver = OpcuaDriver(dev)
    with pytest.raises(DeviceError) as info:
        await driver.connect()
    await driver.close()
    assert info.value.reason == "the server offers no Basic256Sha256 Sign endpoint"
    assert "Aes256_Sha256_RsaPss Sign" in str(info.value)


async def test_a_deprecated_policy_works_only_when_allowed(rig: Rig) -> None:
    with pytest.raises(ValueError, match="deprecated"):
        secure_device(rig, "Basic256", "SignAndEncrypt", rig.a.server_cert)
    dev = secure_device(rig, "Basic256", "SignAndEncrypt", rig.a.server_cert, allow_deprecated=True)
    assert await read_once(dev) == 1200.0


async def test_discover_refuses_a_missing_endpoint_at_once_and_shows_the_list(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await discover(
        rig.sim.endpoint,
        *trusted_client(rig, "Basic256Sha256,Sign"),
        "--server-cert",
        str(rig.a.server_cert),
        capsys=capsys,
    )
    assert code == 1 and out == ""
    first, *rest = err.splitlines()
    assert first.startswith("edge-agent discover: the server offers no Basic256Sha256 Sign")
    assert any("Aes256_Sha256_RsaPss  SignAndEncrypt" in line for line in rest)


async def test_the_suggested_security_block_works_once_uncommented(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """discover without security, then what its output says: save the endpoint's certificate
    with the command it prints, put the gateway's files where the block names them, uncomment
    the block. The result validates and collects over Aes256_Sha256_RsaPss."""
    code, out, err = await discover(
        rig.sim.endpoint,
        "--under",
        "Machine/Spindle",
        "--depth",
        "1",
        "--name",
        "lathe-3",
        capsys=capsys,
    )
    assert code == 0, err
    lines = out.splitlines()
    start = lines.index("      # security:")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("      # (edge-agent"))
    command = lines[end].removeprefix("      # (").split(" writes ")[0].split()
    assert command[:3] == ["edge-agent", "discover", "opcua"]
    saved_as = command[command.index("--save-server-cert") + 1]
    assert saved_as == "lathe-3.der"
    code, _, err = await discover(*command[3:-1], str(tmp_path / saved_as), capsys=capsys)
    assert code == 0, err
    shutil.copy(rig.a.client_cert, tmp_path / "agent-cert.der")
    shutil.copy(rig.a.client_key, tmp_path / "agent-key.pem")
    block = [line.replace("      # ", "      ", 1) for line in lines[start:end]]
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent:\n  id: doc\n" + "\n".join(lines[:start] + block + lines[end + 1 :]) + "\n"
    )
    (dev,) = load_config(config, load_drivers()).devices
    assert isinstance(dev, OpcuaDevice)
    assert dev.connection.security.policy == "Aes256_Sha256_RsaPss"
    assert dev.connection.security.mode == "SignAndEncrypt"
    readings = await first_readings(OpcuaDriver(dev))
    assert {r.tag: r.value for r in readings}["speed"] == 1200.0


async def test_discover_with_security_trusts_the_certificate_it_saves(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "lathe-3.der"
    code, out, err = await discover(
        rig.sim.endpoint,
        *trusted_client(rig, "Aes256_Sha256_RsaPss,SignAndEncrypt"),
        "--save-server-cert",
        str(saved),
        "--under",
        "Machine/Spindle",
        "--depth",
        "1",
        capsys=capsys,
    )
    assert code == 0, err
    assert saved.read_bytes() == rig.b.server_cert.read_bytes()
    assert f'server_cert_file: "{saved}"' in out
    assert "{name: speed," in out
    # the strongest is in use: no other security block is suggested
    assert "# security:" not in out


async def test_the_cli_reaches_the_endpoint_list(rig: Rig) -> None:
    code, out, err = await edge_agent(
        "discover", "opcua", rig.sim.endpoint, "--endpoints", "--json"
    )
    assert code == 0, err
    assert len(json.loads(out)["endpoints"]) == len(OFFERED)
