"""Batches holding one rate group, and calculated tags, through every format as its platform
reads it: generated from the format dialects of the seams matrix (tests/platforms/dialects.py,
one per registered format and variant), so a new format is covered without editing this file.

A Modbus device reads ``level`` every 100 ms and ``total`` every 500 ms (``every``), so most
batches hold the fast tag only and some the slow tag only; ``doubled`` is computed from
``level``. Each platform must receive both groups' values and the calculated tag, in the
format's documented shape (its adapter reports any other shape as a problem), on the real broker
its platform uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.streams import StreamKind
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import free_port
from tests.e2e import AgentRig, local_mqtt
from tests.platforms.dialects import AGENT_ID, DIALECTS, VARIANTS, Arrived, Dialect

pytestmark = pytest.mark.slow

COLUMNS = sorted({**DIALECTS, **VARIANTS})
LEVEL, TOTAL = 1124, 1126  # holding registers nothing else here uses


@pytest.fixture
def dialect(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Dialect]:
    column = request.param
    made = {**DIALECTS, **VARIANTS}[column](tmp_path / "platform")
    for key, value in made.env.items():
        monkeypatch.setenv(key, value)
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _config(path: Path, dialect: Dialect, sim_port: int) -> Path:
    reg = {"table": "holding", "type": "uint16"}
    doc: dict[str, Any] = {
        "agent": {"id": AGENT_ID, "data_dir": str(path.parent / "data"), **dialect.agent()},
        "mqtt": local_mqtt(dialect.broker.port, **dialect.mqtt(0)),
        "buffer": {"max_size": "16MB"},
        "metrics": {"listen": None},
        "devices": [
            {
                "name": "m1",
                "driver": "modbus",
                "poll_interval": "100ms",
                "connection": {"host": "127.0.0.1", "port": sim_port, "timeout": "300ms"},
                "tags": [
                    {"name": "level", "address": LEVEL, **reg},
                    {"name": "total", "address": TOTAL, **reg, "every": "500ms"},
                ],
                "calculated": [{"name": "doubled", "expr": "level * 2"}],
            }
        ],
    }
    path.write_text(json.dumps(doc, indent=1))
    return path


def _values(arrived: Arrived) -> list[dict[str, Any]]:
    return [v for v in arrived.of("m1", StreamKind.DATA) if isinstance(v, dict)]


def _arrived_both(arrived: Arrived) -> bool:
    values = _values(arrived)
    return any("total" in v for v in values) and any(
        v.get("level") == 21 and v.get("doubled") == 42 for v in values
    )


@pytest.mark.parametrize("dialect", COLUMNS, indirect=True)
async def test_rate_groups_and_calculated_tags_reach_every_platform(
    dialect: Dialect, tmp_path: Path
) -> None:
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as sim:
        sim.set_registers(1, "holding", LEVEL, [21, 0, 7])
        async with AgentRig(_config(tmp_path / "c.yaml", dialect, sim.port)):
            await dialect.platform.wait_for(lambda m: _arrived_both(dialect.decode(m)), timeout=20)
    arrived = dialect.decode(dialect.platform.snapshot())
    assert not arrived.problems, arrived.problems[:5]
    assert not dialect.problems(dialect.platform.snapshot())
    values = _values(arrived)
    # The slow tag came in values of its own (a batch of its rate group), with the device's
    # value.
    assert all(v["total"] == 7 for v in values if "total" in v)
    assert any("total" in v and "level" not in v for v in values), values
