"""From a file name to a validated, merged ``Config``, or every problem the file has.

The steps (parse with positions, pre-check drivers, pydantic, cross-references, secrets) each
collect issues instead of raising, so one run of ``edge-agent validate`` lists everything that
needs fixing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from agent.app.config.checks import cross_check, line_check, outputs_check, precheck
from agent.app.config.errors import ROOT_PATH, YAML_PATH, ConfigErrors, ConfigIssue
from agent.app.config.formats import (
    FormatClasses,
    format_checks,
    format_section_model,
    load_section_formats,
)
from agent.app.config.locate import Locator
from agent.app.config.models import BASE_DIR, Config, MqttSection, build_config_model
from agent.app.config.profilefiles import assemble, default_profile_dirs
from agent.app.config.secrets import resolve_secrets as fill_secrets
from agent.app.config.yamlpos import EMPTY_MESSAGE, parse_yaml
from agent.core.processing.config import check_device_processing
from drivers.base import Driver

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_TITLE = "edge-agent configuration"


def _read(path: Path) -> str:
    """The file's text; ``OSError`` propagates (the caller words "cannot read" for its audience),
    undecodable bytes become an issue at the first bad byte's line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigErrors(
            [ConfigIssue(str(path), line, col, YAML_PATH, "the file is not UTF-8 text")]
        ) from None


def _merge_profiles(config: Config) -> Config:
    """Each device with its profile's tags first, then its own (frozen models: copies)."""
    devices = [
        d.model_copy(update={"tags": [*config.profiles[d.profile].tags, *d.tags]})
        if d.profile is not None
        else d
        for d in config.devices
    ]
    return config.model_copy(update={"devices": devices})


def load_config(
    path: Path,
    drivers: Mapping[str, type[Driver]],
    *,
    resolve_secrets: bool = False,
    profile_dirs: Sequence[Path] | None = None,
    text: str | None = None,
    underlay: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Read, validate and merge one config file.

    Raises ``ConfigErrors`` listing every problem, and ``OSError`` when the file cannot be read.
    Relative paths in the file are resolved against the file's directory. With
    ``resolve_secrets`` the MQTT password is read from its variable or file and the TLS files must
    be readable; ``validate`` leaves that to the machine that runs the agent. A device's
    ``profile:`` the file does not define is looked for in ``profile_dirs`` (by default
    /etc/edge-agent/profiles, then the bundled profiles), and ``include:`` adds profile files.

    A fleet push (agent/app/fleet) is checked by the same steps: ``text`` is the pushed file
    (``path`` only names it), ``underlay`` the gateway's own sections it does not carry, and
    ``base_dir`` the local file's directory its relative paths are relative to.
    """
    file = str(path)
    document = parse_yaml(_read(path) if text is None else text, file)
    issues = list(document.issues)
    data: Any = document.data
    if underlay is not None and isinstance(data, dict):
        data = {**underlay, **data}
    if data is None:  # "---" or "~" alone: as empty as an empty file
        raise ConfigErrors([ConfigIssue(file, 1, 1, ROOT_PATH, EMPTY_MESSAGE)])
    if not isinstance(data, dict):
        mark = document.positions.value(())
        raise ConfigErrors(
            [
                *issues,
                ConfigIssue(
                    file,
                    mark.line,
                    mark.col,
                    ROOT_PATH,
                    "the file must be a mapping of sections (agent, mqtt, buffer, metrics, "
                    "profiles, devices)",
                ),
            ]
        )
    dirs = default_profile_dirs() if profile_dirs is None else profile_dirs
    base = (base_dir if base_dir is not None else path.parent).absolute()
    found = assemble(data, file, document.positions, base, dirs)
    issues += found.issues
    loc = Locator(file, document, found.origins)
    pre = precheck(data, drivers, loc)
    issues += pre.issues
    # Only the drivers this file names are imported and typed into the model (see Drivers).
    # Likewise the formats: the one the file chooses is imported, the others are names.
    outputs = data.get("outputs")
    outputs = outputs if isinstance(outputs, list) else []
    formats = load_section_formats(data, [data.get("mqtt"), *outputs])
    model = build_config_model(
        {n: drivers[n] for n in _named_drivers(data) if n in drivers}, formats
    )
    context = {BASE_DIR: base}
    config: Config | None = None
    try:
        config = model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = [
            e
            for e in exc.errors(include_url=False, include_input=False)
            if not any(tuple(e["loc"][: len(p)]) == p for p in pre.skip)
        ]
        issues += loc.from_pydantic(errors, model)
    issues += cross_check(data, loc, pre.skip)
    for section in [("mqtt",), *(("outputs", i) for i in range(len(outputs)))]:
        issues += [loc.at_key(p, message) for p, message in format_checks(data, section, formats)]
    issues += outputs_check(data, loc)
    issues += line_check(data, drivers, loc, pre.skip)
    mqtt = config.mqtt if config is not None else None
    if resolve_secrets:
        if mqtt is None:
            mqtt = _mqtt_alone(data, context, formats)
        if mqtt is not None:
            mqtt, secret_issues = fill_secrets(mqtt, loc)
            issues += secret_issues
    resolved = list(config.outputs) if config is not None else []
    if resolve_secrets:
        for i, entry in enumerate(resolved):
            resolved[i], secret_issues = fill_secrets(entry, loc, ("outputs", i))
            issues += secret_issues
    if issues or config is None:
        raise ConfigErrors(issues)
    merged = _merge_profiles(config)
    issues += _after_merge(merged, loc)
    if issues:
        raise ConfigErrors(issues)
    return merged.model_copy(update={"mqtt": mqtt, "outputs": resolved})


def _named_drivers(data: dict[str, Any]) -> set[str]:
    """The ``driver:`` names the devices and profiles of a parsed file give."""
    names: set[str] = set()
    for section in ("devices", "profiles"):
        entries = data.get(section)
        values: list[Any] = (
            list(entries.values())
            if isinstance(entries, dict)
            else entries
            if isinstance(entries, list)
            else []
        )
        for entry in values:
            if isinstance(entry, dict) and isinstance(entry.get("driver"), str):
                names.add(entry["driver"])
    return names


def _after_merge(config: Config, loc: Locator) -> list[ConfigIssue]:
    """Rules across a device's tags (state rules, a waveform's shaft speed tag) for devices with a
    profile: only now are the profile's tags part of the device. Reported at the device's key,
    like the same mistake in a device without a profile."""
    issues: list[ConfigIssue] = []
    for i, device in enumerate(config.devices):
        if device.profile is None:
            continue
        try:
            check_device_processing(device, merged=True)
        except PydanticCustomError as exc:
            ctx = exc.context or {}
            issues.append(loc.at_key(("devices", i, str(ctx.get("key"))), str(ctx.get("message"))))
    return issues


def _mqtt_alone(
    data: dict[str, Any], context: dict[str, Any], formats: FormatClasses
) -> MqttSection | None:
    """The ``mqtt`` section validated by itself, so a missing secret is reported in the same run
    as a mistake elsewhere in the file; None when the section is wrong (already reported)."""
    model = format_section_model(MqttSection, formats)
    try:
        return model.model_validate(data.get("mqtt", {}), context=context)
    except ValidationError:
        return None


def config_schema(
    drivers: Mapping[str, type[Driver]], formats: FormatClasses | None = None
) -> dict[str, Any]:
    """JSON Schema of the whole file for these drivers and formats (by default every installed
    format), for editors and CI."""
    schema = build_config_model(drivers, formats).model_json_schema(mode="validation")
    schema.pop("title", None)
    return {"$schema": SCHEMA_DIALECT, "title": SCHEMA_TITLE, **schema}
