"""A profile's ``defaults:``: device keys a device type sets once, which each device may override.

A meter's register map fixes more than its tags: its word order, whether it is documented 1-based,
which function reads it, how many registers one request may take, how often it is worth polling,
the deadbands its values need. Those are device keys, so the defaults model of a driver is derived
from its device model (every key but the ones that say which device this is), each optional, with
the same types, limits and descriptions: a wrong default is reported where the profile wrote it,
and the editor's schema shows the same keys in both places.

The defaults are applied to the parsed data of each device before validation (see
``agent.app.config.profilefiles.apply_defaults``), so the device model checks the combination
(tag addresses with the profile's ``address_offset``...) exactly as if the device had written it.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from pydantic import Field, create_model

from drivers.base import DeviceBase, ProfileBase, StrictModel

#: Device keys that say which device this is, or what it is made of: never a type's default.
NOT_DEFAULTS = frozenset({"name", "driver", "profile", "enabled", "tags", "connection"})


def default_keys(device_model: type[DeviceBase]) -> list[str]:
    """The keys of ``device_model`` a profile's ``defaults:`` may set, as written in YAML."""
    return [
        info.alias or key
        for key, info in device_model.model_fields.items()
        if key not in NOT_DEFAULTS and not info.exclude
    ]


@functools.cache
def defaults_model(device_model: type[DeviceBase]) -> type[StrictModel]:
    """Every default-able key of ``device_model``, optional, with its type, limits and text."""
    fields: dict[str, Any] = {}
    for key, info in device_model.model_fields.items():
        if key in NOT_DEFAULTS or info.exclude:
            continue
        # The limits (ge, le, a duration's parser) sit in the metadata: kept on the inner type,
        # they apply to a given value and leave the default None alone.
        inner: Any = (
            Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        )
        fields[key] = (
            inner | None,
            Field(default=None, alias=info.alias, description=info.description),
        )
    model: type[StrictModel] = create_model(
        f"{device_model.__name__}Defaults",
        __base__=StrictModel,
        __module__=device_model.__module__,
        __doc__=f"Keys of a {device_model.__name__} a profile sets for every device using it; "
        "a device's own key wins.",
        **fields,
    )
    return model


@functools.cache
def with_defaults(
    device_model: type[DeviceBase], profile_model: type[ProfileBase]
) -> type[ProfileBase]:
    """``profile_model`` with a ``defaults:`` key typed by ``device_model``'s keys."""
    defaults: Any = defaults_model(device_model) | None
    profile: type[ProfileBase] = create_model(
        profile_model.__name__,
        __base__=profile_model,
        __module__=profile_model.__module__,
        __doc__=profile_model.__doc__,
        defaults=(
            defaults,
            Field(
                default=None,
                description="device keys (byte_order, address_offset, read_function, "
                "max_registers, poll_interval, processing...) for every device using this "
                "profile; a device's own key wins, mappings are merged key by key",
            ),
        ),
    )
    return profile
