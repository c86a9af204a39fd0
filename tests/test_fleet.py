"""Fleet (issue 17): a real mosquitto, real ``edge-agent run`` processes, pushes signed as the
operator signs them; every refusal, the apply through the reload path, the rollback, the
precedence rule at boot, SIGKILL in the middle of an apply, and the operator's commands."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.app.fleet.push import MAX_YAML_BYTES
from agent.app.fleet.store import FleetStore
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, Received, Subscriber, data_seqs, free_port
from tests.e2e import agent_process, until
from tests.fleet_rig import (
    KEY,
    KEY_ENV,
    cli,
    device,
    gateway_config,
    health,
    push,
    sections,
    state_of,
    states,
    watcher,
)

pytestmark = pytest.mark.usefixtures("quiet_pymodbus")


@pytest.fixture(autouse=True)
def fleet_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key in the environment the agents and the CLI inherit."""
    monkeypatch.setenv(KEY_ENV, KEY)


def _send(port: int, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pusher-{os.getpid()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


@pytest.mark.slow
async def test_hostile_pushes_are_refused_with_positions_and_never_crash(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with ModbusSimulator(port=free_port(), units=(1,)) as sim:
        cfg = gateway_config(tmp_path / "gw.yaml", "gw-a", broker.port, [device("m1", sim.port)])
        sub = watcher(broker.port, "watch-hostile")
        log = tmp_path / "agent.log"
        with agent_process(cfg, log, "info") as proc:
            await sub.wait_for(
                lambda m: any(h["devices"]["m1"]["state"] == "up" for h in health(m, "gw-a")), 20
            )
            topic = "edge/gw-a/config/set"
            marker = "s3cr3t-VALUE-91"
            good = sections(devices=[device("m1", sim.port)])
            bomb = (
                "a: &a [x, x, x, x, x, x, x, x, x]\n"
                + "".join(
                    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
                )
                + "devices: []\n"
            )
            writable = device("m1", sim.port)
            writable["tags"][0]["writable"] = True
            writable_tag = writable["tags"][0]["name"]
            cases = {
                "json": (b"{not json", "1:1: (push): not JSON"),
                "types": (
                    json.dumps({"id": "types", "version": "7", "yaml": 5, "sig": 1}).encode(),
                    "1:1: (push).version: must be a positive integer",
                ),
                "sig": (push(5, good, "sig", key="wrong-key"), "1:1: (push).sig: the signature"),
                "huge": (
                    push(5, "devices: []\n#" + "x" * MAX_YAML_BYTES, "huge"),
                    f"1:1: (push).yaml: the config is larger than {MAX_YAML_BYTES} bytes",
                ),
                "bomb": (push(5, bomb, "bomb"), "(yaml): the document expands to more than"),
                "section": (
                    push(5, sections(devices=[], agent={"id": "x", "data_dir": "/"}), "section"),
                    "3:1: agent: this section cannot be pushed (fleet.allow: devices, profiles)",
                ),
                "badkey": (
                    push(
                        5,
                        sections(devices=[{**device("m1", sim.port), "poll_interval": marker}]),
                        "badkey",
                    ),
                    "2:45: devices.0.poll_interval: invalid duration",
                ),
                "write": (
                    push(5, sections(devices=[writable]), "write"),
                    f"devices.0.tags.0.writable: a push cannot make m1.{writable_tag} writable",
                ),
            }
            for push_id, (payload, expected) in cases.items():
                before = len(states(sub.messages, "gw-a"))
                _send(broker.port, topic, payload)
                msgs = await sub.wait_for(lambda m, b=before: len(states(m, "gw-a")) > b, 20)
                state = states(msgs, "gw-a")[-1]
                assert state["result"] == "refused", (push_id, state)
                assert any(expected in e for e in state["errors"]), (push_id, state["errors"])
                assert proc.poll() is None
            # Not newer: version 1 applies, then 1 again (a replay) is refused.
            _send(broker.port, topic, push(1, good, "v1"))
            msgs = await sub.wait_for(lambda m: state_of(m, "gw-a", "v1") is not None, 20)
            assert state_of(msgs, "gw-a", "v1")["result"] == "applied"  # type: ignore[index]
            _send(broker.port, topic, push(1, good, "replay"))
            msgs = await sub.wait_for(lambda m: state_of(m, "gw-a", "replay") is not None, 20)
            replay = state_of(msgs, "gw-a", "replay")
            assert replay is not None and replay["result"] == "refused"
            assert replay["errors"] == ["1:1: (push).version: version 1 is not newer than 1"]
            # Another gateway's topic is not this one's business.
            _send(broker.port, "edge/gw-other/config/set", push(9, good, "other"))
            _send(broker.port, topic, push(2, good, "v2"))
            msgs = await sub.wait_for(lambda m: state_of(m, "gw-a", "v2") is not None, 20)
            assert state_of(msgs, "gw-a", "other") is None
            assert proc.poll() is None
            # Health: the contract's shape, retained, again every health_interval (1 s here)
            # though nothing changes.
            n = len(health(sub.messages, "gw-a"))
            msgs = await sub.wait_for(lambda m: len(health(m, "gw-a")) >= n + 2, 10)
            doc = health(msgs, "gw-a")[-1]
            assert set(doc) == {
                "agent",
                "version",
                "uptime_s",
                "config",
                "state",
                "devices",
                "outputs",
                "clock_synchronized",
                "ts",
            }
            assert doc["agent"] == "gw-a" and doc["config"]["version"] == 2
            assert doc["devices"] == {"m1": {"state": "up", "reason": None}}
            assert set(doc["outputs"]["default"]) == {"connected", "backlog", "oldest_ms"}
            assert doc["outputs"]["default"]["connected"] is True
            late = Subscriber(broker.port, ["edge/gw-a/health"], client_id="late").start()
            first = (await late.wait_for(lambda m: len(m) >= 1, 5))[0]
            assert first.retain and first.json()["agent"] == "gw-a"
            late.stop()
        sub.stop()
        text = log.read_text()
        assert marker not in text and KEY not in text
        assert "Traceback" not in text


def _restart(cfg: Path, log: Path):  # type: ignore[no-untyped-def]
    return agent_process(cfg, log, "info")


def _configured(log: Path, name: str) -> int:
    """How many times the agent started a poll task for ``name`` (one log line each)."""
    return sum(
        1
        for line in log.read_text().splitlines()
        if "device configured" in line and f"device={name} " in line + " "
    )


def _fresh(messages: list[Received], seen: int, version: int, source: str, up: list[str]) -> bool:
    """A health document newer than the first ``seen``, with this config and these devices up."""
    docs = health(messages, "gw-b")[seen:]
    return any(
        (h["config"]["version"], h["config"]["source"]) == (version, source)
        and sorted(n for n, d in h["devices"].items() if d["state"] == "up") == up
        for h in docs
    )


@pytest.mark.slow
async def test_apply_rollback_precedence_history_and_the_operators_commands(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with ModbusSimulator(port=free_port(), units=(1, 2)) as sim:
        cfg = gateway_config(tmp_path / "gw.yaml", "gw-b", broker.port, [device("m1", sim.port)])
        sub = watcher(broker.port, "watch-apply")
        data = watcher(broker.port, "watch-data")
        data._client.subscribe("edge/gw-b/+/data", qos=1)
        at = ["--broker", f"127.0.0.1:{broker.port}"]
        log = tmp_path / "agent.log"
        with agent_process(cfg, log, "info") as proc:
            await sub.wait_for(
                lambda m: any(h["devices"]["m1"]["state"] == "up" for h in health(m, "gw-b")), 20
            )
            listed = await cli("fleet", "list", *at)
            assert listed.returncode == 0, listed.stderr
            row = next(r for r in listed.stdout.splitlines() if r.startswith("gw-b"))
            assert row.split()[1:4] == ["ok", "v0", "1/1"]
            # v1: m1 unchanged, m2 added; pushed, validated, signed by the operator's command.
            v1 = tmp_path / "v1.yaml"
            v1.write_text(sections(devices=[device("m1", sim.port), device("m2", sim.port, 2)]))
            done = await cli("fleet", "push", str(v1), "--to", "gw-b", "--version", "1", *at)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "gw-b: applied (version 1)" in done.stdout
            await sub.wait_for(
                lambda m: any(
                    h["config"]["version"] == 1 and h["devices"].get("m2", {}).get("state") == "up"
                    for h in health(m, "gw-b")
                ),
                20,
            )
            assert _configured(log, "m1") == 1  # the unchanged device kept its poll task
            assert _configured(log, "m2") == 1
            assert (await cli("fleet", "diff", "gw-b", str(v1), *at)).returncode == 0
            other = tmp_path / "other.yaml"
            other.write_text(sections(devices=[device("m1", sim.port)]))
            diff = await cli("fleet", "diff", "gw-b", str(other), *at)
            assert diff.returncode == 1 and "-  name: m2\n" in diff.stdout, diff.stdout
            # A file the operator's machine refuses never leaves it.
            bad = tmp_path / "bad.yaml"
            bad.write_text("devices:\n  - name: x\n    driver: modbus\n    poll_interval: soon\n")
            refused = await cli("fleet", "push", str(bad), "--to", "gw-b", "--version", "9", *at)
            assert refused.returncode == 2
            assert f"{bad}:2:5: devices.0" in refused.stderr
            # v2: m1 moved to a port nobody listens on -> down -> rolled back, rollout stopped.
            v2 = tmp_path / "v2.yaml"
            v2.write_text(sections(devices=[device("m1", free_port()), device("m2", sim.port, 2)]))
            seen = len(health(sub.messages, "gw-b"))
            failed = await cli("fleet", "push", str(v2), "--to", "gw-b", "--version", "2", *at)
            assert failed.returncode == 1
            assert "gw-b: rolled_back (version 2)" in failed.stdout
            assert "device m1 down" in failed.stdout
            await sub.wait_for(lambda m: _fresh(m, seen, 1, "fleet", ["m1", "m2"]), 20)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        seqs = data_seqs(data.messages, "m1")
        assert sorted(set(seqs)) == list(range(min(seqs), max(seqs) + 1))  # no gap, ever
        # Precedence: version 1 was applied after the file last changed -> it runs at boot.
        seen = len(health(sub.messages, "gw-b"))
        with _restart(cfg, tmp_path / "agent2.log") as proc:
            await sub.wait_for(lambda m: _fresh(m, seen, 1, "fleet", ["m1", "m2"]), 20)
            # A SIGHUP applies the local file: the health says so at once.
            seen = len(health(sub.messages, "gw-b"))
            proc.send_signal(signal.SIGHUP)
            await sub.wait_for(lambda m: _fresh(m, seen, 0, "file", ["m1"]), 20)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        # An engineer edits the file on the box: the file is the truth again.
        cfg.write_text(cfg.read_text())
        history = await cli("config", "history", "-c", str(cfg))
        assert history.returncode == 0
        assert "in force at the next start: the local file" in history.stdout
        assert [r.split()[:2] for r in history.stdout.splitlines()[2:4]] == [
            ["2", "rolled_back"],
            ["*1", "applied"],
        ]
        before = len(health(sub.messages, "gw-b"))
        with _restart(cfg, tmp_path / "agent3.log") as proc:
            await sub.wait_for(lambda m: _fresh(m, before, 0, "file", ["m1"]), 20)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        back = await cli("config", "rollback", "-c", str(cfg), "1")
        assert back.returncode == 0, back.stderr
        assert (await cli("config", "rollback", "-c", str(cfg), "7")).returncode == 2
        before = len(health(sub.messages, "gw-b"))
        with _restart(cfg, tmp_path / "agent4.log") as proc:
            await sub.wait_for(lambda m: _fresh(m, before, 1, "fleet", ["m1", "m2"]), 20)
        sub.stop()
        data.stop()


@pytest.mark.slow
async def test_sigkill_during_an_apply_comes_back_on_the_last_good_version(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with ModbusSimulator(port=free_port(), units=(1,)) as sim:
        cfg = gateway_config(tmp_path / "gw.yaml", "gw-k", broker.port, [device("m1", sim.port)])
        sub = watcher(broker.port, "watch-kill")
        store = FleetStore(tmp_path / "data-gw-k")
        with agent_process(cfg, tmp_path / "a.log", "info") as proc:
            await sub.wait_for(
                lambda m: any(h["devices"]["m1"]["state"] == "up" for h in health(m, "gw-k")), 20
            )
            # m1 on a dead port: the health check waits its 3 s before rolling back.
            _send(
                broker.port,
                "edge/gw-k/config/set",
                push(4, sections(devices=[device("m1", free_port())]), "doomed"),
            )
            await until(lambda: store.state_file.exists() and store.load().pending is not None, 20)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        with agent_process(cfg, tmp_path / "b.log", "info"):
            msgs = await sub.wait_for(
                lambda m: (
                    any(s["result"] == "rolled_back" for s in states(m, "gw-k"))
                    and any(
                        h["devices"]["m1"]["state"] == "up" and h["uptime_s"] < 20
                        for h in health(m, "gw-k")[1:]
                    )
                ),
                20,
            )
        said = [s for s in states(msgs, "gw-k") if s["result"] == "rolled_back"][-1]
        assert said["version"] == 4 and said["id"] == "doomed"  # the push's answer, at last
        assert "stopped during the apply of version 4" in said["errors"][0]
        assert health(msgs, "gw-k")[-1]["config"]["source"] == "file"
        assert store.load().pending is None and store.load().highest == 4
        sub.stop()
