"""MQTT v5 PUBLISH properties, packed without paho's per-message ``Properties`` machinery.

Every data message on MQTT v5 carries user properties (agent, device, seq: the dedupe key a
shared-subscription consumer reads unparsed), a content type and maybe an expiry. paho's
``Properties`` validates each assignment against its whole property table and ``pack()`` walks
all 27 property names; at 1,000 messages/s that was 7 % of the agent's event loop. The bytes are
the same for every message but the user properties, so the constant part is packed once by paho
itself, and each message adds only its string pairs, encoded with paho's own ``writeUTF``.
:class:`PackedProperties` is a ``Properties`` whose ``pack()`` returns those bytes, which is all
paho's ``publish`` asks of it.
"""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers, writeUTF


class PackedProperties(Properties):
    """PUBLISH properties already serialised (``pack()`` is what paho's publish path calls)."""

    def __init__(self, packed: bytes) -> None:  # no super().__init__: nothing else is read
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        object.__setattr__(self, "_packed", packed)

    def pack(self) -> bytes:
        packed: bytes = object.__getattribute__(self, "_packed")
        return packed


class PublishProperties:
    """Packs one message's properties: the fixed part (content type, expiry) once per shape."""

    def __init__(self) -> None:
        self._fixed: dict[tuple[str | None, int | None], bytes] = {}
        user = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self._user_id = VariableByteIntegers.encode(user.getIdentFromName("UserProperty"))  # type: ignore[no-untyped-call]

    def pack(
        self,
        user: tuple[tuple[str, str], ...] | list[tuple[str, str]],
        content_type: str | None,
        expiry: int | None,
    ) -> PackedProperties:
        fixed = self._fixed.get((content_type, expiry))
        if fixed is None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if content_type:
                props.ContentType = content_type
            if expiry:
                props.MessageExpiryInterval = expiry
            packed = props.pack()  # type: ignore[no-untyped-call]
            _, skip = VariableByteIntegers.decode(packed)  # type: ignore[no-untyped-call]
            fixed = self._fixed[(content_type, expiry)] = bytes(packed[skip:])
        body = bytearray(fixed)
        for name, value in user:
            body += self._user_id
            body += writeUTF(name)  # type: ignore[no-untyped-call]
            body += writeUTF(value)  # type: ignore[no-untyped-call]
        return PackedProperties(VariableByteIntegers.encode(len(body)) + bytes(body))  # type: ignore[no-untyped-call]
