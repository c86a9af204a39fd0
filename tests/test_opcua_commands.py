"""OPC UA writes, methods and Alarms & Conditions, end to end: the CNC simulator, the real agent, a
real mosquitto shaped like each platform, and the platform's own way of sending commands.

Every format registered in the entry-point group ``edge_agent.formats`` runs here (its platform
rig is the seams matrix's adapter, tests/platforms/dialects.py); ``CHANNELS`` says how each
platform sends a write and a call and reads the answer, as docs/platforms/<format>.md and
docs/devices/opcua.md document them. A registered format without a channel fails. Per format,
one agent run proves: a write within ``max`` reaches the machine (read back) and is answered; one
above it is refused and leaves the machine untouched; a method call returns the machine's
outputs; wrong argument types and an unknown method are refused at the agent (the machine sees
no call); an alarm the machine raises arrives as an event in the format's event shape; it is
acknowledged through a call; and the commands' rate limit answers the one too many.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.app.config import load_config
from agent.app.runtime import Agent
from agent.core.streams import EVENT_STREAM, StreamKind
from agent.north.formats.registry import available_formats
from agent.south.registry import load_drivers
from simulators.opcua_cnc import NAMESPACE, CncSimulator
from tests.brokers import Received, free_port
from tests.e2e import local_mqtt, until
from tests.faultproxy import FaultProxy
from tests.platforms.alibaba import SUB_PK, AlibabaResponder
from tests.platforms.cloud import IotHubResponder
from tests.platforms.dialects import (
    AGENT_ID,
    ALI_NAMES,
    DIALECTS,
    HW_IDS,
    SP_GROUPS,
    Dialect,
    JsonDialect,
)
from tests.platforms.huawei import GATEWAY as HW_GATEWAY
from tests.platforms.huawei import IotdaResponder
from tests.platforms.sparkplug_host import encode as sparkplug_encode
from tests.platforms.thingsboard import ThingsBoardResponder

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEVICE = "cnc-9"
START_JOB = {
    "name": "start_job",
    "object": f"nsu={NAMESPACE};s=Machine",
    "method": f"nsu={NAMESPACE};s=Machine.StartJob",
    "inputs": [{"name": "Job", "type": "String"}, {"name": "Count", "type": "UInt32"}],
}


def cnc_device(sim: CncSimulator, **keys: Any) -> dict[str, Any]:
    """The lathe as the contract's example declares it: a writable set-point with a range, a
    method, its alarms; three commands at once, then hardly any (the rate limit's test)."""
    return {
        "name": DEVICE,
        "driver": "opcua",
        "connection": {"endpoint": sim.endpoint, "timeout": "1s", "keepalive": "500ms"},
        "publishing_interval": "200ms",
        "commands": {"burst": 3, "per_second": 0.01},
        "tags": [
            {
                "name": "feed",
                "node": f"nsu={NAMESPACE};s=Setpoints.FeedOverride",
                "writable": True,
                "min": 0,
                "max": 150,
            },
            {"name": "parts", "node": f"nsu={NAMESPACE};i=1042"},
        ],
        "methods": [START_JOB],
        "events": [{"name": "machine_alarms", "source": "i=2253", "types": ["AlarmConditionType"]}],
        **keys,
    }


# -- each platform's command channel ----------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """An answer as the platform received it, in the agent's terms."""

    ok: bool
    error: str | None = None
    status: str | None = None
    outputs: list[Any] | None = None


class Replies(dict[str, Reply]):
    """Answers by command id; ``twice`` lists the ids answered more than once (a command gets
    one reply)."""

    def __init__(self) -> None:
        super().__init__()
        self.twice: list[str] = []

    def __setitem__(self, key: str, value: Reply) -> None:
        if key in self:
            self.twice.append(key)
        super().__setitem__(key, value)


class Channel:
    """How one platform sends a write and a call, and reads the answers (by command id)."""

    #: whether a write, and a call of a method the device does not have, are answered by a
    #: reply message (Sparkplug: a write by the data; a method has its Result metric only when
    #: the device declares it)
    replies_to_writes = True

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.count = 0

    def next_id(self) -> str:
        self.count += 1
        return str(self.count)

    def write(self, tag: str, value: Any) -> str:
        cmd_id = self.next_id()
        self._write(cmd_id, tag, value)
        return cmd_id

    def call(self, method: str, args: list[Any], named: dict[str, Any] | None = None) -> str:
        """A call with ``args`` in order, or by input name (``named``) where the platform
        names a service's inputs."""
        cmd_id = self.next_id()
        self._call(cmd_id, method, args, named if named is not None else {})
        return cmd_id

    def _write(self, cmd_id: str, tag: str, value: Any) -> None:
        raise NotImplementedError

    def _call(self, cmd_id: str, method: str, args: list[Any], named: dict[str, Any]) -> None:
        raise NotImplementedError

    def replies(self, messages: list[Received]) -> Replies:
        raise NotImplementedError

    def events(self, messages: list[Received]) -> list[dict[str, Any]]:
        return list(self.dialect.decode(messages).of(DEVICE, StreamKind.EVENT))


def _doc(m: Received) -> Any:
    try:
        return json.loads(m.payload)
    except ValueError:
        return None


def _agent_reply(doc: dict[str, Any]) -> Reply:
    return Reply(bool(doc.get("ok")), doc.get("error"), doc.get("status"), doc.get("outputs"))


class JsonChannel(Channel):
    """``<prefix>/<device>/cmd`` and ``cmd/reply`` (docs/platforms/json.md; aws the same)."""

    def _prefix(self) -> str:
        assert isinstance(self.dialect, JsonDialect)
        return self.dialect.prefix(0)

    def _write(self, cmd_id: str, tag: str, value: Any) -> None:
        doc = {"id": cmd_id, "write": {tag: value}}
        self.dialect.publish(f"{self._prefix()}/{DEVICE}/cmd", json.dumps(doc))

    def _call(self, cmd_id: str, method: str, args: list[Any], named: dict[str, Any]) -> None:
        doc = {"id": cmd_id, "call": {method: args}}
        self.dialect.publish(f"{self._prefix()}/{DEVICE}/cmd", json.dumps(doc))

    def replies(self, messages: list[Received]) -> Replies:
        out = Replies()
        for m in messages:
            if m.topic == f"{self._prefix()}/{DEVICE}/cmd/reply":
                doc = _doc(m)
                if isinstance(doc, dict) and isinstance(doc.get("id"), str):
                    out[doc["id"]] = _agent_reply(doc)
        return out


class ThingsBoardChannel(Channel):
    """RPC ``write`` and ``call`` on ``v1/gateway/rpc`` (docs/platforms/thingsboard.md)."""

    def _write(self, cmd_id: str, tag: str, value: Any) -> None:
        assert isinstance(self.dialect.platform, ThingsBoardResponder)
        self.dialect.platform.rpc(DEVICE, int(cmd_id), "write", {tag: value})

    def _call(self, cmd_id: str, method: str, args: list[Any], named: dict[str, Any]) -> None:
        assert isinstance(self.dialect.platform, ThingsBoardResponder)
        self.dialect.platform.rpc(DEVICE, int(cmd_id), "call", {method: args})

    def replies(self, messages: list[Received]) -> Replies:
        out = Replies()
        for m in messages:
            doc = _doc(m)
            if m.topic == "v1/gateway/rpc" and isinstance(doc, dict) and "id" in doc:
                data = doc.get("data", {})
                out[str(doc["id"])] = Reply(
                    data.get("success") is True,
                    data.get("error"),
                    data.get("status"),
                    data.get("outputs"),
                )
        return out


class AzureChannel(Channel):
    """Direct methods ``write`` and ``call`` (docs/platforms/azure.md)."""

    def _write(self, cmd_id: str, tag: str, value: Any) -> None:
        assert isinstance(self.dialect.platform, IotHubResponder)
        self.dialect.platform.invoke("write", cmd_id, {"device": DEVICE, "write": {tag: value}})

    def _call(self, cmd_id: str, method: str, args: list[Any], named: dict[str, Any]) -> None:
        assert isinstance(self.dialect.platform, IotHubResponder)
        body = {"device": DEVICE, "call": {method: args}}
        self.dialect.platform.invoke("call", cmd_id, body)

    def replies(self, messages: list[Received]) -> Replies:
        out = Replies()
        for m in messages:
            if m.topic.startswith("$iothub/methods/res/"):
                rid = urllib.parse.parse_qs(m.topic.partition("?")[2]).get("$rid", [""])[0]
                doc = _doc(m)
                if isinstance(doc, dict):
                    out[rid] = _agent_reply(doc)
        return out


class AlibabaChannel(Channel):
    """``thing.service.property.set`` writes and ``thing.service.<method>`` services with
    inputs by name (docs/platforms/alibaba.md)."""

    def _name(self) -> str:
        return ALI_NAMES.of(DEVICE, 0)

    def _write(self, cmd_id: str, tag: str, value: Any) -> None:
        assert isinstance(self.dialect.platform, AlibabaResponder)
        self.dialect.platform.property_set(self._name(), cmd_id, {tag: value})

    def _call(self, cmd_id: str, method: str, args: list[Any], named: dict[str, Any]) -> None:
        doc = {"id": cmd_id, "version": "1.0", "params": named, "method": f"thing.service.{method}"}
        topic = f"/sys/{SUB_PK}/{self._name()}/thing/service/{method}"
        self.dialect.publish(topic, json.dumps(doc))

    def replies(self, messages: list[Received]) -> Replies:
        out = Replies()
        base = f"/sys/{SUB_PK}/{self._name()}/thing/service/"
        for m in messages:
            doc = _doc(m)
            if not (m.topic.startswith(base) and m.topic.endswith("_reply")):
                continue
            if isinstance(doc, dict) and "code" in doc:
                ok = doc["code"] == 200
                data = doc.get("data") or {}
                out[str(doc.get("id"))] = Reply(
                    ok, None if ok else doc.get("message"), data.get("status"), data.get("outputs")
                )
        return out


class HuaweiChannel(Channel):
    """Commands ``write`` and ``<method>`` with paras by input name (docs/platforms/huawei.md)."""

    def _write(self, cmd_id: str, tag: str, value: Any) -> None:
        assert isinstance(self.dialect.platform, IotdaResponder)
        self.dialect.platform.command(cmd_id, HW_IDS.of(DEVICE, 0), "write", {tag: value})

    def _call(self, cmd_id: str, method: str, args: list[Any], named: dict[str, Any]) -> None:
        assert isinstance(self.dialect.platform, IotdaResponder)
        self.dialect.platform.command(cmd_id, HW_IDS.of(DEVICE, 0), method, named)

    def replies(self, messages: list[Received]) -> Replies:
        out = Replies()
        prefix = f"$oc/devices/{HW_GATEWAY}/sys/commands/response/request_id="
        for m in messages:
            doc = _doc(m)
            if m.topic.startswith(prefix) and isinstance(doc, dict):
                paras = doc.get("paras", {})
                out[m.topic[len(prefix) :]] = Reply(
                    doc.get("result_code") == 0,
                    paras.get("error"),
                    paras.get("status"),
                    paras.get("outputs"),
                )
        return out


class SparkplugChannel(Channel):
    """DCMD metrics: a tag by name (its value in the data answers), ``Methods/<name>`` holding
    the JSON arguments (the reply comes as ``Methods/<name>/Result``), docs/platforms/
    sparkplug.md. A refused write has no answer at all: the data just does not change."""

    replies_to_writes = False

    def __init__(self, dialect: Dialect) -> None:
        super().__init__(dialect)
        self.sent: dict[str, tuple[str, Any]] = {}

    def _topic(self) -> str:
        return f"spBv1.0/{SP_GROUPS[0]}/DCMD/{AGENT_ID}/{DEVICE}"

    def _write(self, cmd_id: str, tag: str, value: Any) -> None:
        self.sent[cmd_id] = ("write", (tag, value))
        body = f'metrics {{ name: "{tag}" datatype: 10 double_value: {float(value)} }}'
        self.dialect.publish(self._topic(), sparkplug_encode(body))

    def _call(self, cmd_id: str, method: str, args: list[Any], named: dict[str, Any]) -> None:
        self.sent[cmd_id] = ("call", method)
        text = json.dumps(json.dumps(args))  # the JSON arguments as a protobuf text string
        body = f'metrics {{ name: "Methods/{method}" datatype: 12 string_value: {text} }}'
        self.dialect.publish(self._topic(), sparkplug_encode(body))

    def replies(self, messages: list[Received]) -> Replies:
        data = self.dialect.decode(messages).of(DEVICE, StreamKind.DATA)
        results = [
            (key, json.loads(v))
            for values in data
            for key, v in values.items()
            if key.startswith("Methods/") and key.endswith("/Result") and isinstance(v, str)
        ]
        out = Replies()
        taken: set[int] = set()
        for cmd_id, (kind, what) in self.sent.items():
            if kind == "write":
                tag, value = what
                if any(v.get(tag) == value for v in data):
                    out[cmd_id] = Reply(True)
                continue
            # the results of a method in order: the first one not yet matched is this call's
            for i, (key, doc) in enumerate(results):
                if i not in taken and key == f"Methods/{what}/Result":
                    taken.add(i)
                    out[cmd_id] = _agent_reply(doc)
                    break
        return out


#: Each registered format's command channel (json-templates is json's, not a format of its own).
CHANNELS: dict[str, Callable[[Dialect], Channel]] = {
    "json": JsonChannel,
    "aws": JsonChannel,
    "thingsboard": ThingsBoardChannel,
    "azure": AzureChannel,
    "alibaba": AlibabaChannel,
    "huawei": HuaweiChannel,
    "sparkplug": SparkplugChannel,
}
FORMATS = sorted(available_formats())


async def test_every_registered_format_has_a_command_channel() -> None:
    missing = sorted(set(FORMATS) - set(CHANNELS))
    assert not missing, (
        f"formats without an OPC UA command channel in this test: {missing}: add how the "
        "platform sends a write and a call and reads the answer to CHANNELS"
    )


# -- the rig ----------------------------------------------------------------------------------


class Rig:
    """The simulator, one format's platform and the agent."""

    def __init__(self, fmt: str, tmp_path: Path, sim: CncSimulator) -> None:
        self.sim = sim
        self.dialect = DIALECTS[fmt](tmp_path / "platform")
        self.dialect.devices[0] = [DEVICE]
        self.channel = CHANNELS[fmt](self.dialect)
        self.cfg = tmp_path / "agent" / "config.yaml"
        self.cfg.parent.mkdir(parents=True)

    def write_config(self, device: dict[str, Any]) -> None:
        doc = {
            "agent": {
                "id": AGENT_ID,
                "data_dir": str(self.cfg.parent / "data"),
                **self.dialect.agent(),
            },
            "mqtt": local_mqtt(self.dialect.broker.port, **self.dialect.mqtt(0)),
            "metrics": {"listen": None},
            "devices": [device],
        }
        self.cfg.write_text(json.dumps(doc, indent=2))

    @asynccontextmanager
    async def agent(self) -> AsyncIterator[Agent]:
        config = load_config(self.cfg, load_drivers(), resolve_secrets=True)
        agent = Agent(config, config_path=self.cfg)
        await agent.start()
        try:
            yield agent
        finally:
            await agent.stop()

    async def reply(self, cmd_id: str, timeout: float = 10.0) -> Reply:
        found: dict[str, Reply] = {}

        def answered(messages: list[Received]) -> bool:
            found.update(self.channel.replies(messages))
            return cmd_id in found

        try:
            await self.dialect.platform.wait_for(answered, timeout=timeout)
        except AssertionError:
            pytest.fail(f"command {cmd_id} never answered")
        return found[cmd_id]

    async def data(self) -> None:
        """Await the device's first data on the platform: connected, born, registered."""

        def arrived(messages: list[Received]) -> bool:
            return bool(self.dialect.decode(messages).of(DEVICE, StreamKind.DATA))

        try:
            await self.dialect.platform.wait_for(arrived, timeout=15)
        except AssertionError:
            pytest.fail("the device's data never arrived")

    async def event(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def arrived(messages: list[Received]) -> bool:
            found[:] = [e for e in self.channel.events(messages) if match(e)]
            return bool(found)

        try:
            await self.dialect.platform.wait_for(arrived, timeout=10)
        except AssertionError:
            pytest.fail(f"no such event: {self.channel.events(self.dialect.platform.snapshot())}")
        return found[-1]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cnc() -> AsyncIterator[CncSimulator]:
    """One simulator for the module (its start is most of a test's setup), reset per test."""
    sim = CncSimulator(port=free_port(), update_interval=None)
    await sim.start()
    yield sim
    await sim.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def rig(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cnc: CncSimulator,
) -> AsyncIterator[Rig]:
    await cnc.reset()
    r = Rig(request.param, tmp_path, cnc)
    for key, value in r.dialect.env.items():
        monkeypatch.setenv(key, value)
    r.dialect.start()
    try:
        yield r
    finally:
        r.dialect.stop()


@pytest.mark.slow
@pytest.mark.parametrize("rig", FORMATS, indirect=True)
async def test_writes_calls_and_alarms_through_the_platform(rig: Rig) -> None:
    rig.write_config(cnc_device(rig.sim))
    async with rig.agent():
        await rig.data()
        ch = rig.channel
        # A write within max reaches the machine, read back, and is answered.
        reply = await rig.reply(ch.write("feed", 80))
        assert reply.ok, reply
        assert await rig.sim.value("Setpoints/FeedOverride") == 80.0
        # One above max is refused at the agent: the machine keeps 80.
        if ch.replies_to_writes:
            reply = await rig.reply(ch.write("feed", 500))
            assert not reply.ok and "above max 150" in str(reply.error), reply
        else:
            ch.write("feed", 500)
            await asyncio.sleep(0.5)  # Sparkplug has no refusal on the wire: nothing may change
        assert await rig.sim.value("Setpoints/FeedOverride") == 80.0
        # A method call: the machine's status and outputs come back.
        reply = await rig.reply(ch.call("start_job", ["JOB-42", 5], {"Job": "JOB-42", "Count": 5}))
        assert reply == Reply(True, None, "Good", [1]), reply
        assert rig.sim.calls == [("StartJob", ["JOB-42", 5])]
        # Wrong types and an unknown method are refused at the agent: no call reaches it.
        reply = await rig.reply(ch.call("start_job", ["JOB-43", "five"], {"Job": 1, "Count": 5}))
        assert not reply.ok and "argument" in str(reply.error), reply
        unknown = ch.call("self_destruct", [], {})
        if ch.replies_to_writes:
            reply = await rig.reply(unknown)
            assert not reply.ok and "unknown method 'self_destruct'" in str(reply.error), reply
        assert rig.sim.calls == [("StartJob", ["JOB-42", 5])]
        # The machine raises an alarm: an event in the format's event shape.
        await rig.sim.raise_alarm("SpindleOverTemp")
        event = await rig.event(
            lambda e: e.get("alarm") == "SpindleOverTemp" and e.get("event") == "raise"
        )
        assert event["severity"] == 700
        # Acknowledged through a call, by the alarm's name.
        named = {"condition": "SpindleOverTemp", "comment": "seen"}
        reply = await rig.reply(ch.call("acknowledge", ["SpindleOverTemp", "seen"], named))
        assert reply.ok and reply.status == "Good", reply
        assert ("Acked", ["ns=2;s=Alarms.SpindleOverTemp"]) in rig.sim.calls
        await rig.event(lambda e: e.get("alarm") == "SpindleOverTemp" and e.get("acked") is True)
        # The fourth command that takes a token is one too many (burst 3, then 0.01/s).
        reply = await rig.reply(ch.call("start_job", ["JOB-44", 1], {"Job": "JOB-44", "Count": 1}))
        assert not reply.ok and "rate limited" in str(reply.error), reply
        assert len(rig.sim.calls) == 2
        # one reply per command
        assert not ch.replies(rig.dialect.platform.snapshot()).twice


@pytest.mark.slow
@pytest.mark.parametrize("rig", ["json"], indirect=True)
async def test_a_call_cut_off_is_answered_and_alarms_raised_meanwhile_arrive(rig: Rig) -> None:
    """The machine's link dies while it works on a call: the reply says so (an error, not
    silence). An alarm raised while the agent cannot reach the machine arrives after the
    reconnect, from the ConditionRefresh. The command channel does not matter here (the json
    one stands for all: the per-format test above shows each reaches the same handler)."""
    async with FaultProxy(rig.sim.port) as proxy:
        entry = cnc_device(rig.sim)
        entry["connection"]["endpoint"] = f"opc.tcp://127.0.0.1:{proxy.port}/cnc"
        rig.write_config(entry)
        async with rig.agent():
            await rig.data()
            rig.sim.call_delay = 1.0
            cmd = rig.channel.call("start_job", ["JOB-50", 1])
            await until(lambda: bool(rig.sim.calls), timeout=10)
            proxy.set("reset")
            reply = await rig.reply(cmd)
            assert not reply.ok and "device down" in str(reply.error), reply
            rig.sim.call_delay = 0.0
            await rig.sim.raise_alarm("DoorOpen")
            proxy.set("pass")
            event = await rig.event(lambda e: e.get("alarm") == "DoorOpen")
            assert event["event"] == "raise" and event["severity"] == 300


@pytest.mark.slow
@pytest.mark.parametrize("rig", ["json"], indirect=True)
async def test_alarms_raised_while_the_broker_is_away_are_buffered_and_replayed(rig: Rig) -> None:
    """The machine's alarms are buffered like data: raised and cleared while the broker is
    down, both arrive once it is back, in order, from the buffer."""
    rig.write_config(cnc_device(rig.sim))
    async with rig.agent() as agent:
        await rig.data()
        rig.dialect.broker.stop()
        await until(lambda: not agent.publisher.connected.is_set(), timeout=10)
        await rig.sim.raise_alarm("SpindleOverTemp")
        await rig.sim.clear_alarm("SpindleOverTemp")
        async with asyncio.timeout(10):
            # Polling in-process state: the buffer's own event is the publisher's to clear.
            while (  # noqa: ASYNC110
                sum(r.kind == EVENT_STREAM for r in await agent.buffer.fetch(0, 100)) < 2
            ):
                await asyncio.sleep(0.05)
        rig.dialect.broker.start()
        await rig.event(lambda e: e.get("alarm") == "SpindleOverTemp" and e["event"] == "clear")
        kinds = [
            e["event"]
            for e in rig.channel.events(rig.dialect.platform.snapshot())
            if e.get("alarm") == "SpindleOverTemp"
        ]
        assert kinds == ["raise", "clear"], kinds
