"""The S7 driver: connect, poll the planned multi-variable reads, decode, quality per tag; writes.

The plan depends on the PDU the PLC grants, known only once connected: it is made in
``__init__`` for the 480 bytes most PLCs grant (for ``describe_plan`` before a connection) and
again at every connect for the PDU the PLC answered, shared between devices that plan alike.

A request the PLC answers item by item: an item it refuses (a DB that does not exist, an offset
past its end) makes only that item's tags bad, with the PLC's return code as the reason. An
answer that does not fit the request (item count, lengths) makes the request's tags bad and
keeps the connection, as the TPKT framing keeps the stream in step; a timeout or a frame that
breaks the framing loses the connection, which the agent reopens with backoff.

Writes go through the command path (allow-list, min/max checked by ``check_write``), as one
S7 write: a BOOL as a single bit (the PLC's other bits of the byte are never rewritten), other
types as their bytes; STRING and WSTRING leave the PLC's maximum-length header alone. The bytes
are then read back and compared.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, NamedTuple

from drivers.base import DeviceBase, DeviceError, Driver, Reading, WriteError
from drivers.base.driver import own_config
from drivers.base.writes import take_bool, take_number, take_text
from drivers.s7.codec import (
    FLOAT_TYPES,
    INTEGER_TYPES,
    TEXT_TYPES,
    Decoder,
    encode,
    header_skip,
    make_decoder,
)
from drivers.s7.config import S7Device, S7Profile, S7Tag
from drivers.s7.link import InvalidAnswer, S7Link
from drivers.s7.planner import Plan, Request, plan

#: The PDU planned for before the PLC has said its own (what S7-1500 and most CPs grant).
DEFAULT_PDU = 480


class _PlanTag(NamedTuple):
    """What the planner reads of a tag: the key under which devices share one plan."""

    name: str
    area: str
    db: int
    byte: int
    size: int


#: How one piece of an item's data becomes a value: (tag, start, end, part, decoder); part is
#: -1 when the item carries the tag whole, else where this piece goes in the tag's bytes.
_Read = tuple[str, int, int, int, Decoder]
#: One request: the request, its items as link.read takes them, and each item's reads.
_Step = tuple[Request, tuple[tuple[int, int, int, int], ...], tuple[tuple[_Read, ...], ...]]


@functools.lru_cache(maxsize=256)
def _shared_plan(tags: tuple[_PlanTag, ...], pdu: int, max_gap: int, max_items: int) -> Plan:
    """One plan for every device whose tags, PDU and limits plan alike (a profile's devices)."""
    return plan(tags, pdu=pdu, max_gap=max_gap, max_items=max_items)


class S7Driver(Driver):
    """One Siemens S7 PLC."""

    name = "s7"
    device_model = S7Device
    profile_model = S7Profile

    def __init__(self, device: DeviceBase) -> None:
        super().__init__(device)
        device = own_config(device, S7Device)
        self.config: S7Device = device
        self._tags: dict[str, S7Tag] = {t.name: t for t in device.tags}
        self._plan_tags = tuple(
            _PlanTag(t.name, t.location.area, t.location.db, t.location.byte, t.bytes)
            for t in device.tags
        )
        self._sizes = {t.name: t.bytes for t in device.tags}
        self._decoders: dict[str, Decoder] = {
            t.name: make_decoder(t.type, t.length, t.count, t.location.bit) for t in device.tags
        }
        self.plan: Plan = _shared_plan(
            self._plan_tags, DEFAULT_PDU, device.max_gap, device.max_items
        )
        self._link: S7Link | None = None
        self._answers: dict[tuple[int, int], bytes] = {}  # (request, item) -> the last data
        self._errors: Counter[str] = Counter()
        self._plan_steps()

    @property
    def link(self) -> S7Link | None:
        """The PLC connection (tests and the benchmark count its exchanges)."""
        return self._link

    def describe_plan(self) -> dict[str, Any]:
        items = [i for r in self.plan.requests for i in r.items]
        return {
            "requests": len(self.plan.requests),
            "items": len(items),
            "bytes": sum(i.size for i in items),
            "pdu": self.plan.pdu,
            "lower_bound": self.plan.lower_bound,
            "optimal": self.plan.exact,
        }

    def error_counts(self) -> Mapping[str, int]:
        return dict(self._errors)

    def raw_values(self) -> Mapping[str, Any]:
        """The bytes each tag was decoded from, in hex as a PLC watch table shows them (cut
        from the last answers when asked, not on every poll)."""
        pieces: dict[str, list[tuple[int, bytes]]] = {}
        for (n, m), data in list(self._answers.items()):
            for name, start, end, part, _ in self._steps[n][2][m]:
                pieces.setdefault(name, []).append((max(part, 0), data[start:end]))
        return {
            name: b"".join(c for _, c in sorted(got, key=lambda g: g[0])).hex(" ")
            for name, got in pieces.items()
        }

    def _plan_steps(self) -> None:
        """For each request of the plan: its item specifications and how each item's data
        becomes values, worked out once per plan rather than on every poll."""
        steps = []
        for req in self.plan.requests:
            specs = tuple((i.area_code, i.db, i.start, i.size) for i in req.items)
            item_reads = tuple(
                tuple(
                    (
                        p.tag,
                        p.start,
                        p.start + p.count,
                        -1 if p.part == 0 and p.count == self._sizes[p.tag] else p.part,
                        self._decoders[p.tag],
                    )
                    for p in i.pieces
                )
                for i in req.items
            )
            steps.append((req, specs, item_reads))
        self._steps: list[_Step] = steps
        self._answers.clear()

    # -- connection -------------------------------------------------------------------------------

    async def connect(self) -> None:
        await self.close()
        link = S7Link(self.config.connection, name=self.config.name)
        await link.open()
        self._link = link
        self.plan = _shared_plan(
            self._plan_tags, link.pdu, self.config.max_gap, self.config.max_items
        )
        self._plan_steps()

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    def _connected_link(self) -> S7Link:
        link = self._link
        if link is None or not link.connected:
            raise DeviceError("connection lost", "not connected")
        return link

    # -- polling ----------------------------------------------------------------------------------

    async def poll(self) -> list[Reading]:
        link = self._connected_link()
        readings: list[Reading] = []
        failed: dict[str, str] = {}
        parts: dict[str, list[tuple[int, bytes]]] = {}
        answers = self._answers
        undecodable: list[tuple[str, Exception]] = []
        for n, (req, specs, item_reads) in enumerate(self._steps):
            try:
                results = await link.read(specs)
            except DeviceError as exc:
                self._errors[exc.reason] += 1
                raise
            except InvalidAnswer as exc:
                self._errors["invalid answer"] += 1
                failed.update(dict.fromkeys(req.tags, f"invalid answer: {exc}"))
                continue
            now = time.time()
            for m, (reads, result) in enumerate(zip(item_reads, results, strict=True)):
                data = result.data
                if data is None:
                    self._errors["item error"] += 1
                    reason = result.reason or "item error"
                    failed.update(dict.fromkeys((r[0] for r in reads), reason))
                    continue
                answers[n, m] = data
                for name, start, end, part, decoder in reads:
                    if part >= 0:
                        parts.setdefault(name, []).append((part, data[start:end]))
                        continue
                    try:
                        readings.append(Reading(name, decoder(data[start:end]), now))
                    except (ValueError, IndexError) as exc:
                        undecodable.append((name, exc))
        now = time.time()
        for name, got in parts.items():
            if name in failed:
                continue
            got.sort(key=lambda g: g[0])
            try:
                value = self._decoders[name](b"".join(c for _, c in got))
            except (ValueError, IndexError) as exc:
                undecodable.append((name, exc))
                continue
            readings.append(Reading(name, value, now))
        for name, problem in undecodable:
            self._errors["undecodable"] += 1
            readings.append(Reading.bad(name, now, f"undecodable: {problem}"))
        readings.extend(Reading.bad(name, now, reason) for name, reason in failed.items())
        return readings

    # -- writes -----------------------------------------------------------------------------------

    def check_write(self, tag: str, value: Any) -> None:
        self._encode(tag, value)

    def _encode(self, tag: str, value: Any) -> bytes:
        """The bytes (a BOOL: one byte, 0 or 1) the write sends; ``WriteError`` when refused."""
        t = self._tags.get(tag)
        if t is None or not t.writable:
            raise WriteError(f"tag '{tag}' is not writable")
        subject = f"tag '{tag}'"
        if t.type == "BOOL":
            return b"\x01" if take_bool(value, subject) else b"\x00"
        if t.type in TEXT_TYPES:
            try:
                return encode(t.type, t.length, take_text(value, subject))
            except ValueError as exc:
                raise WriteError(f"tag '{tag}': {exc}") from None
        value = take_number(value, subject, t.min, t.max)
        if t.type in INTEGER_TYPES:
            if isinstance(value, float):
                if not value.is_integer():
                    raise WriteError(f"tag '{tag}' ({t.type}) takes a whole number")
                value = int(value)
        elif t.type in FLOAT_TYPES:
            value = float(value)
        try:
            return encode(t.type, t.length, value)
        except ValueError as exc:
            raise WriteError(f"tag '{tag}': {exc}") from None

    async def write(self, tag: str, value: Any) -> None:
        data = self._encode(tag, value)
        t = self._tags[tag]
        where = t.location
        link = self._connected_link()
        try:
            if t.type == "BOOL":
                bit = where.bit or 0
                await link.write(where.area_code, where.db, where.byte * 8 + bit, data, bit=True)
                (back,) = await link.read([(where.area_code, where.db, where.byte, 1)])
                if back.data is None:
                    raise WriteError(f"not confirmed: {back.reason}")
                got = bool(back.data[0] >> bit & 1)
                if got != bool(value):
                    raise WriteError(f"not confirmed: read back {got}")
                return
            skip = header_skip(t.type)
            if skip:
                await self._check_declared_length(link, t, data, skip)
            start = where.byte + skip
            await link.write(where.area_code, where.db, start, data, bit=False)
            (back,) = await link.read([(where.area_code, where.db, start, len(data))])
        except InvalidAnswer as exc:
            raise WriteError(f"PLC refused: {exc}") from None
        if back.data is None:
            raise WriteError(f"not confirmed: {back.reason}")
        if back.data != data:
            shown = back.data.hex(" ")
            raise WriteError(f"not confirmed: read back {shown}")

    @staticmethod
    async def _check_declared_length(link: S7Link, t: S7Tag, data: bytes, skip: int) -> None:
        """A text longer than the PLC's own STRING[n] would run into the next variable: the
        maximum the PLC keeps in the header is read first, whatever ``length`` says."""
        where = t.location
        (head,) = await link.read([(where.area_code, where.db, where.byte, skip)])
        if head.data is None:
            raise WriteError(f"PLC refused: {head.reason}")
        top = head.data[0] if skip == 1 else int.from_bytes(head.data[:2], "big")
        chars = len(data) - 1 if skip == 1 else (len(data) - 2) // 2
        if chars > top:
            raise WriteError(
                f"the PLC declares {t.type}[{top}] at {t.address}: at most {top} characters"
            )
