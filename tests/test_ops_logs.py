"""Logs as an operator and a shipper read them: one line per state change, secrets never."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from agent.ops.logs import JsonFormatter, TextFormatter
from tests.brokers import Mosquitto
from tests.e2e import write_config
from tests.test_ops_rig import AgentProcess

SECRET = "hunter2-do-not-log"


def record(**extra: object) -> logging.LogRecord:
    r = logging.LogRecord("agent.x", logging.WARNING, __file__, 1, "device down", None, None)
    r.__dict__.update(extra)
    return r


def test_both_formats_carry_the_fields_and_mask_secret_named_ones() -> None:
    r = record(device="press-1", reason="connection refused", password=SECRET, mqtt_token=SECRET)
    text = TextFormatter().format(r)
    assert 'device=press-1 reason="connection refused" password=*** mqtt_token=***' in text
    doc = json.loads(JsonFormatter().format(r))
    assert doc["device"] == "press-1" and doc["level"] == "warning"
    assert doc["msg"] == "device down" and doc["ts"].endswith("Z")
    assert SECRET not in text + json.dumps(doc)


@pytest.mark.slow
async def test_debug_logs_of_a_real_run_never_hold_the_password(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cfg = write_config(tmp_path / "c.yaml", broker_port=broker.port, modbus_port=1, devices=[])
    doc = json.loads(cfg.read_text())
    doc["mqtt"].update({"username": "gw", "password_env": "MQTT_PASS"})
    doc["devices"] = [
        {
            "name": "gone",
            "driver": "modbus",
            "poll_interval": "100ms",
            "connection": {"host": "127.0.0.1", "port": 1, "timeout": "100ms"},
            "tags": [{"name": "t", "table": "holding", "address": 0, "type": "uint16"}],
        }
    ]
    cfg.write_text(json.dumps(doc))
    env = {"MQTT_PASS": SECRET}
    with AgentProcess(cfg, env=env, args=["--log-level", "debug"]) as agent:
        agent.wait_msg("connected to broker")
        agent.wait_msg("device down")
        # Several failed attempts later (each one an all-bad batch), still one line.
        await asyncio.sleep(2.5)
    assert agent.proc.returncode == 0
    output = "\n".join(agent.raw)
    assert SECRET not in output
    downs = [x for x in agent.lines if x.get("msg") == "device down"]
    assert len(downs) == 1, downs
