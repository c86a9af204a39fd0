"""Every kind of stream the agent sends north, named once.

Features that each pass their own tests failed where they met: alarm events were deleted
unpublished by four formats, and a reload kept a format built for the old config. The seams
matrix (tests/test_seams_matrix.py) therefore runs every registered format (entry-point group
``edge_agent.formats``) over every kind listed here, through a real broker; a kind added here
fails the matrix until every format's dialect adapter (tests/platforms/dialects.py) decodes it.

Three of the kinds are buffered (the buffer's ``kind`` column says which stream a row belongs to,
see ``agent.north.formats.base.stream_of``): raw data, window aggregates and waveform features
share the device's ``data`` stream, alarm events have their own ``event`` stream (seq counted per
device and stream). The others are session messages a format builds from state the publisher
keeps.
"""

from __future__ import annotations

import enum


class StreamKind(enum.StrEnum):
    """What the agent publishes, and who produces it."""

    #: Values of one poll (or subscription flush): scheduler → pipeline → buffer, stream <device>.
    DATA = "data"
    #: Window aggregates ``<tag>.<stat>`` at each window's end: processing/windows.py, on the
    #: device's data stream (a batch of their own, stamped with the window's end).
    WINDOW = "window"
    #: Waveform features ``<tag>.<feature>`` of an array tag: processing/features.py, on the
    #: device's data stream.
    FEATURES = "features"
    #: Alarm raise/clear documents: processing/alarms.py, buffered as rows of kind ``event``.
    EVENT = "event"
    #: Machine state: processing/state.py; the retained side document
    #: ``Publisher.retain(device, "state", ...)`` (and ``state`` values in the data).
    STATE = "state"
    #: A device up or down (removed from the config: down): scheduler and reload →
    #: ``Publisher.device_status`` → ``Format.status_changed``/``retained_status``.
    DEVICE_STATUS = "device_status"
    #: The gateway online or offline: ``Format.online()``, ``offline()`` and the MQTT will.
    GATEWAY_STATUS = "gateway_status"
    #: The answer to a write from the platform: ``CommandHandler`` → ``Format.reply``.
    COMMAND_REPLY = "command_reply"


#: Every stream kind, in the order above.
STREAM_KINDS: tuple[StreamKind, ...] = tuple(StreamKind)

#: The buffer's ``kind`` of a device's alarm events (its data rows are ``data``).
EVENT_STREAM = "event"
#: The side-document kind of a device's machine state (``Publisher.retain(device, STATE, ...)``).
STATE_DOCUMENT = "state"
