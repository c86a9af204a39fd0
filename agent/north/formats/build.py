"""Choosing the format named by ``mqtt.format``: the registry finds its class, the class builds
itself from the config (``Format.from_config``). What a format reads of the config lives with
the format, so a new one (bundled or a third party's) needs no line here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.north.formats.base import Format
from agent.north.formats.registry import load_format

if TYPE_CHECKING:  # the config is built in app; north reads it, never imports app at run time
    from agent.app.config.models import Config


def build_format(config: Config) -> Format:
    """The format object for this config. Each dialect is imported only when chosen: a gateway
    speaks one, and Sparkplug's protobuf runtime or the cloud signers need not sit in its
    memory otherwise."""
    return load_format(config.mqtt.format).from_config(config)
