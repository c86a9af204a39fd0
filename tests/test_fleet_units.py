"""Fleet pieces without processes (fast): the signature, the store, the envelope, the checks of
a pushed text against a gateway's own file, the operator's table and file check."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.app.fleet.operator import check_file, health_table
from agent.app.fleet.push import (
    MAX_MESSAGE_BYTES,
    Refused,
    build_config,
    check_signature,
    check_writes,
    parse_push,
)
from agent.app.fleet.sign import FleetKeyError, read_key, signature, verify
from agent.app.fleet.store import Entry, FleetStore
from agent.south.registry import load_drivers
from tests.fleet_rig import push, sections

DRIVERS = load_drivers()


def test_signature_covers_the_version_and_the_text() -> None:
    sig = signature(b"k", 3, "devices: []\n")
    assert verify(b"k", 3, "devices: []\n", sig)
    assert verify(b"k", 3, "devices: []\n", sig.upper())
    assert not verify(b"k", 4, "devices: []\n", sig)  # a replay under another version
    assert not verify(b"k", 3, "devices: [] \n", sig)
    assert not verify(b"other", 3, "devices: []\n", sig)


def test_key_from_file_or_variable_and_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    assert read_key(None, key) == b"s3cret"
    monkeypatch.setenv("FK", "v4lue")
    assert read_key("FK", None) == b"v4lue"
    monkeypatch.delenv("FK")
    with pytest.raises(FleetKeyError, match="FK is not set"):
        read_key("FK", None)
    key.write_text("\n")
    with pytest.raises(FleetKeyError, match="empty") as exc:
        read_key(None, key)
    assert "s3cret" not in str(exc.value)


def test_store_is_atomic_keeps_n_and_never_drops_the_current(tmp_path: Path) -> None:
    store = FleetStore(tmp_path, keep=3)
    state = store.load()
    assert state.current is None and state.highest == 0
    for v in range(1, 7):
        store.save_version(v, f"devices: []  # {v}\n")
    state.current = Entry(1, "h1")
    state.highest = 6
    state.pending = Entry(6, "h6")
    state.record(6, "h6", "applied")
    store.save(state)
    store.prune({1})
    assert store.versions() == [1, 4, 5, 6]
    again = FleetStore(tmp_path).load()
    assert again.current == Entry(1, "h1", state.current.ts)
    assert again.pending is not None and again.pending.version == 6
    assert again.history[-1]["result"] == "applied"
    assert not list((tmp_path / "fleet").glob("*.tmp"))


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"[1, 2]", "1:1: (push): must be a JSON object"),
        (b"\xff\xfe", "1:1: (push): not JSON"),
        (b"[" * 100_000, "1:1: (push): not JSON"),
        (json.dumps({"version": True, "yaml": "", "sig": "0" * 64}).encode(), "(push).version"),
        (json.dumps({"version": -1, "yaml": "", "sig": "0" * 64}).encode(), "(push).version"),
        (json.dumps({"version": 1, "yaml": [], "sig": "0" * 64}).encode(), "(push).yaml"),
        (json.dumps({"version": 1, "yaml": "", "sig": "abc"}).encode(), "(push).sig"),
        (json.dumps({"id": 5, "version": 1, "yaml": "", "sig": "0" * 64}).encode(), "(push).id"),
        (b" " * (MAX_MESSAGE_BYTES + 1), "larger than"),
    ],
)
def test_envelope_problems_are_refused(payload: bytes, error: str) -> None:
    with pytest.raises(Refused) as exc:
        parse_push(payload)
    assert any(error in e for e in exc.value.errors), exc.value.errors


def test_a_wrong_signature_is_refused() -> None:
    good = parse_push(push(2, "devices: []\n", key="right"))
    check_signature(good, b"right")
    with pytest.raises(Refused, match="signature"):
        check_signature(good, b"wrong")


def _local(tmp_path: Path, **fleet: object) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(
        json.dumps(
            {
                "agent": {"id": "gw", "data_dir": "data"},
                "devices": [],
                "profiles": {},
                "fleet": {"enabled": True, "key_env": "K", **fleet},
            }
        )
    )
    return path


def test_a_push_sits_on_the_gateways_own_sections(tmp_path: Path) -> None:
    local = _local(tmp_path)
    text = sections(devices=[{"name": "m", "driver": "modbus", "connection": {"host": "h"}}])
    config = build_config(text, local, DRIVERS, ["devices", "profiles"], resolve_secrets=False)
    assert config.agent.id == "gw"
    assert config.agent.data_dir == tmp_path / "data"  # relative to the local file, not the push
    assert config.fleet.enabled  # never from the push
    assert [d.name for d in config.devices] == ["m"]


def test_pushed_problems_are_at_their_line_and_column(tmp_path: Path) -> None:
    local = _local(tmp_path)
    text = "devices:\n  - name: m\n    driver: modbus\n    connection: {host: h, port: 99999}\n"
    with pytest.raises(Refused) as exc:
        build_config(text, local, DRIVERS, ["devices"], resolve_secrets=False)
    assert exc.value.errors == [
        "4:33: devices.0.connection.port: Input should be less than or equal to 65535"
    ]
    with pytest.raises(Refused) as exc:
        build_config("devices: [\n", local, DRIVERS, ["devices"], resolve_secrets=False)
    assert exc.value.errors[0].startswith("2:1: (yaml): ")
    with pytest.raises(Refused) as exc:
        build_config("devices: []\nfleet: {}\n", local, DRIVERS, ["devices"])
    assert exc.value.errors == ["2:1: fleet: this section cannot be pushed (fleet.allow: devices)"]


def test_write_permission_stays_the_local_files(tmp_path: Path) -> None:
    local = _local(tmp_path)
    tag = {"name": "sp", "table": "holding", "address": 0, "type": "uint16"}
    dev = {"name": "m", "driver": "modbus", "connection": {"host": "h"}, "tags": [tag]}
    running = build_config(sections(devices=[dev]), local, DRIVERS, ["devices"])
    writable = {**dev, "tags": [{**tag, "writable": True}]}
    text = sections(devices=[writable])
    new = build_config(text, local, DRIVERS, ["devices"])
    with pytest.raises(Refused) as exc:
        check_writes(new, running, text)
    assert exc.value.errors[0].startswith("2:")
    assert "devices.0.tags.0.writable: a push cannot make m.sp writable" in exc.value.errors[0]
    check_writes(new, new, text)  # already writable: nothing gained


def test_the_operator_checks_the_file_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: {id: x}\ndevices:\n  - {name: m, driver: modbus}\n")
    assert check_file(str(bad), DRIVERS) is None
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0] == f"{bad}:1:1: agent: this section cannot be pushed "
        "(fleet.allow: devices, profiles, outputs)"
    )
    bad.write_text("devices:\n  - {name: m, driver: modbus}\n")
    assert check_file(str(bad), DRIVERS) is None
    assert f"{bad}:2:5: devices.0.connection: " in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text("devices:\n  - {name: m, driver: modbus, connection: {host: h}}\n")
    assert check_file(str(good), DRIVERS) == good.read_text()


def test_list_table_filters_by_state() -> None:
    now = int(time.time() * 1000)
    up = {"state": "up", "reason": None}
    docs = {
        "gw-1": {
            "state": "ok",
            "ts": now,
            "config": {"version": 3},
            "devices": {"a": up},
            "outputs": {"default": {"connected": True, "backlog": 2}},
            "clock_synchronized": True,
        },
        "gw-2": {
            "state": "degraded",
            "ts": now,
            "config": {"version": 3},
            "devices": {"a": {"state": "down", "reason": "timeout"}},
            "outputs": {},
        },
        "gw-3": {"state": "ok", "ts": now - 600_000, "config": {"version": 2}},
    }
    table = health_table(docs, 90, None).splitlines()
    assert table[0].split() == [
        "GATEWAY",
        "STATE",
        "CONFIG",
        "DEVICES",
        "OUTPUTS",
        "BACKLOG",
        "CLOCK",
        "AGE",
    ]
    assert table[1].split()[:6] == ["gw-1", "ok", "v3", "1/1", "up", "1/1"]
    assert [r.split()[:2] for r in table[2:]] == [["gw-2", "degraded"], ["gw-3", "stale"]]
    assert [r.split()[0] for r in health_table(docs, 90, "stale").splitlines()[1:]] == ["gw-3"]
