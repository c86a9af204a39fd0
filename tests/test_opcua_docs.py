"""The page "Connecting OPC UA servers" (docs/devices/opcua.md) and its Simplified Chinese twin
tell the truth: their configs validate (the twin's are the same devices), the openssl recipe makes
a certificate the server accepts, the certificate fetch saves the server's, and every key of the
driver is on the page."""

from __future__ import annotations

import re
import subprocess
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from agent.app.config import load_config
from agent.south.registry import load_drivers
from drivers.opcua.config import OpcuaDevice
from drivers.opcua.driver import OpcuaDriver
from simulators.opcua_cnc import POINTS, CncSimulator, ServerCert
from tests.brokers import free_port
from tests.readme import DOCS, code_words, driver_keys
from tests.test_opcua_support import Pki, device, edge_agent, make_pki

pytestmark = pytest.mark.asyncio(loop_scope="module")

DOC = DOCS / "devices" / "opcua.md"
ZH = DOCS / "zh-CN" / "devices" / "opcua.md"


def _blocks(kind: str, page: Path = DOC) -> list[str]:
    text = page.read_text(encoding="utf-8")
    title = {DOC: "# Connecting OPC UA servers\n", ZH: "# 接入 OPC UA 服务器\n"}[page]
    assert text.startswith(title)
    return [textwrap.dedent(b) for b in re.findall(rf"```{kind}\n(.*?)```", text, re.S)]


def _examples(page: Path, folder: Path) -> list[OpcuaDevice]:
    blocks = _blocks("yaml", page)
    assert len(blocks) == 3
    devices: list[OpcuaDevice] = []
    folder.mkdir(exist_ok=True)
    for i, block in enumerate(blocks):
        body = block if re.search(r"^devices:", block, re.M) else "devices:\n" + block
        path = folder / f"example{i}.yaml"
        path.write_text("agent:\n  id: doc\n" + body, encoding="utf-8")
        config = load_config(path, load_drivers())
        devices += [d for d in config.devices if isinstance(d, OpcuaDevice)]
    return devices


async def test_every_yaml_example_validates(tmp_path: Path) -> None:
    devices = _examples(DOC, tmp_path)
    for d in devices:
        OpcuaDriver(d)  # and the driver takes it
    assert [d.name for d in devices] == ["lathe-3", "lathe-3", "press-7", "cnc-9"]


async def test_the_chinese_page_shows_the_same_devices_and_commands(tmp_path: Path) -> None:
    """The twin translates the prose and the comments, never the configuration or a command."""
    en, zh = _examples(DOC, tmp_path / "en"), _examples(ZH, tmp_path / "zh")
    assert [d.model_dump() for d in zh] == [d.model_dump() for d in en]
    assert _blocks("sh", ZH) == _blocks("sh")


@pytest.mark.parametrize("page", [DOC, ZH], ids=["en", "zh-CN"])
async def test_every_key_of_the_driver_is_on_the_page(page: Path) -> None:
    """The page is where an integrator looks a key up: each key the driver adds to the common
    ones (device, tag, connection, security) is named on it, and it links to the generated
    reference."""
    text = page.read_text(encoding="utf-8")
    missing = driver_keys(OpcuaDevice) - code_words(text)
    assert not missing, f"keys of driver opcua not on {page.name}: {sorted(missing)}"
    assert "reference/config.md)" in text


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return await make_pki(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def doc_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The openssl recipe, run as written."""
    folder = tmp_path_factory.mktemp("recipe")
    recipe = next(b for b in _blocks("sh") if "openssl req" in b)
    subprocess.run(["bash", "-euc", recipe], cwd=folder, check=True, capture_output=True)
    return folder


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(pki: Pki, doc_certs: Path) -> AsyncIterator[CncSimulator]:
    simulator = CncSimulator(
        port=free_port(),
        update_interval=None,
        cert=ServerCert(pki.server_cert, pki.server_key),
        trusted=[doc_certs / "agent-cert.der"],
    )
    await simulator.start()
    yield simulator
    await simulator.stop()


async def test_the_openssl_recipe_makes_a_certificate_the_server_accepts(
    sim: CncSimulator, pki: Pki, doc_certs: Path
) -> None:
    security = {
        "policy": "Basic256Sha256",
        "cert_file": str(doc_certs / "agent-cert.der"),
        "key_file": str(doc_certs / "agent-key.pem"),
        "server_cert_file": str(pki.server_cert),
    }
    tags = [{"name": "speed", "node": POINTS["Spindle/Speed"].node_string}]
    entry = device(sim.endpoint, tags, connection={"security": security}, mode="poll")
    driver = OpcuaDriver(OpcuaDevice.model_validate(entry))
    await driver.connect()
    try:
        (reading,) = await driver.poll()
    finally:
        await driver.close()
    assert reading.value == 1200.0


async def test_save_server_cert_as_written_saves_that_endpoints_certificate(
    sim: CncSimulator, pki: Pki, tmp_path: Path
) -> None:
    """The page's command, run against the simulator: it saves the certificate and says
    which endpoint's it is, with the thumbprint."""
    line = next(x for b in _blocks("sh") for x in b.splitlines() if "--save-server-cert" in x)
    argv = line.replace("opc.tcp://10.0.0.20:4840/cnc", sim.endpoint).split()
    assert argv[:3] == ["edge-agent", "discover", "opcua"]
    code, _, err = await edge_agent(*argv[1:], cwd=tmp_path)
    assert code == 0, err
    assert (tmp_path / "lathe-3.der").read_bytes() == pki.server_cert.read_bytes()
    assert "the certificate of the Basic256Sha256 SignAndEncrypt endpoint" in err
    assert re.search(r"SHA-1 ([0-9A-F]{2}:){19}[0-9A-F]{2}", err)


def _shape(line: str, endpoint: str) -> str:
    """A discover output line with what differs between machines taken out: the endpoint, the
    thumbprints, dates, counts, and what a certificate line says after its label."""
    line = line.strip().replace(endpoint, "ENDPOINT")
    line = re.sub(r"^(# +cert \d+:).*", r"\1 ...", line)
    line = re.sub(r"SHA-1 [0-9A-F:.]+", "SHA-1 X", line)
    line = re.sub(r"\d{4}-\d\d-\d\d( \d\d:\d\d UTC)?", "DATE", line)
    return re.sub(r": \d+ variables", ": N variables", line)


async def test_the_discover_example_is_what_discover_prints(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A server with the example's endpoints (the Aes one with a second certificate): every
    comment line of the example, and the entry's head, come out of discover as shown."""
    other = await make_pki(tmp_path_factory.mktemp("pki-2"))
    example = next(b for b in _blocks("yaml") if "# Endpoints of" in b)
    async with CncSimulator(
        port=free_port(),
        update_interval=None,
        cert=ServerCert(pki.server_cert, pki.server_key),
        policy_certs={"Aes256_Sha256_RsaPss": ServerCert(other.server_cert, other.server_key)},
        policies=[
            "NoSecurity",
            "Basic128Rsa15_SignAndEncrypt",
            "Basic256Sha256_SignAndEncrypt",
            "Aes256Sha256RsaPss_SignAndEncrypt",
        ],
        users={"collector": "pw"},
        tokens=["anonymous", "username"],
    ) as sim:
        code, out, err = await edge_agent(
            *re.findall(r"edge-agent (discover opcua \S+ .*?) >", DOC.read_text())[0]
            .replace("opc.tcp://10.0.0.20:4840/cnc", sim.endpoint)
            .split()
        )
    assert code == 0, err
    printed = {_shape(x, sim.endpoint) for x in out.splitlines()}
    shown = [
        _shape(x, "opc.tcp://10.0.0.20:4840/cnc")
        for x in example.splitlines()
        if not x.lstrip().startswith(("- {", "# - {"))
    ]
    assert [x for x in shown if x not in printed] == []


async def test_discover_over_a_secure_channel_writes_the_security_it_used(
    sim: CncSimulator, pki: Pki, doc_certs: Path, tmp_path: Path
) -> None:
    cert, key = doc_certs / "agent-cert.der", doc_certs / "agent-key.pem"
    code, text, err = await edge_agent(
        "discover",
        "opcua",
        sim.endpoint,
        "--under",
        "Machine/Spindle",
        "--security",
        "Basic256Sha256,SignAndEncrypt",
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--server-cert",
        str(pki.server_cert),
        "--depth",
        "1",
    )
    assert code == 0, err
    assert 'security: {policy: "Basic256Sha256", mode: "SignAndEncrypt"' in text
    assert "{name: speed," in text and "{name: load," in text
    path = tmp_path / "found.yaml"
    path.write_text("agent:\n  id: doc\n" + text, encoding="utf-8")
    (dev,) = load_config(path, load_drivers()).devices
    assert (
        isinstance(dev, OpcuaDevice) and dev.connection.security.server_cert_file == pki.server_cert
    )
