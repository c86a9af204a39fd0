"""Azure IoT Hub: SAS tokens as Microsoft documents them (and as openssl computes the HMAC),
the MQTT user name and topics of the IoT Hub MQTT documentation, direct methods to writes, and
an end-to-end run against a broker shaped like IoT Hub with a responder playing the hub."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.parse
from base64 import b64decode, b64encode
from hashlib import sha256
from hmac import HMAC
from pathlib import Path
from typing import Any

import pytest

from agent.north.formats.azure import AzureIotFormat, sas_token
from tests.brokers import Mosquitto
from tests.e2e import until
from tests.platforms.cloud import AZURE_DEVICE, AZURE_HUB, IotHubResponder, azure_broker
from tests.platforms.common import RecordingTarget, press_commands
from tests.test_failover import Rig, _settings

KEY = base64.b64encode(b"a device key of 32 bytes length!").decode()
NOW = 1_700_000_000


def _documented_generate_sas_token(uri: str, key: str, policy_name: Any, ttl: int) -> str:
    """The Python sample of Microsoft's "Control access to IoT Hub with shared access
    signatures" (time() replaced by the fixed ``ttl`` so the result can be compared)."""
    sign_key = "%s\n%d" % ((urllib.parse.quote_plus(uri)), int(ttl))  # noqa: UP031
    signature = b64encode(HMAC(b64decode(key), sign_key.encode("utf-8"), sha256).digest())
    rawtoken = {"sr": uri, "sig": signature, "se": str(int(ttl))}
    if policy_name is not None:
        rawtoken["skn"] = policy_name
    return "SharedAccessSignature " + urllib.parse.urlencode(rawtoken)


def test_sas_token_matches_the_documented_algorithm_and_openssl() -> None:
    uri = f"{AZURE_HUB}/devices/{AZURE_DEVICE}"
    ours = sas_token(uri, KEY, NOW + 3600)
    assert ours == _documented_generate_sas_token(uri, KEY, None, NOW + 3600)
    assert ours.startswith(
        "SharedAccessSignature sr=contoso.azure-devices.net%2Fdevices%2FMyDevice01&sig="
    )
    assert ours.endswith(f"&se={NOW + 3600}")
    # the HMAC once more, by openssl
    to_sign = f"{urllib.parse.quote_plus(uri)}\n{NOW + 3600}".encode()
    done = subprocess.run(
        ["openssl", "dgst", "-sha256", "-mac", "HMAC", "-macopt",
         f"hexkey:{base64.b64decode(KEY).hex()}", "-binary"],
        input=to_sign, capture_output=True, check=True,
    )  # fmt: skip
    sig = urllib.parse.parse_qs(ours.removeprefix("SharedAccessSignature "))["sig"][0]
    assert sig == base64.b64encode(done.stdout).decode()
    assert "skn=" in sas_token(AZURE_HUB, KEY, NOW, policy="iothubowner")


def test_user_name_topics_and_renewal_as_documented() -> None:
    fmt = AzureIotFormat("gw", AZURE_HUB, AZURE_DEVICE, token_ttl=3600, clock=lambda: NOW)
    user, password = fmt.credentials(None, KEY)
    # "contoso.azure-devices.net/MyDevice01/?api-version=2021-04-12" in Microsoft's MQTT guide
    assert user == "contoso.azure-devices.net/MyDevice01/?api-version=2021-04-12"
    assert password == sas_token(f"{AZURE_HUB}/devices/{AZURE_DEVICE}", KEY, NOW + 3600)
    assert fmt.session_deadline() == NOW + 3600 - 360
    assert fmt.credentials(None, None) == (user, None)  # X.509: no token, no renewal
    assert fmt.session_deadline() is None
    will = fmt.will()
    assert will.topic.startswith("devices/MyDevice01/messages/events/") and not will.retain
    bag = urllib.parse.parse_qs(will.topic.rsplit("/", 1)[1])
    assert bag["$.ct"] == ["application/json"] and bag["type"] == ["status"]
    assert fmt.subscriptions() == ("$iothub/methods/POST/#",)


def test_direct_methods() -> None:
    fmt = AzureIotFormat("gw", AZURE_HUB, AZURE_DEVICE)
    body = json.dumps({"device": "press-1", "write": {"sp": 3}}).encode()
    reaction = fmt.incoming("$iothub/methods/POST/write/?$rid=1", body)
    assert reaction is not None and reaction.command is not None
    assert (reaction.command.device, reaction.command.writes) == ("press-1", {"sp": 3})
    reply = fmt.reply(reaction.command, {"id": "1", "ok": True})
    assert reply is not None and reply.topic == "$iothub/methods/res/200/?$rid=1"
    unknown = fmt.incoming("$iothub/methods/POST/reboot/?$rid=2", b"{}")
    assert unknown is not None and unknown.publish[0].topic == "$iothub/methods/res/404/?$rid=2"
    bad = fmt.incoming("$iothub/methods/POST/write/?$rid=3", b"[1]")
    assert bad is not None and bad.publish[0].topic == "$iothub/methods/res/400/?$rid=3"


async def test_end_to_end_against_an_iot_hub_shaped_broker(tmp_path: Path) -> None:
    fmt = AzureIotFormat("gw", AZURE_HUB, AZURE_DEVICE, clock=lambda: NOW + 10**9)
    user, token = fmt.credentials(None, KEY)
    assert user is not None and token is not None
    broker = azure_broker(tmp_path / "hub", user, token)
    broker.start()
    hub = IotHubResponder(
        broker.port, ["devices/+/messages/events/#", "$iothub/methods/res/#"], client_id="hub"
    ).start()
    target = RecordingTarget()
    commands = press_commands(target)
    settings = _settings([f"127.0.0.1:{broker.port}"], username=None)
    try:
        async with Rig(tmp_path, settings, fmt, commands, KEY) as rig:
            await rig.put("press-1", 3)
            await hub.wait_for(lambda m: sum("seq=" in x.topic for x in m) >= 3)
            hub.invoke("write", "7", {"device": "press-1", "write": {"sp": 42}})
            await hub.wait_for(lambda m: any("/res/" in x.topic for x in m))
            await until(lambda: rig.buffer.stats().batches == 0, timeout=5)
    finally:
        hub.stop()
        broker.stop()
    log = (tmp_path / "hub" / "mosquitto.log").read_text()
    assert "Denied PUBLISH from gw-test" not in log
    events = [m for m in hub.messages if "seq=" in m.topic]
    bags = [urllib.parse.parse_qs(m.topic.rsplit("/", 1)[1]) for m in events]
    assert [b["seq"][0] for b in bags] == ["1", "2", "3"]
    assert {b["device"][0] for b in bags} == {"press-1"}
    assert json.loads(events[0].payload)["seq"] == 1  # the contract's payload
    [res] = [m for m in hub.messages if "/res/" in m.topic]
    assert res.topic == "$iothub/methods/res/200/?$rid=7"
    assert target.written == {"sp": 42}


@pytest.mark.slow
async def test_token_is_renewed_before_it_expires(tmp_path: Path, broker: Mosquitto) -> None:
    fmt = AzureIotFormat("gw", AZURE_HUB, AZURE_DEVICE, token_ttl=1.0)
    async with Rig(tmp_path, _settings([f"127.0.0.1:{broker.port}"]), fmt, None, KEY) as rig:
        await until(lambda: rig.publisher.sessions >= 2, timeout=5)
        # a planned reconnect, not an error
        assert rig.metrics.registry.get_sample_value("edge_agent_publish_errors_total") == 0.0
