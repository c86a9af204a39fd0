"""AWS IoT Core: limits (128 KB, 100 messages/s, 7 slashes), no retained messages, mutual TLS
against a broker shaped like AWS (certificate identity, a policy limited to the prefix)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.app.config import ConfigErrors, load_config
from agent.core.buffer import StoredBatch
from agent.north.formats import JsonFormat
from agent.north.formats.aws import AwsIotFormat
from agent.north.formats.split import split_doc
from agent.south.registry import load_drivers
from tests.brokers import Mosquitto, Subscriber, data_seqs
from tests.platforms.cloud import TlsSubscriber, aws_broker
from tests.test_failover import Rig, _settings


def _row(values: dict[str, object], seq: int = 3) -> StoredBatch:
    body = json.dumps({"ts": 5, "values": values}).encode()
    return StoredBatch(seq, "press-1", "data", seq, 5, body, 0.0)


def test_batch_over_128kb_is_split_into_parts_that_join_back() -> None:
    fmt = AwsIotFormat("gw", "edge/gw")
    values = {f"tag{i:05d}": i * 1.5 for i in range(12000)}  # about 200KB as JSON
    packs = fmt.pack([_row(values)])
    assert len(packs) == 2
    docs = [json.loads(p.message.payload) for p in packs]  # type: ignore[union-attr]
    assert all(len(p.message.payload) <= 128 * 1024 for p in packs)  # type: ignore[union-attr]
    assert [(d["part"], d["parts"], d["seq"], d["device"]) for d in docs] == [
        (1, 2, 3, "press-1"),
        (2, 2, 3, "press-1"),
    ]
    joined = {k: v for d in docs for k, v in d["values"].items()}
    assert joined == values
    assert [len(p.rows) for p in packs] == [0, 1]  # acknowledged with the last part
    small = fmt.pack([_row({"a": 1})])[0].message
    assert small is not None and json.loads(small.payload) == {
        "agent": "gw", "device": "press-1", "seq": 3, "ts": 5, "values": {"a": 1}
    }  # fmt: skip


def test_split_keeps_quality_with_its_part() -> None:
    doc = {"agent": "a", "device": "d", "seq": 1, "ts": 2, "values": {"x": "y" * 600}}
    doc["quality"] = {"q": "bad: " + "z" * 600}
    parts = split_doc(doc, 1000)
    assert [p.get("quality") for p in parts] == [None, {"q": doc["quality"]["q"]}]


def test_nothing_is_retained_and_the_will_says_offline() -> None:
    fmt = AwsIotFormat("gw", "edge/gw")
    assert fmt.will().retain is False and json.loads(fmt.will().payload) == {"online": False}
    assert all(not m.retain for m in fmt.online())
    status = fmt.retained_status("press-1", "down", "timeout", 7)
    assert status is not None and status.retain is False
    assert (fmt.max_rate, fmt.max_payload) == (100.0, 131072)


def _config(tmp_path: Path, mqtt: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"agent: {{id: gw}}\nmqtt:\n{mqtt}")
    return path


def test_config_needs_a_certificate_and_short_topics(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as exc:
        load_config(_config(tmp_path, "  format: aws\n"), load_drivers())
    assert "needs tls with cert_file" in exc.value.issues[0].message
    deep = (
        "  format: aws\n  topic_prefix: a/b/c/d/e/f\n  tls: {cert_file: c.pem, key_file: k.pem}\n"
    )
    with pytest.raises(ConfigErrors) as exc:
        load_config(_config(tmp_path, deep), load_drivers())
    assert "7 slashes" in exc.value.issues[0].message


async def test_rate_limit_paces_data_messages(tmp_path: Path, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, ["edge/gw/+/data"]).start()
    settings: SimpleNamespace = _settings([f"127.0.0.1:{broker.port}"], max_rate=20.0)
    async with Rig(tmp_path, settings, JsonFormat("gw", "edge/gw")) as rig:
        await rig.publisher.connected.wait()
        t0 = time.monotonic()
        await rig.put("d1", 40)
        await sub.wait_for(lambda m: len(data_seqs(m, "d1")) >= 40)
        took = time.monotonic() - t0
    sub.stop()
    # a bucket of one second (20) plus one round may go at once; the other ~12 wait 1/20 s each
    assert took >= 0.5, took
    assert data_seqs(sub.messages, "d1") == list(range(1, 41))


async def test_end_to_end_with_mutual_tls_and_a_prefix_policy(tmp_path: Path) -> None:
    broker, pki = aws_broker(tmp_path / "aws", "edge/gw")
    broker.start()
    platform = TlsSubscriber(broker.port, ["edge/gw/#"], client_id="iot-rule").with_tls(pki)
    platform.start()
    tls = SimpleNamespace(
        ca_file=pki / "ca.pem", cert_file=pki / "client.pem", key_file=pki / "client.key",
        verify=True,
    )  # fmt: skip
    settings = _settings([f"127.0.0.1:{broker.port}"], tls=tls)
    try:
        async with Rig(tmp_path, settings, AwsIotFormat("gw", "edge/gw")) as rig:
            rig.publisher.device_status("d1", "down", "timeout", 1.0)
            await rig.put("d1", 5)
            await platform.wait_for(lambda m: len(data_seqs(m, "d1")) >= 5)
            await platform.wait_for(lambda m: any(x.topic.endswith("d1/status") for x in m))
    finally:
        platform.stop()
        broker.stop()
    log = (tmp_path / "aws" / "mosquitto.log").read_text()
    assert "Denied PUBLISH from gw-test" not in log
    assert "u'client'" in log  # the certificate was the identity
    assert data_seqs(platform.messages, "d1") == [1, 2, 3, 4, 5]
    assert not any(m.retain for m in platform.messages)
