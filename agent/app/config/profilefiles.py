"""Profiles from files of their own, and the defaults a profile gives its devices.

Integrators do not type 80 registers from a datasheet: a device type is a file, written once
(config/profiles/ ships the common meters and drives) and named by its file name. A config gets
one by ``include:`` (a path), or simply by naming it in a device's ``profile:``, which looks in
``/etc/edge-agent/profiles/`` (the site's own, first) and then in the bundled directory.

Everything happens on the parsed data, before validation, so the file's profiles are checked by
the same model as profiles written in the config, and every problem inside a profile file is
reported at that file's own line and column (``Origin``), with the path inside that file.

A profile's ``defaults:`` (device keys) are copied into each device using it that does not set
them itself; a mapping (``processing:``) is merged key by key, the device's keys winning. Each
copied key keeps its origin, so a default that does not fit a device is reported where the
profile wrote it.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.app.config.defaults import NOT_DEFAULTS
from agent.app.config.errors import ROOT_PATH, ConfigErrors, ConfigIssue
from agent.app.config.locate import Origin
from agent.app.config.yamlpos import EMPTY_MESSAGE, DataPath, Positions, dotted, parse_yaml
from drivers.base import NAME_PATTERN

#: The site's own profiles: looked in first, so a corrected copy shadows a bundled one.
SITE_PROFILES = Path("/etc/edge-agent/profiles")
#: Profile files end so; the profile's name is the file name without it.
SUFFIX = ".yaml"


def bundled_profiles() -> Path | None:
    """The profiles shipped with the agent: config/profiles in a source tree, or
    share/edge-agent/profiles beside an installed one (systemd/install.sh puts them there)."""
    source = Path(__file__).resolve().parents[3] / "config" / "profiles"
    if source.is_dir():
        return source
    installed = Path(sys.prefix) / "share" / "edge-agent" / "profiles"
    return installed if installed.is_dir() else None


def default_profile_dirs() -> list[Path]:
    """Where ``profile: NAME`` is looked for when the config defines no such profile."""
    bundled = bundled_profiles()
    return [SITE_PROFILES, *([bundled] if bundled is not None else [])]


@dataclass(slots=True)
class Assembled:
    """The outcome of ``assemble``: where parts of the data came from, and what went wrong."""

    origins: dict[DataPath, Origin] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)


def assemble(
    data: dict[str, Any],
    file: str,
    positions: Positions,
    base_dir: Path,
    profile_dirs: Sequence[Path],
) -> Assembled:
    """Add the included and the named profile files to ``data["profiles"]`` and each profile's
    defaults to its devices, in place; say where each added part was written."""
    result = Assembled()
    profiles = data.get("profiles")
    if profiles is None and _wants_files(data):
        profiles = data["profiles"] = {}
    if not isinstance(profiles, dict):
        return result  # not a mapping: pydantic says so, and there is nothing to add to
    written = set(profiles)
    includes = data.get("include")
    for i, entry in enumerate(includes if isinstance(includes, list) else []):
        if not isinstance(entry, str) or not entry:
            continue  # the model reports it
        target = Path(entry) if os.path.isabs(entry) else base_dir / entry
        name = _profile_name(target)
        where = ("include", i)
        if name is None:
            message = f"a profile file is named NAME{SUFFIX}, NAME of [A-Za-z0-9_.-]: {entry!r}"
            result.issues.append(_at(file, positions, where, message))
        elif name in written:
            line = positions.key(("profiles", name)).line
            message = f"profile {name!r} is also defined under profiles (line {line})"
            result.issues.append(_at(file, positions, where, message))
        elif name in profiles:
            first = result.origins[("profiles", name)].file
            message = f"profile {name!r} is already included from {first}"
            result.issues.append(_at(file, positions, where, message))
        else:
            _load(target, name, profiles, result, (file, positions, where))
    for device in _devices(data):
        name = device.get("profile")
        if isinstance(name, str) and name not in profiles and re.match(NAME_PATTERN, name):
            for directory in profile_dirs:
                candidate = directory / f"{name}{SUFFIX}"
                if candidate.is_file():
                    _load(candidate, name, profiles, result, None)
                    break
    devices = data.get("devices")
    for i, device in enumerate(devices if isinstance(devices, list) else []):
        if isinstance(device, dict):
            _apply_defaults(device, ("devices", i), profiles, file, positions, result)
    return result


def _wants_files(data: dict[str, Any]) -> bool:
    return bool(data.get("include")) or any("profile" in d for d in _devices(data))


def _devices(data: dict[str, Any]) -> list[dict[str, Any]]:
    devices = data.get("devices")
    return [d for d in devices if isinstance(d, dict)] if isinstance(devices, list) else []


def _profile_name(path: Path) -> str | None:
    if path.suffix != SUFFIX:
        return None
    return path.stem if re.match(NAME_PATTERN, path.stem) else None


def _at(file: str, positions: Positions, path: DataPath, message: str) -> ConfigIssue:
    mark = positions.value(path)
    return ConfigIssue(file, mark.line, mark.col, dotted(path), message)


def _load(
    path: Path,
    name: str,
    profiles: dict[str, Any],
    result: Assembled,
    included_at: tuple[str, Positions, DataPath] | None,
) -> None:
    """Parse one profile file into ``profiles[name]``; its problems are reported in it, and one
    that cannot be read at the ``include:`` entry naming it (or the file, found by name)."""
    shown = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        if included_at is not None:
            file, positions, where = included_at
            message = f"cannot read profile file {shown}: {reason}"
            result.issues.append(_at(file, positions, where, message))
        else:
            result.issues.append(ConfigIssue(shown, 1, 1, ROOT_PATH, f"cannot read: {reason}"))
        return
    try:
        document = parse_yaml(text, shown)
    except ConfigErrors as exc:
        result.issues += [
            ConfigIssue(i.file, i.line, i.col, i.path, "the profile file is empty")
            if i.message == EMPTY_MESSAGE
            else i
            for i in exc.issues
        ]
        return
    result.issues += document.issues
    if not isinstance(document.data, dict):
        mark = document.positions.value(())
        message = "a profile file is a mapping: driver, description, defaults, tags"
        result.issues.append(ConfigIssue(shown, mark.line, mark.col, ROOT_PATH, message))
        return
    profiles[name] = document.data
    result.origins[("profiles", name)] = Origin(shown, document.positions, ())


def _apply_defaults(
    device: dict[str, Any],
    path: DataPath,
    profiles: dict[str, Any],
    file: str,
    positions: Positions,
    result: Assembled,
) -> None:
    name = device.get("profile")
    profile = profiles.get(name) if isinstance(name, str) else None
    if not isinstance(profile, dict) or profile.get("driver") != device.get("driver"):
        return  # an unknown profile or another driver's is reported by the cross checks
    defaults = profile.get("defaults")
    if not isinstance(defaults, dict):
        return
    home = result.origins.get(("profiles", str(name)))
    source = (
        Origin(home.file, home.positions, (*home.path, "defaults"))
        if home is not None
        else Origin(file, positions, ("profiles", str(name), "defaults"))
    )
    own = {k: v for k, v in defaults.items() if k not in NOT_DEFAULTS}
    _merge(device, own, path, source, result.origins)


def _merge(
    target: dict[str, Any],
    defaults: dict[str, Any],
    path: DataPath,
    source: Origin,
    origins: dict[DataPath, Origin],
) -> None:
    """Copy the keys ``target`` lacks; merge mappings both have, ``target``'s keys winning."""
    for key, value in defaults.items():
        if value is None:
            continue  # ``key: null`` in defaults says nothing
        here = (*path, key)
        there = Origin(source.file, source.positions, (*source.path, key))
        if key not in target:
            target[key] = copy.deepcopy(value)
            origins[here] = there
        elif isinstance(target[key], dict) and isinstance(value, dict):
            _merge(target[key], value, here, there, origins)
