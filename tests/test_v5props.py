"""MQTT v5 PUBLISH properties packed by the agent are byte for byte what paho would pack."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.north.v5props import PublishProperties

# MQTT strings carry no U+0000 (MQTT-1.5.4-2); device names and seqs never do.
text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)


@given(
    user=st.lists(st.tuples(text, text), max_size=5),
    content_type=st.none() | st.sampled_from(["application/json", "application/x-protobuf"]),
    expiry=st.none() | st.integers(1, 2**32 - 1),
)
def test_same_bytes_as_paho(
    user: list[tuple[str, str]], content_type: str | None, expiry: int | None
) -> None:
    packer = PublishProperties()
    for _ in range(2):  # the second time from the cached fixed part
        ours = packer.pack(user, content_type, expiry).pack()
        theirs = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if user:
            theirs.UserProperty = list(user)
        if content_type:
            theirs.ContentType = content_type
        if expiry:
            theirs.MessageExpiryInterval = expiry
        assert ours == theirs.pack()  # type: ignore[no-untyped-call]
        decoded = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        decoded.unpack(ours)  # type: ignore[no-untyped-call]
        assert getattr(decoded, "UserProperty", []) == list(user)
