"""Config models of the format sections (``mqtt.json``, ``mqtt.sparkplug``) and their checks.

Every name that ends up in a topic is a ``Name`` (``[A-Za-z0-9_.-]+``), and templates are
checked level by level, so no value can add a topic level, a wildcard or an empty level.
"""

from __future__ import annotations

import string
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints, field_validator

from drivers.base import Name, PositiveDuration, Size, StrictModel

#: Fields a json topic template may use.
TEMPLATE_FIELDS = ("agent", "site", "area", "line", "device", "kind")
PLACEMENT_FIELDS = ("site", "area", "line")


def template_fields(template: str) -> list[str]:
    """The placeholders of a template, in order; ValueError for anything but ``{name}``."""
    found = []
    for _literal, fname, spec, conv in string.Formatter().parse(template):
        if fname is None:
            continue
        if spec or conv:
            raise ValueError(f"placeholder {{{fname}}} must not have a format spec or conversion")
        if fname not in TEMPLATE_FIELDS:
            known = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
            raise ValueError(f"unknown placeholder {{{fname}}} (use {known})")
        found.append(fname)
    return found


def check_template(template: str) -> str:
    """A publish topic with names filled in: no wildcards, no ``$``, no empty level, one level
    naming the device, and a last level that says the stream (``{kind}`` or ``data``)."""
    try:
        fields = template_fields(template)
    except ValueError as exc:  # unbalanced braces
        raise ValueError(f"invalid topic_template: {exc}") from None
    if "device" not in fields:
        raise ValueError("topic_template must contain {device}: devices would share one topic")
    if template.startswith("$"):
        raise ValueError("topic_template must not start with '$' (reserved for broker topics)")
    if "\0" in template:
        raise ValueError("topic_template must not contain NUL")
    levels = template.split("/")
    for level in levels:
        if level == "":
            raise ValueError(
                "topic_template must not have empty levels (leading, trailing or '//')"
            )
        if "+" in level or "#" in level:
            raise ValueError("topic_template must not contain the wildcards '+' or '#'")
    if "kind" not in fields and levels[-1] != "data":
        raise ValueError(
            "topic_template must end with the level {kind} or data (events replace that level)"
        )
    return template


class Placement(StrictModel):
    """Where a device sits in the plant, for topic templates (overrides agent.site/area/line)."""

    site: Name | None = None
    area: Name | None = None
    line: Name | None = None


class JsonOptions(StrictModel):
    """Options of ``format: json``."""

    topic_template: str | None = Field(
        default=None,
        max_length=400,
        description="data topic, for example {site}/{area}/{line}/{device}/data; placeholders: "
        + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
        + "; default <topic_prefix>/{device}/{kind}",
    )
    placement: dict[Name, Placement] = Field(
        default_factory=dict, description="per device: site, area, line for the template"
    )
    user_properties: bool = Field(
        default=True,
        description="on MQTT v5, send agent, device and seq as user properties of data messages",
    )

    @field_validator("topic_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value)


class SparkplugOptions(StrictModel):
    """Options of ``format: sparkplug`` (Sparkplug B 3.0)."""

    group_id: Name = Field(description="Sparkplug group id")
    edge_node_id: Name | None = Field(default=None, description="edge node id; default agent.id")
    primary_host_id: Name | None = Field(
        default=None,
        description="publish only while this host application's STATE is online",
    )


def placement_issues(agent: Any, mqtt: Any, device_names: list[str]) -> list[tuple[str, str]]:
    """(key under mqtt.json, message) for template fields no config value fills."""
    options = getattr(mqtt, "json_options", None)
    if options is None or options.topic_template is None:
        return [] if options is None else _unknown_devices(options, device_names)
    issues = _unknown_devices(options, device_names)
    needed = [f for f in template_fields(options.topic_template) if f in PLACEMENT_FIELDS]
    for fname in dict.fromkeys(needed):
        if getattr(agent, fname, None) is not None:
            continue
        missing = [
            d for d in device_names if getattr(options.placement.get(d), fname, None) is None
        ]
        if missing or not device_names:
            issues.append(
                (
                    "topic_template",
                    f"{{{fname}}} needs agent.{fname} or mqtt.json.placement.<device>.{fname} "
                    f"(missing for: {', '.join(missing) or 'every device'})",
                )
            )
    return issues


def _unknown_devices(options: JsonOptions, device_names: list[str]) -> list[tuple[str, str]]:
    unknown = sorted(set(options.placement) - set(device_names))
    if unknown:
        return [("placement", f"unknown device(s): {', '.join(unknown)}")]
    return []


def _thingsboard_type(value: str) -> str:
    if value != value.strip() or not value.isprintable():
        raise ValueError(
            "a ThingsBoard device profile name has no control characters and no leading or "
            "trailing spaces"
        )
    return value


#: A ThingsBoard device profile name: free text in ThingsBoard (``Power meter``), carried in a JSON
#: payload and never in a topic, so spaces are allowed, unlike in a ``Name``.
ThingsBoardType = Annotated[
    str, StringConstraints(min_length=1, max_length=255), AfterValidator(_thingsboard_type)
]


class ThingsBoardOptions(StrictModel):
    """Options of ``format: thingsboard`` (ThingsBoard's gateway MQTT API). The gateway's access
    token comes from ``mqtt.password_env`` or ``mqtt.password_file``; with X.509 authentication
    give ``mqtt.tls.cert_file``/``key_file`` instead.

    The type (device profile) ThingsBoard gives a device it creates is the first of
    ``device_types[<device>]``, ``profile_types[<the device's profile>]`` and ``device_type``;
    with none of them the connect message names no type (ThingsBoard's ``default`` profile).
    The names in both maps must be profiles and devices of this file.
    """

    device_type: ThingsBoardType | None = Field(
        default=None,
        description="device profile for devices ThingsBoard creates; its default profile if unset",
    )
    profile_types: dict[Name, ThingsBoardType] = Field(
        default_factory=dict,
        description="per profile of this file: the ThingsBoard device profile of its devices",
    )
    device_types: dict[Name, ThingsBoardType] = Field(
        default_factory=dict,
        description="per device: its ThingsBoard device profile (beats profile_types)",
    )
    max_payload: Size = Field(
        default=65536,
        ge=1024,
        description="largest telemetry message (ThingsBoard's transport limit, 64KB by default)",
    )

    def type_of(self, device: str, profile: str | None) -> str | None:
        """The ThingsBoard type of one device: its own, else its profile's, else the default."""
        own = self.device_types.get(device)
        if own is not None:
            return own
        if profile is not None and profile in self.profile_types:
            return self.profile_types[profile]
        return self.device_type


class AwsOptions(StrictModel):
    """Options of ``format: aws`` (AWS IoT Core). Authentication is the thing's certificate:
    ``mqtt.tls.cert_file`` and ``key_file`` (and Amazon's root CA as ``ca_file``)."""

    max_payload: Size = Field(
        default=128 * 1024, ge=1024, description="AWS IoT Core's message size limit (128KB)"
    )


class AzureOptions(StrictModel):
    """Options of ``format: azure`` (Azure IoT Hub). The device id is ``mqtt.client_id``; its
    symmetric key comes from ``mqtt.password_env``/``password_file`` (or use X.509 with
    ``mqtt.tls.cert_file``/``key_file``)."""

    hub: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9.-]+$",
        description="IoT Hub host name (NAME.azure-devices.net); default mqtt.host",
    )
    token_ttl: PositiveDuration = Field(
        default=3600.0, description="life of each SAS token; renewed before it expires"
    )
    max_payload: Size = Field(
        default=256 * 1024, ge=1024, description="IoT Hub's message size limit (256KB)"
    )


class AlibabaSubDevice(StrictModel):
    """How one of our devices is known on Alibaba Cloud IoT Platform."""

    product_key: Name | None = Field(default=None, description="default alibaba.sub_product_key")
    device_name: Name | None = Field(default=None, description="default: the device's name")


class AlibabaOptions(StrictModel):
    """Options of ``format: alibaba`` (Alibaba Cloud IoT Platform, Alink JSON). The gateway's
    DeviceSecret comes from ``mqtt.password_env``/``password_file``; sub-devices are registered
    dynamically, so their secrets come from the platform."""

    product_key: Name = Field(description="ProductKey of the gateway device")
    device_name: Name | None = Field(
        default=None, description="DeviceName of the gateway; default agent.id"
    )
    sub_product_key: Name = Field(description="ProductKey of the sub-devices (our devices)")
    devices: dict[Name, AlibabaSubDevice] = Field(
        default_factory=dict, description="per device: another product key or device name"
    )
    max_payload: Size = Field(
        default=256 * 1024, ge=1024, description="largest message (the platform's 256KB)"
    )


class HuaweiOptions(StrictModel):
    """Options of ``format: huawei`` (Huawei Cloud IoTDA). The gateway's device secret comes
    from ``mqtt.password_env``/``password_file``."""

    device_id: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$", max_length=128, description="IoTDA device id of the gateway"
    )
    sub_product_id: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$",
        max_length=64,
        description="product id of the sub-devices: their device id is <product id>_<name>",
    )
    devices: dict[Name, str] = Field(
        default_factory=dict, description="per device: its IoTDA device id, when it differs"
    )
    service_id: Name = Field(default="edge", description="service of the product model")
    max_payload: Size = Field(default=1024 * 1024, ge=1024, description="largest message")
