"""Fleet at scale (issue 17): many ``edge-agent run`` processes on one mosquitto, a canary
rollout then all, a gateway whose device fails after the apply rolls back and stops the
rollout, SIGKILL during an apply.

How many: ``FLEET_AGENTS``, 10 by default to keep the suite's time. The issue's 50 pass too
(``FLEET_AGENTS=50``): on the 2-core development machine, shared with other work, that run took
71 s, most of it starting 50 Python processes (each imports the agent); 10 take about 25 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from agent.app.fleet.store import FleetStore
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, free_port
from tests.e2e import agent_process, until
from tests.fleet_rig import (
    KEY,
    KEY_ENV,
    cli,
    device,
    gateway_config,
    health,
    sections,
    states,
    watcher,
)

AGENTS = int(os.environ.get("FLEET_AGENTS", "10"))

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("quiet_pymodbus")]


def _version_of(messages: list, gw: str) -> int | None:  # type: ignore[type-arg]
    docs = health(messages, gw)
    return docs[-1]["config"]["version"] if docs else None


async def test_many_gateways_canary_then_all_a_rollback_stops_the_rollout_and_sigkill(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    gws = [f"gw-{i:02d}" for i in range(AGENTS)]
    at = ["--broker", f"127.0.0.1:{broker.port}"]
    async with ModbusSimulator(port=free_port(), units=(1,)) as sim:
        m1 = device("m1", sim.port, every="2s")
        cfgs = {
            gw: gateway_config(tmp_path / f"{gw}.yaml", gw, broker.port, [m1], interval="5s")
            for gw in gws
        }
        sub = watcher(broker.port, "watch-scale")
        with ExitStack() as stack:
            procs: dict[str, subprocess.Popen[bytes]] = {
                gw: stack.enter_context(agent_process(cfgs[gw], tmp_path / f"{gw}.log"))
                for gw in gws
            }
            await sub.wait_for(
                lambda m: all(
                    any(h["devices"]["m1"]["state"] == "up" for h in health(m, gw)) for gw in gws
                ),
                120,
            )
            listed = await cli("fleet", "list", *at)
            assert len(listed.stdout.splitlines()) == AGENTS + 1
            # v1 to all: m1 polled faster and a second device; two canaries, then the rest at once.
            v1 = tmp_path / "v1.yaml"
            v1.write_text(
                sections(
                    devices=[device("m1", sim.port, every="1s"), device("m2", sim.port, every="2s")]
                )
            )
            out = await cli(
                "fleet",
                "push",
                str(v1),
                "--all",
                "--canary",
                "2",
                "--parallel",
                str(AGENTS),
                "--version",
                "1",
                *at,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            lines = out.stdout.splitlines()
            assert lines[:2] == [f"{gws[0]}: applied (version 1)", f"{gws[1]}: applied (version 1)"]
            assert sum("applied (version 1)" in line for line in lines) == AGENTS
            # v2 moves m1 to a dead port: the canary rolls back, nobody else gets it.
            v2 = tmp_path / "v2.yaml"
            v2.write_text(sections(devices=[device("m1", free_port()), device("m2", sim.port)]))
            out = await cli(
                "fleet",
                "push",
                str(v2),
                "--all",
                "--canary",
                "1",
                "--parallel",
                str(AGENTS),
                "--version",
                "2",
                *at,
            )
            assert out.returncode == 1
            assert out.stdout.splitlines()[0] == f"{gws[0]}: rolled_back (version 2)"
            assert f"rollout stopped: {AGENTS - 1} gateway(s) not pushed" in out.stderr
            msgs = await sub.wait_for(lambda m: all(_version_of(m, gw) == 1 for gw in gws), 30)
            assert not any(s["version"] == 2 for gw in gws[1:] for s in states(msgs, gw))
            # SIGKILL in the middle of an apply (v3, health check under way), then a restart.
            victim = gws[1]
            store = FleetStore(tmp_path / f"data-{victim}")
            killer = asyncio.create_task(
                cli(
                    "fleet",
                    "push",
                    str(v2),
                    "--to",
                    victim,
                    "--version",
                    "3",
                    "--timeout",
                    "5",
                    *at,
                )
            )
            await until(lambda: store.state_file.exists() and store.load().pending is not None, 30)
            os.kill(procs[victim].pid, signal.SIGKILL)
            procs[victim].wait()
            assert (await killer).returncode == 1
            seen = len(health(sub.messages, victim))
            stack.enter_context(agent_process(cfgs[victim], tmp_path / "again.log"))
            msgs = await sub.wait_for(
                lambda m: (
                    len(health(m, victim)) > seen
                    and health(m, victim)[-1]["config"]["version"] == 1
                    and any(
                        s["version"] == 3 and s["result"] == "rolled_back"
                        for s in states(m, victim)
                    )
                ),
                30,
            )
            said = [s for s in states(msgs, victim) if s["version"] == 3][-1]
            assert "stopped during the apply of version 3" in said["errors"][0]
        sub.stop()
