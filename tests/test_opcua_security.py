"""Secure channels and users against the simulator: what works, and what each refusal says.

A refusal must read as one line an integrator can act on, and the agent must keep retrying (a
password fixed on the server, or a certificate trusted later, needs no agent restart).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.ops.metrics import Metrics
from agent.south.scheduler import DevicePoller
from drivers.base import DeviceError, Quality
from drivers.opcua.config import OpcuaDevice
from drivers.opcua.driver import OpcuaDriver
from simulators.opcua_cnc import POINTS, CncSimulator, ServerCert
from tests.brokers import free_port
from tests.sinks import Sink, Status
from tests.test_opcua_support import Pki, device, first_readings, make_pki

pytestmark = pytest.mark.asyncio(loop_scope="module")

USER, PASSWORD = "collector", "s3cret-lathe"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return await make_pki(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(pki: Pki) -> AsyncIterator[CncSimulator]:
    simulator = CncSimulator(
        port=free_port(),
        update_interval=None,
        cert=ServerCert(pki.server_cert, pki.server_key),
        users={USER: PASSWORD},
        trusted=[pki.client_cert],
    )
    await simulator.start()
    yield simulator
    await simulator.stop()


def secure(
    sim: CncSimulator,
    pki: Pki,
    *,
    policy: str = "Basic256Sha256",
    mode: str = "SignAndEncrypt",
    cert: Path | None = None,
    key: Path | None = None,
    server_cert: Path | None = None,
) -> OpcuaDevice:
    security = {
        "policy": policy,
        "mode": mode,
        "cert_file": str(cert or pki.client_cert),
        "key_file": str(key or pki.client_key),
        "server_cert_file": str(server_cert or pki.server_cert),
    }
    tags = [{"name": "speed", "node": POINTS["Spindle/Speed"].node_string}]
    entry = device(
        sim.endpoint,
        tags,
        connection={"security": security, "username": USER, "password_env": "LATHE3_PASS"},
        publishing_interval="100ms",
    )
    return OpcuaDevice.model_validate(entry)


async def first_values(driver: OpcuaDriver) -> list[Any]:
    readings = await first_readings(driver)
    assert all(r.quality is Quality.GOOD for r in readings)
    return [r.value for r in readings]


@pytest.mark.parametrize(
    ("policy", "mode"),
    [
        ("Basic256Sha256", "SignAndEncrypt"),
        ("Basic256Sha256", "Sign"),
        ("Aes256_Sha256_RsaPss", "SignAndEncrypt"),
    ],
)
async def test_secure_channel_with_user_collects(
    sim: CncSimulator, pki: Pki, monkeypatch: pytest.MonkeyPatch, policy: str, mode: str
) -> None:
    monkeypatch.setenv("LATHE3_PASS", PASSWORD)
    assert await first_values(OpcuaDriver(secure(sim, pki, policy=policy, mode=mode))) == [1200.0]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong password", "user or password refused (BadUserAccessDenied)"),
        ("untrusted client", "the server does not trust our certificate (BadCertificateUntrusted)"),
        ("other server", "server certificate is not server_cert_file"),
    ],
)
async def test_each_refusal_has_one_clear_reason(
    sim: CncSimulator, pki: Pki, monkeypatch: pytest.MonkeyPatch, case: str, reason: str
) -> None:
    monkeypatch.setenv("LATHE3_PASS", "wrong" if case == "wrong password" else PASSWORD)
    kwargs: dict[str, Any] = {}
    if case == "untrusted client":
        kwargs = {"cert": pki.stranger_cert, "key": pki.stranger_key}
    if case == "other server":
        kwargs = {"server_cert": pki.stranger_cert}
    driver = OpcuaDriver(secure(sim, pki, **kwargs))
    with pytest.raises(DeviceError) as info:
        await driver.connect()
    await driver.close()
    assert info.value.reason == reason
    assert "\n" not in str(info.value) and PASSWORD not in str(info.value)


async def test_a_refused_password_is_retried_until_it_is_right(
    sim: CncSimulator, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATHE3_PASS", "wrong")
    dev = secure(sim, pki)
    sink, status = Sink(), Status()
    poller = DevicePoller(
        dev, OpcuaDriver(dev), sink, status, Metrics(), backoff_initial=0.1, backoff_max=0.2
    )
    task = asyncio.create_task(poller.run())
    try:
        await sink.until(lambda: len(sink.batches) >= 2)  # two failed attempts, two bad batches
        assert status.changes == [
            ("lathe-3", "down", "user or password refused (BadUserAccessDenied)")
        ]
        bad = sink.batches[0].readings[0]
        assert bad.reason == "user or password refused (BadUserAccessDenied)"
        monkeypatch.setenv("LATHE3_PASS", PASSWORD)  # the operator fixes the secret
        await sink.until(lambda: any(r.value == 1200.0 for b in sink.batches for r in b.readings))
        assert status.changes[-1][1] == "up"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_anonymous_where_the_server_wants_a_user_says_so(sim: CncSimulator, pki: Pki) -> None:
    """The server refuses the anonymous identity; the reason is not "user or password refused"
    (none was sent) but what to set."""
    tags = [{"name": "speed", "node": POINTS["Spindle/Speed"].node_string}]
    driver = OpcuaDriver(OpcuaDevice.model_validate(device(sim.endpoint, tags)))
    with pytest.raises(DeviceError) as info:
        await driver.connect()
    await driver.close()
    assert info.value.reason == "the server refuses anonymous sessions: set username"
    assert "accepts UserName" in str(info.value)
