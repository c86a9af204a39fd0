"""Checks pydantic cannot express, run on the parsed data so they carry positions.

They look across entries (device names, a device's profile, tag names after the profile is merged)
or decide which model applies at all (the ``driver:`` key). Running them on the plain data rather
than on validated models means they are reported in the same run as pydantic's errors, even when
some entries are invalid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.app.config.errors import ConfigIssue
from agent.app.config.locate import Locator, suggest
from agent.app.config.yamlpos import DataPath
from drivers.base import Driver, LineSettings


@dataclass(slots=True)
class Prechecked:
    """The outcome of ``precheck``: issues, and the entries pydantic's errors are ignored for
    because their ``driver:`` already failed (every key would be reported otherwise)."""

    issues: list[ConfigIssue] = field(default_factory=list)
    skip: set[DataPath] = field(default_factory=set)


def _installed(drivers: Mapping[str, type[Driver]]) -> str:
    if not drivers:
        return "no drivers are installed"
    return "installed drivers: " + ", ".join(sorted(drivers))


def _entries(data: Any, section: str) -> list[tuple[DataPath, dict[str, Any]]]:
    value = data.get(section) if isinstance(data, dict) else None
    if isinstance(value, list):
        return [((section, i), v) for i, v in enumerate(value) if isinstance(v, dict)]
    if isinstance(value, dict):
        return [((section, k), v) for k, v in value.items() if isinstance(v, dict)]
    return []


def precheck(data: Any, drivers: Mapping[str, type[Driver]], loc: Locator) -> Prechecked:
    """Check every ``driver:`` against the installed drivers, and refuse inline passwords.

    Done before pydantic because with one driver installed there is no union to name the choices,
    and a tagged union's own error does not say which drivers exist. An inline password is removed
    from ``data`` (so it cannot travel any further) and reported at its key.
    """
    result = Prechecked()
    for section in ("devices", "profiles"):
        for path, entry in _entries(data, section):
            name = entry.get("driver")
            if "driver" not in entry:
                result.issues.append(
                    loc.at_value(
                        (*path, "driver"),
                        f"missing required key 'driver' ({_installed(drivers)})",
                    )
                )
            elif not isinstance(name, str) or name not in drivers:
                shown = name if isinstance(name, str) else repr(name)
                result.issues.append(
                    loc.at_value(
                        (*path, "driver"),
                        f"unknown driver {shown!r} ({_installed(drivers)})"
                        f"{suggest(str(name), drivers)}",
                    )
                )
            else:
                continue
            result.skip.add(path)
    mqtt = data.get("mqtt") if isinstance(data, dict) else None
    if isinstance(mqtt, dict) and "password" in mqtt:
        del mqtt["password"]
        result.issues.append(
            loc.at_key(
                ("mqtt", "password"),
                "inline passwords are not allowed: use password_env or password_file",
            )
        )
    return result


def _tag_names(entry: Mapping[str, Any], base: DataPath) -> list[tuple[str, DataPath]]:
    tags = entry.get("tags")
    if not isinstance(tags, list):
        return []
    return [
        (tag["name"], (*base, "tags", i, "name"))
        for i, tag in enumerate(tags)
        if isinstance(tag, dict) and isinstance(tag.get("name"), str)
    ]


def cross_check(data: Any, loc: Locator, skip: set[DataPath]) -> list[ConfigIssue]:
    """Profiles exist and fit their devices; device names and merged tag names are unique.
    (What a format's options name is the format's to check: ``format_checks``.)"""
    issues: list[ConfigIssue] = []
    raw_profiles: Any = data.get("profiles") if isinstance(data, dict) else None
    profiles: dict[str, Any] = raw_profiles if isinstance(raw_profiles, dict) else {}
    pos = loc.document.positions

    for path, profile in _entries(data, "profiles"):
        issues += _duplicates(_tag_names(profile, path), loc, "tag name", {})

    seen_devices: dict[str, DataPath] = {}
    for path, device in _entries(data, "devices"):
        name = device.get("name")
        if isinstance(name, str):
            if name in seen_devices:
                first = pos.value((*seen_devices[name], "name")).line
                issues.append(
                    loc.at_value(
                        (*path, "name"), f"duplicate device name {name!r} (first at line {first})"
                    )
                )
            else:
                seen_devices[name] = path
        if path in skip:
            continue
        inherited: dict[str, str] = {}
        profile_name = device.get("profile")
        if isinstance(profile_name, str):
            target = profiles.get(profile_name)
            if target is None:
                known = ", ".join(sorted(profiles)) or "none are defined"
                issues.append(
                    loc.at_value(
                        (*path, "profile"),
                        f"unknown profile {profile_name!r} (profiles: {known})"
                        f"{suggest(profile_name, profiles)}",
                    )
                )
            elif isinstance(target, dict):
                if ("profiles", profile_name) not in skip and target.get("driver") != device.get(
                    "driver"
                ):
                    issues.append(
                        loc.at_value(
                            (*path, "profile"),
                            f"profile {profile_name!r} is for driver {target.get('driver')!r}, "
                            f"not {device.get('driver')!r}",
                        )
                    )
                for tag, tag_path in _tag_names(target, ("profiles", profile_name)):
                    where = loc.where(tag_path)
                    inherited.setdefault(tag, f"in profile {profile_name!r}, {where}")
        issues += _duplicates(_tag_names(device, path), loc, "tag name", inherited)
    return issues


def _duplicates(
    names: list[tuple[str, DataPath]], loc: Locator, what: str, earlier: dict[str, str]
) -> list[ConfigIssue]:
    """Every repeat of a name, at the repeat; ``earlier`` names where names already came from."""
    issues: list[ConfigIssue] = []
    first = dict(earlier)
    for name, path in names:
        if name in first:
            issues.append(loc.at_value(path, f"duplicate {what} {name!r} ({first[name]})"))
        else:
            first[name] = f"first at line {loc.line(path)}"  # a repeat is in the same file
    return issues


def line_check(
    data: Any, drivers: Mapping[str, type[Driver]], loc: Locator, skip: set[DataPath]
) -> list[ConfigIssue]:
    """Devices that share a line agree on its settings, and can share it at all.

    A line is configured once (a serial port has one baud rate), so a second device saying
    otherwise is an error at its differing key rather than a device that never answers. Which
    devices share a line and what must agree is the driver's to say (``Driver.line_settings``):
    the agent knows no protocol.
    """
    issues: list[ConfigIssue] = []
    lines: dict[str, list[tuple[DataPath, str, LineSettings]]] = {}
    for path, device in _entries(data, "devices"):
        cls = drivers.get(str(device.get("driver")))
        if path in skip or cls is None or device.get("enabled") is False:
            continue
        settings = cls.line_settings(device)
        if settings is not None:
            lines.setdefault(settings.key, []).append((path, str(device.get("name")), settings))
    for key, users in lines.items():
        if len(users) < 2:
            continue
        first_path, first_name, first = users[0]
        for path, _name, settings in users:
            if settings.alone is not None:
                other = users[1][1] if path == first_path else first_name
                issues.append(
                    loc.at_value(
                        (*path, *_keys(settings.alone)),
                        f"cannot share {key} with device {other!r}: this setting needs the line "
                        "to itself",
                    )
                )
        for path, _name, settings in users[1:]:
            for dotted_key, value in settings.agree.items():
                expected = first.agree.get(dotted_key, value)
                if value != expected:
                    issues.append(
                        loc.at_value(
                            (*path, *_keys(dotted_key)),
                            f"{value!r} differs from {expected!r} of device {first_name!r} on "
                            f"the same line {key} (a line has one setting)",
                        )
                    )
    return issues


def _keys(dotted_key: str) -> DataPath:
    return tuple(int(k) if k.isdigit() else k for k in dotted_key.split("."))


def outputs_check(data: Any, loc: Locator) -> list[ConfigIssue]:
    """Across the destinations (``mqtt`` and ``outputs:``): names unique, devices known, and no
    two sessions with the same client id on the same broker (the broker would disconnect one
    whenever the other connects, and both would flap forever)."""
    issues: list[ConfigIssue] = []
    pos = loc.document.positions
    # A name that is not a string (a list, a mapping) is the model's to report; here it is skipped.
    devices = {n for _, d in _entries(data, "devices") if isinstance(n := d.get("name"), str)}
    agent = data.get("agent") if isinstance(data, dict) else None
    agent_id = agent.get("id") if isinstance(agent, dict) else None
    sessions: dict[tuple[str, str], DataPath] = {}
    names: dict[str, DataPath] = {}
    mqtt = data.get("mqtt") if isinstance(data, dict) else None
    sections: list[tuple[DataPath, dict[str, Any], str]] = [
        (("mqtt",), mqtt if isinstance(mqtt, dict) else {}, str(agent_id))
    ]
    for path, entry in _entries(data, "outputs"):
        name = entry.get("name")
        if not isinstance(name, str):
            continue
        if name in names:
            first = pos.value((*names[name], "name")).line
            issues.append(
                loc.at_value(
                    (*path, "name"), f"duplicate output name {name!r} (first at line {first})"
                )
            )
        names.setdefault(name, path)
        wanted = entry.get("devices")
        for i, device in enumerate(wanted if isinstance(wanted, list) else []):
            if isinstance(device, str) and device not in devices:
                known = suggest(device, [d for d in devices if isinstance(d, str)])
                issues.append(loc.at_value((*path, "devices", i), f"no device {device!r}{known}"))
        sections.append((path, entry, f"{agent_id}-{name}"))
    for path, section, default_id in sections:
        client_id = section.get("client_id") or default_id
        servers = section.get("servers")
        addresses = (
            [str(s) for s in servers]
            if isinstance(servers, list)
            else [f"{section.get('host', '127.0.0.1')}:{section.get('port', 1883)}"]
        )
        for address in addresses:
            key = (address, str(client_id))
            if key in sessions and sessions[key] != path:
                owner = ".".join(map(str, sessions[key]))
                at = (*path, "client_id") if "client_id" in section else (*path, "name")
                issues.append(
                    loc.at_value(
                        at,
                        f"client id {client_id!r} on {address} is already {owner}'s: the broker "
                        "would drop one session whenever the other connects",
                    )
                )
                break
            sessions.setdefault(key, path)
    return issues
