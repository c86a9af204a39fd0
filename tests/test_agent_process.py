"""The agent as a process, as systemd runs it: clean stop on SIGTERM, nothing lost on SIGKILL."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from simulators.modbus_map import PRESS_POINTS
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, Subscriber, data_seqs, free_port
from tests.e2e import AGENT_BIN, delivered_or_buffered, modbus_device, write_config


def _start(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(AGENT_BIN), "run", "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


@pytest.mark.slow
async def test_sigterm_stops_cleanly_and_sigkill_loses_nothing(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with ModbusSimulator(port=free_port(), units=(1, 2)) as sim:
        cfg = write_config(
            tmp_path / "c.yaml",
            broker_port=broker.port,
            modbus_port=sim.port,
            devices=[modbus_device(f"m{u}", sim.port, u, PRESS_POINTS, "50ms") for u in (1, 2)],
        )
        sub = Subscriber(broker.port, ["edge/test-gw/#"], client_id="crash-watch").start()
        for round_ in range(4):
            proc = _start(cfg)
            target = 20 * (round_ + 1)
            await sub.wait_for(lambda m, t=target: max(data_seqs(m, "m1") or [0]) >= t, 20)
            os.kill(proc.pid, signal.SIGKILL)  # mid-stream: polling, committing, publishing
            proc.wait()
        proc = _start(cfg)
        last = {d: max(data_seqs(sub.messages, d)) for d in ("m1", "m2")}
        await sub.wait_for(
            lambda m: all(set(range(1, last[d] + 2)) <= set(data_seqs(m, d)) for d in last), 20
        )  # +2: the new process is running and publishing before it is stopped
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=20)
        assert proc.returncode == 0, out.decode()[-2000:]
        assert b"stopped" in out
        # A clean stop says offline itself (the will is only for unclean losses).
        status = [m.json() for m in sub.messages if m.topic == "edge/test-gw/status"]
        assert status[-1] == {"online": False}
        sub.stop()
    # Consumers dedupe with (agent, device, seq): duplicates stay within the in-flight window.
    for d in ("m1", "m2"):
        seqs = data_seqs(sub.messages, d)
        assert sorted(set(seqs)) == list(range(1, max(seqs) + 1))
        assert len(seqs) - len(set(seqs)) <= 4 * 64


async def test_bad_config_refused_before_start(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("agent:\n  id: gw/1\nmqtt:\n  password: hunter2\n")
    proc = await asyncio.to_thread(
        subprocess.run, [str(AGENT_BIN), "run", "-c", str(cfg)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert any(line.startswith(f"{cfg}:2:7: agent.id: ") for line in lines), lines
    assert any(f"{cfg}:4:3: mqtt.password: inline passwords" in line for line in lines), lines
    assert "hunter2" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was started


async def test_second_agent_on_same_data_dir_exits_1(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = write_config(tmp_path / "c.yaml", broker_port=broker.port, modbus_port=1, devices=[])
    first = _start(cfg)
    try:
        await asyncio.to_thread(_wait_for_line, first, b"agent running")
        second = await asyncio.to_thread(
            subprocess.run, [str(AGENT_BIN), "run", "-c", str(cfg)], capture_output=True, timeout=20
        )
        assert second.returncode == 1
        assert b"cannot start" in second.stderr and b"Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        await asyncio.to_thread(first.communicate, timeout=20)
    assert first.returncode == 0


def _wait_for_line(proc: subprocess.Popen[bytes], text: bytes) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"process ended before printing {text!r}")


@pytest.mark.slow
async def test_sigkill_10_times_during_commits_and_backlog_replay_loses_nothing(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Ten SIGKILLs at random points: while four devices commit every 20 ms (group commits run
    almost back to back), and while a backlog built during a broker outage is being replayed."""
    rng = random.Random(10)
    devices = ("k1", "k2", "k3", "k4")
    async with ModbusSimulator(port=free_port(), units=(1, 2, 3, 4)) as sim:
        cfg = write_config(
            tmp_path / "c.yaml",
            broker_port=broker.port,
            modbus_port=sim.port,
            max_inflight=16,
            devices=[
                modbus_device(name, sim.port, u, PRESS_POINTS, "20ms")
                for u, name in enumerate(devices, start=1)
            ],
        )
        sub = Subscriber(broker.port, ["edge/test-gw/+/data"], client_id="kill-watch").start()
        try:
            for round_ in range(10):
                seen = len(sub.snapshot())
                if round_ % 2 == 0:
                    # Mid-stream: a random number of batches after start, often mid-commit.
                    proc = _start(cfg)
                    target = seen + rng.randint(10, 120)
                    await sub.wait_for(lambda m, t=target: len(m) >= t, 20)
                else:
                    # Mid-replay: the broker is away while the agent buffers, comes back, and
                    # the agent is killed shortly after the backlog started to flow.
                    await asyncio.to_thread(broker.stop)
                    proc = _start(cfg)
                    await asyncio.sleep(rng.uniform(1.0, 2.0))
                    await asyncio.to_thread(broker.start)
                    await sub.wait_for(lambda m, s=seen: len(m) > s, 20)
                    await asyncio.sleep(rng.uniform(0.0, 0.15))
                os.kill(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
            # A last clean run drains everything that waited in the buffer.
            proc = _start(cfg)
            await asyncio.to_thread(_wait_for_line, proc, b"agent running")
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.to_thread(proc.communicate, timeout=20)
            assert proc.returncode == 0, out.decode()[-2000:]
            delivery = await delivered_or_buffered(sub, tmp_path / "data", devices)
        finally:
            sub.stop()
    for d in devices:
        seqs = data_seqs(sub.snapshot(), d)
        assert delivery.last[d] >= 50, (d, delivery.last[d])
        assert delivery.gaps(d, seqs) == []
        # At most the in-flight window is sent twice per kill (and per broker outage).
        assert len(seqs) - len(set(seqs)) <= 15 * 16
