"""Config loading: units, positions, every error at once, secrets, profiles, schema and the CLI.

Uses two small fake drivers so the loader is tested independently of the Modbus driver; the
corpus in tests/config_cases/ runs against the real installed drivers.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field, SecretStr, model_validator

from agent.app.cli import main
from agent.app.config import (
    Config,
    ConfigErrors,
    ConfigIssue,
    build_config_model,
    config_schema,
    load_config,
)
from agent.app.config.models import parse_listen
from agent.south.registry import DriverConflictError, load_drivers
from drivers.base import (
    DeviceBase,
    Driver,
    Duration,
    ProfileBase,
    Reading,
    Size,
    StrictModel,
    TagBase,
)

REPO = Path(__file__).resolve().parent.parent


class FakeTag(TagBase):
    table: Literal["holding", "coil"]
    address: int = Field(ge=0, le=65535)
    type: Literal["bool", "int16", "float32"]

    @model_validator(mode="after")
    def _coil_bool(self) -> FakeTag:
        if self.table == "coil" and self.type != "bool":
            raise ValueError("coil tags must be type bool")
        return self


class FakeConnection(StrictModel):
    host: str
    port: int = Field(default=502, ge=1, le=65535)


class FakeDevice(DeviceBase):
    driver: Literal["fake"]
    connection: FakeConnection
    tags: Sequence[FakeTag] = Field(default_factory=list)


class FakeProfile(ProfileBase):
    driver: Literal["fake"]
    tags: Sequence[FakeTag] = Field(default_factory=list)


class OtherDevice(DeviceBase):
    driver: Literal["other"]
    port: str


class OtherProfile(ProfileBase):
    driver: Literal["other"]


class _NoIO(Driver):
    async def connect(self) -> None:
        pass

    async def poll(self) -> list[Reading]:
        return []

    async def close(self) -> None:
        pass


class FakeDriver(_NoIO):
    name = "fake"
    device_model = FakeDevice
    profile_model = FakeProfile


class OtherDriver(_NoIO):
    name = "other"
    device_model = OtherDevice
    profile_model = OtherProfile


ONE: dict[str, type[Driver]] = {"fake": FakeDriver}
TWO: dict[str, type[Driver]] = {"fake": FakeDriver, "other": OtherDriver}

GOOD = """\
agent:
  id: gw1
  data_dir: ./data
mqtt:
  host: broker.local
profiles:
  meter:
    driver: fake
    tags:
      - {name: volts, table: holding, address: 0, type: float32}
      - {name: amps, table: holding, address: 2, type: float32}
devices:
  - name: press-1
    driver: fake
    poll_interval: 250ms
    profile: meter
    connection: {host: 10.0.0.1}
    tags:
      - {name: oil_temp, table: holding, address: 10, type: int16}
      - {name: door, table: coil, address: 0, type: bool}
  - name: press-2
    driver: fake
    connection: {host: 10.0.0.2, port: 5020}
"""


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors(
    tmp_path: Path, text: str, drivers: dict[str, type[Driver]] = ONE, **kw: bool
) -> list[ConfigIssue]:
    with pytest.raises(ConfigErrors) as exc:
        load_config(write(tmp_path, text), drivers, **kw)
    return exc.value.issues


def brief(issues: list[ConfigIssue]) -> list[tuple[int, int, str]]:
    return [(i.line, i.col, i.path) for i in issues]


# --- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("1s", 1.0), ("5m", 300.0), ("2h", 7200.0), (3, 3.0), (0.5, 0.5)],
)
def test_durations(text: str | float, seconds: float) -> None:
    m = build_config_model(ONE)
    assert m.model_validate({"agent": {"id": "a"}, "mqtt": {"keepalive": text}}).mqtt.keepalive == (
        seconds
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [("512KB", 512_000), ("256MB", 256_000_000), ("1GiB", 1024**3), (2_000_000, 2_000_000)],
)
def test_sizes(text: str | int, size: int) -> None:
    class M(StrictModel):
        s: Size

    assert M.model_validate({"s": text}).s == size


def test_buffer_size(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "agent: {id: a}\nbuffer: {max_size: 1GiB}\n"), ONE)
    assert cfg.buffer.max_size == 1024**3
    issues = errors(tmp_path, "agent: {id: a}\nbuffer: {max_size: 512KB}\n")
    assert brief(issues) == [(2, 20, "buffer.max_size")]
    assert "at least 1MB" in issues[0].message


def test_base_types_reused() -> None:
    class M(StrictModel):
        d: Duration
        s: Size

    assert M.model_validate({"d": "1s", "s": "1KB"}) == M(d=1.0, s=1000)


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:9108", "127.0.0.1", 9108),
        ("[::1]:9108", "::1", 9108),
        ("0.0.0.0:0", "0.0.0.0", 0),
    ],
)
def test_metrics_listen(listen: str, host: str, port: int) -> None:
    assert parse_listen(listen) == (host, port)


def test_metrics_disabled_and_bad(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "agent: {id: a}\nmetrics: {listen: null}\n"), ONE)
    assert (cfg.metrics.host, cfg.metrics.port) == (None, None)
    issues = errors(tmp_path, "agent: {id: a}\nmetrics: {listen: 'localhost'}\n")
    assert brief(issues) == [(2, 19, "metrics.listen")]


# --- a good file ---------------------------------------------------------------------------------


def test_good_file_defaults_and_merge(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), ONE)
    assert cfg.agent.id == "gw1"
    assert cfg.agent.data_dir == tmp_path / "data"  # relative to the file, not the cwd
    assert cfg.mqtt.client_id == "gw1"
    assert cfg.mqtt.topic_prefix == "edge/gw1"
    assert (cfg.mqtt.port, cfg.mqtt.qos, cfg.mqtt.format) == (1883, 1, "json")
    assert (cfg.mqtt.keepalive, cfg.mqtt.max_inflight) == (30.0, 64)
    assert (cfg.mqtt.reconnect_min, cfg.mqtt.reconnect_max) == (1.0, 60.0)
    assert cfg.buffer.max_size == 256_000_000
    assert (cfg.metrics.host, cfg.metrics.port) == ("127.0.0.1", 9108)
    press1, press2 = cfg.devices
    assert isinstance(press1, FakeDevice)
    assert press1.poll_interval == 0.25
    # profile tags first, then the device's own
    assert [t.name for t in press1.tags] == ["volts", "amps", "oil_temp", "door"]
    assert [t.name for t in press2.tags] == []
    assert cfg.tag_count() == 4


def test_data_dir_absolute_kept_and_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "agent: {id: a, data_dir: /srv/x}\n"), ONE)
    assert cfg.agent.data_dir == Path("/srv/x")
    cfg = load_config(write(tmp_path, "agent: {id: a}\n"), ONE)
    assert cfg.agent.data_dir == Path("/var/lib/edge-agent")


def test_tls_port_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "agent: {id: a}\nmqtt: {tls: {}}\n"), ONE)
    assert cfg.mqtt.port == 8883 and cfg.mqtt.tls is not None and cfg.mqtt.tls.verify
    cfg = load_config(write(tmp_path, "agent: {id: a}\nmqtt: {port: 1884, tls: {}}\n"), ONE)
    assert cfg.mqtt.port == 1884


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    text = """\
agent: {id: a}
devices:
  - {name: d1, driver: fake, connection: &conn {host: 10.0.0.9, port: 1502}}
  - {name: d2, driver: fake, connection: *conn}
  - name: d3
    driver: fake
    connection:
      <<: *conn
      port: 1503
"""
    cfg = load_config(write(tmp_path, text), ONE)
    ports = [d.connection.port for d in cfg.devices if isinstance(d, FakeDevice)]
    assert ports == [1502, 1502, 1503]
    # an error inside an anchored mapping is reported where it was written, once per use
    issues = errors(tmp_path, text.replace("port: 1502", "port: 0"))
    assert brief(issues) == [
        (3, 71, "devices.0.connection.port"),
        (3, 71, "devices.1.connection.port"),
    ]


# --- errors with positions -----------------------------------------------------------------------


def test_all_errors_at_once_with_positions(tmp_path: Path) -> None:
    text = """\
agent:
  id: gw1
  colour: red
mqtt:
  port: 99999
  qos: 2
devices:
  - name: d1
    driver: fake
    connection: {port: 5020}
    tags:
      - {name: t1, table: coil, address: 0, type: int16}
      - {name: t2, table: holding, address: -1, type: int16}
"""
    issues = errors(tmp_path, text)
    assert brief(issues) == [
        (3, 3, "agent.colour"),
        (5, 9, "mqtt.port"),
        (6, 8, "mqtt.qos"),
        (10, 17, "devices.0.connection.host"),
        (12, 9, "devices.0.tags.0"),
        (13, 45, "devices.0.tags.1.address"),
    ]
    msgs = [i.message for i in issues]
    assert msgs[0] == "unknown key 'colour'"
    assert msgs[3] == "missing required key 'host'"
    assert msgs[4] == "coil tags must be type bool"
    path = tmp_path / "agent.yaml"
    assert str(issues[0]) == f"{path}:3:3: agent.colour: unknown key 'colour'"


def test_tagged_union_locs_dropped(tmp_path: Path) -> None:
    """With two drivers pydantic adds the union tag to the loc; it must not reach the path."""
    text = """\
agent: {id: a}
devices:
  - {name: d1, driver: other, port: 3}
  - name: d2
    driver: fake
    connection: {host: h, port: 0}
    tags:
      - {name: t, table: coil, address: 1, type: float32}
"""
    issues = errors(tmp_path, text, TWO)
    assert brief(issues) == [
        (3, 37, "devices.0.port"),
        (6, 33, "devices.1.connection.port"),
        (8, 9, "devices.1.tags.0"),
    ]


def test_several_duplicate_keys(tmp_path: Path) -> None:
    text = """\
agent:
  id: a
  id: b
mqtt:
  host: x
  port: 1
  host: y
mqtt: {}
"""
    issues = errors(tmp_path, text)
    assert brief(issues) == [(3, 3, "agent.id"), (7, 3, "mqtt.host"), (8, 1, "mqtt")]
    assert issues[0].message == "duplicate key 'id' (first at line 2)"
    assert issues[2].message == "duplicate key 'mqtt' (first at line 4)"


def test_unknown_key_suggestion(tmp_path: Path) -> None:
    issues = errors(tmp_path, "agent: {id: a}\nmqtt:\n  hots: x\n  keepalve: 3\n  zzz: 1\n")
    assert [(i.line, i.col, i.message) for i in issues] == [
        (3, 3, "unknown key 'hots'; did you mean 'host'?"),
        (4, 3, "unknown key 'keepalve'; did you mean 'keepalive'?"),
        (5, 3, "unknown key 'zzz'"),
    ]


def test_unknown_key_in_driver_section_suggests(tmp_path: Path) -> None:
    text = "agent: {id: a}\ndevices:\n  - {name: d, driver: fake, connection: {hst: h}}\n"
    issues = errors(tmp_path, text, TWO)
    assert any(
        i.path == "devices.0.connection.hst" and "did you mean 'host'" in i.message for i in issues
    )


def test_yaml_syntax_error(tmp_path: Path) -> None:
    issues = errors(tmp_path, "agent:\n  id: [a\nmqtt: {}\n")
    assert len(issues) == 1 and issues[0].path == "(yaml)" and issues[0].line == 3


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    issues = errors(tmp_path, text)
    assert len(issues) == 1 and "empty" in issues[0].message


def test_top_level_not_mapping(tmp_path: Path) -> None:
    assert brief(errors(tmp_path, "- a\n- b\n")) == [(1, 1, "(root)")]


def test_missing_agent(tmp_path: Path) -> None:
    issues = errors(tmp_path, "mqtt: {}\n")
    assert [(i.path, i.message) for i in issues] == [("agent", "missing required key 'agent'")]


def test_unknown_driver_lists_installed(tmp_path: Path) -> None:
    text = "agent: {id: a}\ndevices:\n  - {name: d, driver: fak, connection: {}}\n  - {name: e}\n"
    issues = errors(tmp_path, text, TWO)
    assert [(i.line, i.path) for i in issues] == [(3, "devices.0.driver"), (4, "devices.1.driver")]
    assert issues[0].message == (
        "unknown driver 'fak' (installed drivers: fake, other); did you mean 'fake'?"
    )
    assert "missing required key 'driver'" in issues[1].message
    # one driver installed: pydantic has no union to complain about, the pre-check still says it
    issues = errors(tmp_path, text.replace("fak,", "modbus,"), ONE)
    assert issues[0].message == "unknown driver 'modbus' (installed drivers: fake)"


def test_model_validator_error_position(tmp_path: Path) -> None:
    text = "agent: {id: a}\nmqtt:\n  reconnect_min: 10s\n  reconnect_max: 5s\n"
    assert brief(errors(tmp_path, text)) == [(4, 3, "mqtt.reconnect_max")]
    text = "agent: {id: a}\nmqtt:\n  tls:\n    cert_file: c.pem\n"
    issues = errors(tmp_path, text)
    assert brief(issues) == [(4, 5, "mqtt.tls.cert_file")]
    assert issues[0].message == "cert_file needs key_file"


@pytest.mark.parametrize("value", ["1x", "fast", "-1s", "[1]"])
def test_bad_duration(tmp_path: Path, value: str) -> None:
    issues = errors(tmp_path, f"agent: {{id: a}}\nmqtt:\n  keepalive: {value}\n")
    assert brief(issues) == [(3, 14, "mqtt.keepalive")]


@pytest.mark.parametrize("value", ["12XB", "lots", "0.5MB"])
def test_bad_size(tmp_path: Path, value: str) -> None:
    issues = errors(tmp_path, f"agent: {{id: a}}\nbuffer:\n  max_size: {value}\n")
    assert brief(issues) == [(3, 13, "buffer.max_size")]


@pytest.mark.parametrize("prefix", ["a/+/b", "'#'", "a/#", "a//b", "/a", "a/", "$SYS/x", '"a\\0b"'])
def test_topic_prefix_injection(tmp_path: Path, prefix: str) -> None:
    issues = errors(tmp_path, f"agent: {{id: a}}\nmqtt:\n  topic_prefix: {prefix}\n")
    assert brief(issues) == [(3, 17, "mqtt.topic_prefix")]


def test_topic_prefix_length(tmp_path: Path) -> None:
    issues = errors(tmp_path, "agent: {id: a}\nmqtt: {topic_prefix: " + "a" * 201 + "}\n")
    assert brief(issues) == [(2, 22, "mqtt.topic_prefix")]


def test_mqtt_timing_limits(tmp_path: Path) -> None:
    """A zero reconnect delay would retry in a tight loop; MQTT's keepalive is 16 bits."""
    text = "agent: {id: a}\nmqtt:\n  reconnect_min: 0\n  reconnect_max: 0s\n  keepalive: 70000\n"
    assert brief(errors(tmp_path, text)) == [
        (3, 18, "mqtt.reconnect_min"),
        (4, 18, "mqtt.reconnect_max"),
        (5, 14, "mqtt.keepalive"),
    ]


def test_empty_section_points_at_its_key(tmp_path: Path) -> None:
    """`agent:` with nothing after it: ruamel marks the next line, the fix is on this one."""
    assert brief(errors(tmp_path, "agent:\nmqtt: {}\n")) == [(1, 1, "agent")]


def test_topic_prefix_ok(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "agent: {id: a}\nmqtt: {topic_prefix: plant/line-1}\n"), ONE)
    assert cfg.mqtt.topic_prefix == "plant/line-1"


@pytest.mark.parametrize("name", ["a/b", "a+b", "a#", "a b", "''", "é"])
def test_names_refused(tmp_path: Path, name: str) -> None:
    text = f"""\
agent: {{id: {name}}}
devices:
  - name: {name}
    driver: fake
    connection: {{host: h}}
    tags:
      - {{name: {name}, table: coil, address: 0, type: bool}}
"""
    assert [i.path for i in errors(tmp_path, text)] == [
        "agent.id",
        "devices.0.name",
        "devices.0.tags.0.name",
    ]


def test_bad_profile_name_at_key(tmp_path: Path) -> None:
    text = "agent: {id: a}\nprofiles:\n  a/b: {driver: fake}\n"
    assert brief(errors(tmp_path, text)) == [(3, 3, "profiles.a/b")]


def test_client_id_checks(tmp_path: Path) -> None:
    text = 'agent: {id: a}\nmqtt: {client_id: "a\\tb"}\n'
    assert brief(errors(tmp_path, text)) == [(2, 19, "mqtt.client_id")]
    text = f"agent: {{id: a}}\nmqtt: {{client_id: {'x' * 129}}}\n"
    assert brief(errors(tmp_path, text)) == [(2, 19, "mqtt.client_id")]


# --- cross references ----------------------------------------------------------------------------


def test_cross_references(tmp_path: Path) -> None:
    text = """\
agent: {id: a}
profiles:
  meter:
    driver: fake
    tags:
      - {name: v, table: holding, address: 0, type: int16}
  rtu:
    driver: other
devices:
  - name: d1
    driver: fake
    profile: metre
    connection: {host: h}
  - name: d1
    driver: fake
    profile: rtu
    connection: {host: h}
  - name: d3
    driver: fake
    profile: meter
    connection: {host: h}
    tags:
      - {name: w, table: holding, address: 1, type: int16}
      - {name: v, table: holding, address: 2, type: int16}
      - {name: w, table: holding, address: 3, type: int16}
"""
    issues = errors(tmp_path, text, TWO)
    assert [(i.line, i.col, i.path, i.message) for i in issues] == [
        (
            12,
            14,
            "devices.0.profile",
            "unknown profile 'metre' (profiles: meter, rtu); did you mean 'meter'?",
        ),
        (14, 11, "devices.1.name", "duplicate device name 'd1' (first at line 10)"),
        (16, 14, "devices.1.profile", "profile 'rtu' is for driver 'other', not 'fake'"),
        (
            24,
            16,
            "devices.2.tags.1.name",
            "duplicate tag name 'v' (in profile 'meter', line 6)",
        ),
        (25, 16, "devices.2.tags.2.name", "duplicate tag name 'w' (first at line 23)"),
    ]


def test_cross_reference_with_pydantic_errors(tmp_path: Path) -> None:
    text = """\
agent: {id: a}
devices:
  - {name: d1, driver: fake, connection: {host: h, port: nope}}
  - {name: d1, driver: fake, profile: ghost, connection: {host: h}}
"""
    assert [i.path for i in errors(tmp_path, text)] == [
        "devices.0.connection.port",
        "devices.1.name",
        "devices.1.profile",
    ]


# --- secrets -------------------------------------------------------------------------------------

SECRET = "s3cr3t-Pa55"


def test_inline_password_refused(tmp_path: Path) -> None:
    issues = errors(tmp_path, f"agent: {{id: a}}\nmqtt:\n  username: u\n  password: {SECRET}\n")
    assert [(i.line, i.col, i.path, i.message) for i in issues] == [
        (
            4,
            3,
            "mqtt.password",
            "inline passwords are not allowed: use password_env or password_file",
        )
    ]
    assert SECRET not in str(ConfigErrors(issues))


def test_password_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EA_TEST_PASS", SECRET)
    path = write(tmp_path, "agent: {id: a}\nmqtt: {username: u, password_env: EA_TEST_PASS}\n")
    assert load_config(path, ONE).mqtt.password is None  # validate does not read secrets
    cfg = load_config(path, ONE, resolve_secrets=True)
    assert isinstance(cfg.mqtt.password, SecretStr)
    assert cfg.mqtt.password.get_secret_value() == SECRET
    for text in (str(cfg), repr(cfg), str(cfg.mqtt), repr(cfg.mqtt), cfg.model_dump_json()):
        assert SECRET not in text
    assert "password" not in cfg.mqtt.model_dump()


def test_password_from_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET + "\n", encoding="utf-8")
    path = write(tmp_path, "agent: {id: a}\nmqtt: {username: u, password_file: pw}\n")
    cfg = load_config(path, ONE, resolve_secrets=True)
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == SECRET
    assert cfg.mqtt.password_file == tmp_path / "pw"


def test_missing_secret_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EA_TEST_UNSET", raising=False)
    text = "agent: {id: a}\nmqtt:\n  password_env: EA_TEST_UNSET\n  username: u\n"
    issues = errors(tmp_path, text, resolve_secrets=True)
    assert brief(issues) == [(3, 17, "mqtt.password_env")]
    assert "EA_TEST_UNSET is not set" in issues[0].message
    text = "agent: {id: a}\nmqtt:\n  password_file: nope\n  tls: {ca_file: ca.pem}\n  username: u\n"
    issues = errors(tmp_path, text, resolve_secrets=True)
    assert brief(issues) == [(3, 18, "mqtt.password_file"), (4, 18, "mqtt.tls.ca_file")]


def test_password_sources_exclusive(tmp_path: Path) -> None:
    text = "agent: {id: a}\nmqtt:\n  password_env: X\n  password_file: f\n"
    assert brief(errors(tmp_path, text)) == [(4, 3, "mqtt.password_file")]


def test_secret_never_in_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EA_TEST_PASS", SECRET)
    (tmp_path / "pw").write_text(SECRET, encoding="utf-8")
    text = "agent: {id: a}\nmqtt: {password_env: EA_TEST_PASS, port: x}\n"
    assert SECRET not in str(ConfigErrors(errors(tmp_path, text, resolve_secrets=True)))


def test_bad_password_env_not_echoed(tmp_path: Path) -> None:
    """A password pasted where the variable's name belongs must not be printed back."""
    text = f"agent: {{id: a}}\nmqtt: {{username: u, password_env: '{SECRET}'}}\n"
    issues = errors(tmp_path, text)
    assert brief(issues) == [(2, 35, "mqtt.password_env")]
    assert SECRET not in str(ConfigErrors(issues))


def test_password_needs_username(tmp_path: Path) -> None:
    """MQTT 3.1.1 sends no password without a user name: refused rather than silently dropped."""
    for key in ("password_env: P", "password_file: pw"):
        issues = errors(tmp_path, f"agent: {{id: a}}\nmqtt:\n  {key}\n")
        assert brief(issues) == [(3, 3, f"mqtt.{key.split(':')[0]}")]
        assert "needs a username" in issues[0].message


def test_secrets_reported_with_other_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EA_TEST_UNSET", raising=False)
    text = (
        "agent: {id: a}\nbuffer: {max_size: 1}\nmqtt: {username: u, password_env: EA_TEST_UNSET}\n"
    )
    issues = errors(tmp_path, text, resolve_secrets=True)
    assert brief(issues) == [(2, 20, "buffer.max_size"), (3, 35, "mqtt.password_env")]


# --- schema --------------------------------------------------------------------------------------


def test_schema_contains_driver_sections() -> None:
    schema = config_schema(TWO)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["title"] == "edge-agent configuration"
    assert {"FakeDevice", "FakeTag", "OtherDevice", "MqttSection"} <= set(schema["$defs"])
    mqtt = schema["$defs"]["MqttSection"]["properties"]
    assert "password" not in mqtt and "password_env" in mqtt
    assert mqtt["host"]["description"]
    assert schema["required"] == ["agent"]
    json.dumps(schema)  # serialisable as is


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI uses the installed drivers; a file without devices is valid for any set of them."""
    path = write(tmp_path, "agent: {id: gw1}\n")
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (0 devices, 0 tags)\n"


def test_cli_validate_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "agent: {id: gw1, x: 1}\nmqtt: {port: nope}\n")
    rel = "agent.yaml"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert main(["validate", f"./{rel}"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "./agent.yaml:1:18: agent.x: unknown key 'x'"
    assert err[1].startswith("./agent.yaml:2:14: mqtt.port: ")
    assert len(err) == 2


def test_cli_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read" in err and "Traceback" not in err


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["frobnicate"], ["validate"], ["run"], ["run", "-c", "x", "--log-format=xml"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


def test_cli_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "edge-agent configuration"


def test_cli_run_refuses_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EA_TEST_UNSET", raising=False)
    path = write(tmp_path, "agent: {id: a}\nmqtt: {username: u, password_env: EA_TEST_UNSET}\n")
    started: list[object] = []

    def run_agent(*args: object) -> int:
        started.append(args)
        return 0

    monkeypatch.setattr("agent.app.runtime.run_agent", run_agent)
    assert main(["run", "-c", str(path)]) == 2
    assert (
        "mqtt.password_env: environment variable EA_TEST_UNSET is not set"
        in capsys.readouterr().err
    )
    assert started == []


def test_cli_run_starts_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "agent: {id: a}\n")
    calls: list[tuple[object, ...]] = []

    def record(*args: object) -> int:
        calls.append(args)
        return 0

    monkeypatch.setattr("agent.app.runtime.run_agent", record)
    monkeypatch.setattr("agent.ops.logs.setup_logging", record)
    assert main(["run", "--config", str(path), "--log-level", "debug", "--log-format", "json"]) == 0
    assert calls[0] == ("debug", "json")
    config, config_path = calls[1]
    assert isinstance(config, Config)
    assert config_path == path and config.agent.id == "a"


def test_console_script(tmp_path: Path) -> None:
    path = write(tmp_path, "agent: {id: gw1}\nmqtt: {hots: x}\n")
    script = REPO / ".venv" / "bin" / "edge-agent"
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "agent"]
    proc = subprocess.run([*exe, "validate", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"{path}:2:8: mqtt.hots: unknown key 'hots'; did you mean 'host'?\n"


class BrokenDevice(DeviceBase):
    driver: Literal["broken"]

    @model_validator(mode="after")
    def _bug(self) -> BrokenDevice:
        raise TypeError("driver bug")


class BrokenDriver(_NoIO):
    name = "broken"
    device_model = BrokenDevice
    profile_model = ProfileBase


def test_cli_internal_error_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver's bug is not the file's fault: exit 1 with one line, not a traceback."""
    monkeypatch.setattr("agent.app.cli.load_drivers", lambda: {"broken": BrokenDriver})
    path = write(tmp_path, "agent: {id: a}\ndevices: [{name: d, driver: broken}]\n")
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TypeError: driver bug" in err and "Traceback" not in err


# --- driver registry -----------------------------------------------------------------------------


class HalfDriver(_NoIO):
    name = "half"  # no device_model, no profile_model


class FakeTwin(FakeDriver):
    """Another class claiming the name ``fake``."""


def _entry_points(monkeypatch: pytest.MonkeyPatch, *targets: tuple[str, str]) -> None:
    found = [EntryPoint(name, value, "edge_agent.drivers") for name, value in targets]
    monkeypatch.setattr("agent.south.registry.entry_points", lambda group: found)


def test_broken_drivers_are_reported_and_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _entry_points(
        monkeypatch,
        ("fake", f"{__name__}:FakeDriver"),
        ("gone", "no_such_module_ea:Driver"),
        ("half", f"{__name__}:HalfDriver"),
        ("odd", f"{__name__}:FakeTag"),
    )
    with caplog.at_level(logging.ERROR, logger="agent.south.registry"):
        assert load_drivers() == {"fake": FakeDriver}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    # The facts are in the message itself: `validate` prints it without a log formatter.
    assert "'gone'" in messages[0] and "no_such_module_ea" in messages[0]
    assert "'half'" in messages[1] and "device_model" in messages[1]
    assert "'odd'" in messages[2] and "not a subclass" in messages[2]


def test_two_drivers_with_one_name_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _entry_points(monkeypatch, ("fake", f"{__name__}:FakeDriver"), ("fake", f"{__name__}:FakeTwin"))
    with pytest.raises(DriverConflictError, match="'fake'"):
        load_drivers()
    assert main(["validate", str(write(tmp_path, "agent: {id: a}\n"))]) == 1
    assert "two drivers are named 'fake'" in capsys.readouterr().err


def test_an_entry_point_must_carry_its_drivers_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Drivers are found by entry-point name without importing them, so a class whose ``name``
    differs from its entry point's could make a config mean another driver: refused."""
    _entry_points(monkeypatch, ("fake", f"{__name__}:FakeDriver"), ("twin", f"{__name__}:FakeTwin"))
    with caplog.at_level(logging.ERROR, logger="agent.south.registry"):
        drivers = load_drivers()
        assert "twin" not in drivers
    assert drivers == {"fake": FakeDriver}
    assert "entry point's name must be the driver's name" in caplog.records[0].getMessage()


def test_drivers_are_imported_only_when_a_config_names_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _entry_points(monkeypatch, ("fake", f"{__name__}:FakeDriver"), ("gone", "no_such_mod_ea:X"))
    drivers = load_drivers()
    assert sorted(drivers) == ["fake", "gone"]  # listed without importing anything
    load_config(write(tmp_path, "agent: {id: a}\n"), drivers)
    assert "gone" in list(drivers)  # still not imported: the file names no driver


def test_one_driver_seen_twice_is_not_a_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    """One distribution visible on two sys.path entries lists its entry points twice."""
    _entry_points(
        monkeypatch, ("fake", f"{__name__}:FakeDriver"), ("fake", f"{__name__}:FakeDriver")
    )
    assert load_drivers() == {"fake": FakeDriver}


def test_installed_entry_points() -> None:
    """The bundled Modbus driver registers itself like a third-party one would."""
    assert "modbus" in load_drivers()
