"""Scan rates and calculated tags on every registered driver, generated from the driver registry
(the kinds of ``tests/test_claims_drivers.py``), so a new driver is covered without editing
this file: a device the agent polls reads a slow tag (``every``) less often than its fast one,
each group in messages of its own, and a calculated tag follows the fast tag; a device the
device itself drives (an OPC UA subscription, a streaming instrument) refuses ``every`` before
start with the reason. Real simulators, the agent as ``edge-agent run`` builds it, mosquitto."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.app.config import ConfigErrors, load_config
from tests.brokers import Mosquitto, Subscriber, free_port
from tests.e2e import AgentRig, local_mqtt
from tests.test_claims_drivers import DRIVERS, Kind, kinds_of_registered_drivers, need_kind

pytestmark = pytest.mark.slow

#: The device's poll_interval is the kinds' 100 ms; the slow tag is read five times slower.
SLOW_EVERY = "500ms"


def _refuses_rates(kind: Kind) -> bool:
    """Kinds whose device talks by itself (the README's "by exception" devices, streams)."""
    return kind.by_exception or kind.entry(kind.fake_where).get("mode") == "stream"


def _config(tmp: Path, kind: Kind, where: Any, broker_port: int) -> Path:
    doc = {
        "agent": {"id": "rates", "data_dir": str(tmp / "data")},
        "mqtt": local_mqtt(broker_port),
        "metrics": {"listen": None},
        "devices": [
            {
                "name": "dev",
                "driver": kind.driver,
                **kind.entry(where),
                "tags": [
                    {"name": "fast", **kind.num},
                    {"name": "slow", **kind.other, "every": SLOW_EVERY},
                ],
                "calculated": [{"name": "calc", "expr": "fast * 2"}],
            }
        ],
    }
    path = tmp / "agent.yaml"
    path.write_text(json.dumps(doc, indent=1))
    return path


@pytest.mark.parametrize("kind", kinds_of_registered_drivers())
async def test_every_driver_reads_a_slow_tag_slower_or_refuses_it(
    kind: Kind | str, tmp_path: Path, broker: Mosquitto
) -> None:
    kind = need_kind(kind)
    if _refuses_rates(kind):
        with pytest.raises(ConfigErrors) as caught:
            load_config(_config(tmp_path, kind, kind.fake_where, broker.port), DRIVERS)
        messages = [i.message for i in caught.value.issues]
        assert len(messages) == 1 and "every and scan_group are not possible here" in messages[0]
        return
    async with kind.start() as live:
        await live.set(42)
        path = _config(tmp_path, kind, live.where, broker.port)
        sub = Subscriber(broker.port, ["edge/rates/dev/data"], client_id=f"rates-{free_port()}")
        sub.start()
        try:
            async with AgentRig(path):
                msgs = await sub.wait_for(
                    lambda m: sum("slow" in json.loads(x.payload)["values"] for x in m) >= 3,
                    timeout=15,
                )
        finally:
            sub.stop()
    docs = [m.json()["values"] for m in msgs]
    slow_at = [i for i, d in enumerate(docs) if "slow" in d]
    fast_groups = [d for d in docs if "slow" not in d]
    # Each group in messages of its own: the slow tag alone, the fast tag with what follows it.
    assert all(set(docs[i]) == {"slow"} for i in slow_at), docs
    assert all(set(d) <= {"fast", "calc"} for d in fast_groups), docs
    between = sum("fast" in d for d in docs[slow_at[0] : slow_at[2]])
    assert between >= 5, (between, docs)  # about 10 at five times the slow tag's rate
    with_both = [d for d in fast_groups if {"fast", "calc"} <= set(d)]
    assert with_both and all(d["calc"] == 2 * d["fast"] for d in with_both), docs
    assert with_both[-1]["fast"] == 42
