"""Northbound formats: what reaches the broker, in each platform's dialect.

A format is an encoder plus its session rules (``agent.north.formats.base.Format``); the publisher
drives any of them the same way. ``build_format`` picks and configures one from the config.
"""

from __future__ import annotations

from agent.north.formats.base import Command, Format, Message, Packed, Reaction, stream_of
from agent.north.formats.build import build_format
from agent.north.formats.jsonfmt import JsonFormat

__all__ = [
    "Command",
    "Format",
    "JsonFormat",
    "Message",
    "Packed",
    "Reaction",
    "build_format",
    "stream_of",
]
