"""OPC UA pieces that need no server: config rules, value and quality mapping, ts_source."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from pydantic import ValidationError

from agent.core.record import encode_batch
from drivers.base import Batch, Quality, Reading
from drivers.opcua.config import OpcuaDevice, parse_node
from drivers.opcua.convert import quality_of, shortest_float32, to_value
from drivers.opcua.endpoints import ServerCertificate, first_certificate
from simulators.opcua_cnc import POINTS
from tests.certs import make_pki
from tests.test_opcua_support import tag_name


def _device(**extra: Any) -> dict[str, Any]:
    return {
        "name": "lathe-3",
        "driver": "opcua",
        "connection": {"endpoint": "opc.tcp://10.0.0.20:4840/cnc"},
        "tags": [{"name": "speed", "node": "nsu=urn:vendor:cnc;s=Spindle.Speed"}],
        **extra,
    }


def test_subscribe_mode_polls_at_the_publishing_interval() -> None:
    dev = OpcuaDevice.model_validate(_device(publishing_interval="500ms"))
    assert dev.mode == "subscribe" and dev.poll_interval == 0.5
    assert OpcuaDevice.model_validate(_device()).poll_interval == 1.0
    polled = OpcuaDevice.model_validate(_device(mode="poll", poll_interval="2s"))
    assert polled.poll_interval == 2.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"poll_interval": "1s"}, "subscribe mode uses publishing_interval"),
        ({"mode": "poll", "publishing_interval": "1s"}, "publishing_interval is for mode"),
        ({"connection": {"endpoint": "http://x"}}, "invalid endpoint"),
        (
            {"connection": {"endpoint": "opc.tcp://h:4840", "password": "x"}},
            "inline passwords are not allowed",
        ),
        (
            {"connection": {"endpoint": "opc.tcp://h:4840", "username": "u"}},
            "a username needs password_env or password_file",
        ),
        (
            {"connection": {"endpoint": "opc.tcp://h:4840", "security": {"policy": "Basic256"}}},
            "policy Basic256 is deprecated",
        ),
        (
            {"connection": {"endpoint": "opc.tcp://h:4840", "security": {"policy": "Basic512"}}},
            "Input should be",
        ),
        (
            {
                "connection": {
                    "endpoint": "opc.tcp://h:4840",
                    "security": {"policy": "Basic128Rsa15", "allow_deprecated": True},
                }
            },
            "needs cert_file, key_file and server_cert_file",
        ),
        ({"tags": [{"name": "t"}]}, "a tag needs node or browse_path"),
        ({"tags": [{"name": "t", "node": "ns=2;q=1"}]}, "invalid node id"),
    ],
)
def test_bad_entries_are_refused(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        OpcuaDevice.model_validate(_device(**extra))
    assert message in str(info.value)


def test_node_ids_by_namespace_uri_keep_the_uri() -> None:
    uri, node = parse_node("nsu=urn:vendor:cnc;s=Spindle.Speed")
    assert uri == "urn:vendor:cnc" and node.Identifier == "Spindle.Speed"
    uri, node = parse_node("ns=2;i=1042")
    assert uri is None and node == ua.NodeId(1042, 2)


def test_status_codes_map_to_quality() -> None:
    assert quality_of(ua.StatusCode(ua.StatusCodes.Good)) == (Quality.GOOD, None)
    assert quality_of(ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue)) == (
        Quality.UNCERTAIN,
        "UncertainLastUsableValue",
    )
    assert quality_of(ua.StatusCode(ua.StatusCodes.BadSensorFailure)) == (
        Quality.BAD,
        "BadSensorFailure",
    )


def test_values_take_their_json_form() -> None:
    raw = struct.unpack("<f", struct.pack("<f", 229.8))[0]
    assert raw != 229.8 and shortest_float32(raw) == 229.8
    assert to_value(ua.Variant([raw, 1.5], ua.VariantType.Float)) == [229.8, 1.5]
    assert to_value(ua.Variant(ua.LocalizedText("Läuft"))) == "Läuft"
    assert tag_name(POINTS["Spindle/Speed"]) == "spindle_speed"


def test_source_timestamps_ride_along_where_they_differ_from_the_batch_time() -> None:
    batch = Batch(
        device="lathe-3",
        ts=1000.5,
        readings=[
            Reading("speed", 1200.0, 1000.5, source_ts=990.25),
            Reading("load", 42.5, 1000.5, source_ts=1000.5),
            Reading("temp", 35.0, 1000.5),
        ],
    )
    doc = json.loads(encode_batch(batch))
    assert doc["ts"] == 1000500
    assert doc["ts_source"] == {"speed": 990250}
    plain = Batch(device="d", ts=1.0, readings=[Reading("a", 1, 1.0)])
    assert "ts_source" not in json.loads(encode_batch(plain))


def test_a_certificate_chain_yields_the_servers_own_certificate(tmp_path: Path) -> None:
    """Servers may send their chain in ServerCertificate (DER after DER); the thumbprint and the
    pinned comparison are of the first one."""
    pki = make_pki(tmp_path)
    own = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    der_own = own.public_bytes(serialization.Encoding.DER)
    der_ca = ca.public_bytes(serialization.Encoding.DER)
    assert first_certificate(der_own + der_ca) == der_own
    assert first_certificate(der_own) == der_own
    parsed = ServerCertificate.parse(der_own + der_ca)
    assert parsed is not None and parsed.subject == "CN=server"
    assert parsed.sha1 == own.fingerprint(hashes.SHA1()).hex(":").upper()
    assert ServerCertificate.parse(b"\x30\x03abc") is None
