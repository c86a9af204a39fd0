"""Choosing and configuring the format named by ``mqtt.format``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.north.config import PLACEMENT_FIELDS
from agent.north.formats.base import Format
from agent.north.formats.jsonfmt import JsonFormat


def build_format(config: Any) -> Format:
    """The format object for this config (``config`` is the validated top-level model)."""
    agent, mqtt = config.agent, config.mqtt
    prefix = mqtt.topic_prefix or f"edge/{agent.id}"
    devices = [d for d in config.devices if getattr(d, "enabled", True)]
    # Each dialect is imported only when chosen: a gateway speaks one, and Sparkplug's protobuf
    # runtime or the cloud signers need not sit in its memory otherwise.
    if mqtt.format == "sparkplug":
        from agent.north.formats.sparkplug.format import SparkplugFormat

        sp = mqtt.sparkplug
        return SparkplugFormat(
            sp.group_id,
            sp.edge_node_id or agent.id,
            Path(agent.data_dir),
            primary_host_id=sp.primary_host_id,
            tag_types={d.name: _tag_types(d) for d in devices},
            topic_prefix=prefix,
        )
    if mqtt.format == "aws":
        from agent.north.formats.aws import MAX_PAYLOAD as MAX_AWS
        from agent.north.formats.aws import AwsIotFormat

        aws = mqtt.aws
        return AwsIotFormat(agent.id, prefix, max_payload=aws.max_payload if aws else MAX_AWS)
    if mqtt.format == "azure":
        from agent.north.formats.azure import MAX_PAYLOAD as MAX_AZURE
        from agent.north.formats.azure import AzureIotFormat

        az = mqtt.azure
        return AzureIotFormat(
            agent.id,
            (az.hub if az else None) or mqtt.host,
            mqtt.client_id or agent.id,
            token_ttl=az.token_ttl if az else 3600.0,
            max_payload=az.max_payload if az else MAX_AZURE,
        )
    if mqtt.format == "alibaba":
        from agent.north.formats.alibaba import AlibabaFormat

        ali = mqtt.alibaba
        subs = {}
        for d in devices:
            own = ali.devices.get(d.name)
            pk = (own.product_key if own else None) or ali.sub_product_key
            subs[d.name] = (pk, (own.device_name if own else None) or d.name)
        return AlibabaFormat(
            ali.product_key,
            ali.device_name or agent.id,
            subs,
            max_payload=ali.max_payload,
            tls=mqtt.tls is not None,
            sub_product_key=ali.sub_product_key,
        )
    if mqtt.format == "huawei":
        from agent.north.formats.huawei import HuaweiFormat

        hw = mqtt.huawei
        ids = {d.name: hw.devices.get(d.name) or f"{hw.sub_product_id}_{d.name}" for d in devices}
        return HuaweiFormat(
            hw.device_id,
            ids,
            service_id=hw.service_id,
            max_payload=hw.max_payload,
            sub_product_id=hw.sub_product_id,
        )
    if mqtt.format == "thingsboard":
        from agent.north.formats.thingsboard import DEFAULT_MAX_PAYLOAD, ThingsBoardFormat

        tb = mqtt.thingsboard
        types = {}
        for d in devices if tb else []:
            # the device's own type, else its profile's, else thingsboard.device_type
            own = tb.type_of(d.name, getattr(d, "profile", None))
            if own is not None:
                types[d.name] = own
        return ThingsBoardFormat(
            [d.name for d in devices],
            device_type=tb.device_type if tb else None,
            max_payload=tb.max_payload if tb else DEFAULT_MAX_PAYLOAD,
            device_types=types,
        )
    options = getattr(mqtt, "json_options", None)
    if options is None:
        return JsonFormat(agent.id, prefix)
    placement = {}
    for d in devices:
        own = options.placement.get(d.name)
        fields = {}
        for key in PLACEMENT_FIELDS:
            value = getattr(own, key, None) or getattr(agent, key, None)
            if value is not None:
                fields[key] = value
        placement[d.name] = fields
    return JsonFormat(
        agent.id,
        prefix,
        topic_template=options.topic_template,
        placement=placement,
        user_properties=options.user_properties,
        default_placement={k: v for k in PLACEMENT_FIELDS if (v := getattr(agent, k, None))},
    )


def _tag_types(device: Any) -> dict[str, str]:
    """Tag name to the value type the driver declares for it (where it declares one)."""
    return {t.name: v for t in device.tags if (v := t.value_type()) is not None}
