"""Northbound faults: the broker restarts, vanishes without a FIN, acknowledges slowly, refuses us.

Each test runs the real agent against a real mosquitto (through ``FaultProxy`` where the fault is
on the link), polls real simulated devices, and ends with the same proof, per device, with a
persistent-session subscriber: every seq from 1 to the last handed out either arrived or is still
waiting in the buffer (nothing lost), duplicates stay within what the in-flight window allows,
and every value equals the simulator's.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent.app.runtime import Agent
from simulators.modbus_map import PRESS_POINTS, TYPE_TEST_POINTS, Point
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, Received, Subscriber, data_seqs
from tests.e2e import (
    AgentRig,
    Delivery,
    delivered_or_buffered,
    expected_value,
    frozen_sim,  # noqa: F401 - the ``sim`` fixture
    modbus_device,
    until,
    write_config,
)
from tests.faultproxy import FaultProxy

WINDOW = 16
DEVICES = ("m1", "m2")
#: Press points plus a few fixed type-test values: with the physics frozen, every message must
#: carry exactly these values.
POINT_SET: tuple[Point, ...] = (
    *PRESS_POINTS,
    *[p for p in TYPE_TEST_POINTS if p.table == "holding"][:8],
)


def config(tmp_path: Path, broker_port: int, sim: ModbusSimulator, **mqtt: Any) -> Path:
    return write_config(
        tmp_path / "c.yaml",
        broker_port=broker_port,
        modbus_port=sim.port,
        max_inflight=WINDOW,
        devices=[
            modbus_device(name, sim.port, unit, POINT_SET, "50ms")
            for unit, name in enumerate(DEVICES, start=1)
        ],
        mqtt=mqtt,
    )


def published(agent: Agent) -> float:
    return (
        agent.metrics.registry.get_sample_value(
            "edge_agent_published_batches_total", {"output": "default"}
        )
        or 0.0
    )


def check_delivery(
    delivery: Delivery, messages: list[Received], sim: ModbusSimulator, max_duplicates: int
) -> dict[str, int]:
    """The suite's proof, per device; returns the duplicates counted per device."""
    duplicates: dict[str, int] = {}
    for unit, device in enumerate(DEVICES, start=1):
        seqs = data_seqs(messages, device)
        assert delivery.last[device] >= 20, (device, delivery.last[device])
        gaps = delivery.gaps(device, seqs)
        assert gaps == [], f"{device}: seqs lost: {gaps[:20]} (of {len(gaps)})"
        duplicates[device] = len(seqs) - len(set(seqs))
        assert duplicates[device] <= max_duplicates, (device, duplicates[device])
        expected = {p.name: expected_value(sim.value(unit, p.name), p) for p in POINT_SET}
        for m in messages:
            if m.topic.endswith(f"/{device}/data"):
                doc = m.json()
                assert doc["values"] == expected, (device, doc["seq"], doc.get("quality"))
    return duplicates


@pytest.mark.slow
async def test_broker_restarted_20_times_at_random_points_loses_nothing(
    tmp_path: Path, broker: Mosquitto, sim: ModbusSimulator
) -> None:
    rng = random.Random(20)
    sub = Subscriber(broker.port, ["edge/test-gw/+/data"], client_id="restart-watch").start()
    restarts = 20
    try:
        async with AgentRig(config(tmp_path, broker.port, sim)) as agent:
            for _ in range(restarts):
                # Up for a random number of acknowledged batches (a random point in the stream:
                # mid-window, mid-commit, mid-reconnect), then down for a random while.
                target = published(agent) + rng.randint(5, 60)
                await until(lambda t=target: published(agent) >= t, timeout=30)
                await asyncio.to_thread(broker.stop)
                await asyncio.sleep(rng.uniform(0.05, 1.0))
                await asyncio.to_thread(broker.start)
            mark = published(agent) + 40
            await until(lambda: published(agent) >= mark, timeout=30)
            sessions = agent.publisher.sessions
        # The subscriber's persistent session gets what was queued for it while it reconnected.
        delivery = await delivered_or_buffered(sub, tmp_path / "data", DEVICES, timeout=30)
    finally:
        sub.stop()
    assert sessions >= restarts + 1
    dups = check_delivery(delivery, sub.snapshot(), sim, max_duplicates=restarts * WINDOW)
    print(f"20 broker restarts: sessions={sessions} duplicates={dups}")


@pytest.mark.slow
async def test_half_open_link_is_noticed_by_keepalive_and_nothing_is_lost(
    tmp_path: Path, broker: Mosquitto, sim: ModbusSimulator
) -> None:
    keepalive = 5  # the publisher's floor
    sub = Subscriber(broker.port, ["edge/test-gw/+/data"], client_id="blackhole-watch").start()
    try:
        async with FaultProxy(broker.port) as proxy:
            cfg = config(tmp_path, proxy.port, sim, keepalive=keepalive)
            async with AgentRig(cfg) as agent:
                await until(lambda: published(agent) >= 20, timeout=10)
                reads = agent.metrics.registry.get_sample_value
                before = reads("edge_agent_reads_total", {"device": "m1"}) or 0
                proxy.set("blackhole")  # no FIN, no RST: bytes simply stop arriving
                t0 = time.monotonic()
                await until(lambda: not agent.publisher.connected.is_set(), timeout=3 * keepalive)
                noticed = time.monotonic() - t0
                # Polling went on while the link was dead: the buffer took everything.
                after = reads("edge_agent_reads_total", {"device": "m1"}) or 0
                assert after - before >= noticed / 0.05 * 0.7
                proxy.set("pass")
                await until(agent.publisher.connected.is_set, timeout=10)
                mark = published(agent) + 40
                await until(lambda: published(agent) >= mark, timeout=20)
                await until(lambda: agent.buffer.stats().batches < WINDOW, timeout=20)
        delivery = await delivered_or_buffered(sub, tmp_path / "data", DEVICES)
    finally:
        sub.stop()
    # paho sends PINGREQ after one keepalive of silence and gives up one keepalive later.
    assert noticed <= 2 * keepalive + 2, noticed
    check_delivery(delivery, sub.snapshot(), sim, max_duplicates=WINDOW)
    print(f"half-open link noticed after {noticed:.1f} s (keepalive {keepalive} s)")


@pytest.mark.slow
async def test_slow_pubacks_keep_the_session_and_the_window(
    tmp_path: Path, broker: Mosquitto, sim: ModbusSimulator
) -> None:
    sub = Subscriber(broker.port, ["edge/test-gw/+/data"], client_id="slow-ack-watch").start()
    try:
        async with (
            FaultProxy(broker.port) as proxy,
            AgentRig(config(tmp_path, proxy.port, sim)) as agent,
        ):
            await until(lambda: published(agent) >= 20, timeout=10)
            proxy.set("delay", "down", seconds=0.4)  # every PUBACK arrives 400 ms late
            mark = published(agent) + 3 * WINDOW
            await until(lambda: published(agent) >= mark, timeout=20)
            # The window caps what waits for an ack; the rest waits in the buffer, not in paho.
            assert len(agent.publisher._inflight) <= WINDOW
            proxy.set("pass")
            mark = published(agent) + 40
            await until(lambda: published(agent) >= mark, timeout=20)
            await until(lambda: agent.buffer.stats().batches < WINDOW, timeout=20)
            sessions = agent.publisher.sessions
        delivery = await delivered_or_buffered(sub, tmp_path / "data", DEVICES)
    finally:
        sub.stop()
    assert sessions == 1  # slow is not dead: no reconnect, hence no duplicates at all
    dups = check_delivery(delivery, sub.snapshot(), sim, max_duplicates=0)
    assert dups == {d: 0 for d in DEVICES}


@pytest.mark.slow
async def test_broker_refusing_credentials_for_a_while_then_accepting(
    tmp_path: Path, sim: ModbusSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    pwfile = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "gw", "other"], check=True)
    broker = Mosquitto(
        tmp_path / "mosquitto",
        extra_conf=f"password_file {pwfile}\nacl_file {tmp_path / 'acl'}\n",
        anonymous=False,
    )
    (tmp_path / "acl").write_text("user gw\ntopic readwrite #\nuser watch\ntopic read #\n")
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "watch", "w"], check=True)
    broker.start()
    monkeypatch.setenv("EDGE_TEST_PASS", "s3cret")
    cfg = config(tmp_path, broker.port, sim, username="gw", password_env="EDGE_TEST_PASS")
    sub = _AuthSubscriber(broker.port, ["edge/test-gw/+/data"], client_id="auth-watch").start()
    try:
        async with AgentRig(cfg) as agent:

            def errors() -> float:
                value = agent.metrics.registry.get_sample_value("edge_agent_publish_errors_total")
                return value or 0.0

            await until(lambda: errors() >= 5, timeout=20)  # refused, backed off, retried
            assert not agent.publisher.connected.is_set()
            assert agent.buffer.stats().batches > 0  # polling went on into the buffer
            # The operator fixes the broker's password file; mosquitto reloads it on restart.
            subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "gw", "s3cret"], check=True)
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)
            await until(agent.publisher.connected.is_set, timeout=10)
            await until(lambda: agent.buffer.stats().batches < WINDOW, timeout=20)
        delivery = await delivered_or_buffered(sub, tmp_path / "data", DEVICES)
    finally:
        sub.stop()
        broker.stop()
    check_delivery(delivery, sub.snapshot(), sim, max_duplicates=WINDOW)


class _AuthSubscriber(Subscriber):
    def __post_init__(self) -> None:
        super().__post_init__()
        self._client.username_pw_set("watch", "w")
