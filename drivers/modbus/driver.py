"""The Modbus driver: connect, poll the planned requests, decode, report quality per tag; writes.

pymodbus (the RTU client) is told neither to retry nor to reconnect (``retries=0``,
``reconnect_delay=0``): the agent owns backoff, and a client retrying behind its back would
multiply the cost of a dead device (``timeout x (retries + 1)`` per request) and hide connection
loss from the device status. Requests fail with the driver's own exceptions
(``drivers.modbus.errors``) on every transport: Modbus TCP never imports pymodbus, and the link
translates pymodbus's on RTU.

Exception 2 (illegal data address) on a read that joins several tags means some address in it
does not exist on the device (maps with holes the manual does not show). The request is split in
two and both halves are sent at once, recursively, until every tag that still fails is alone;
those are marked bad with the exception and left out of the plan, and the split plan is kept, so
the failing request is not repeated every cycle. The learned plan is forgotten (the device
probed again with the full plan) after every reconnect and every ``reprobe_interval``, so
a firmware update or a replaced device is noticed without a restart.

Writes encode the value with the tag's type, byte order, scale and offset (inverted), use
function 5 for a coil, 6 for one register and 16 for more (15 and 16 always with the
``write_function: 16`` quirk), and read the tag back to confirm.
"""

from __future__ import annotations

import asyncio
import functools
import time
from array import array
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from drivers.base import (
    DeviceBase,
    DeviceError,
    Driver,
    Line,
    LineSettings,
    RateGroup,
    Reading,
    WriteError,
    rate_groups,
)
from drivers.base.driver import own_config
from drivers.base.writes import take_ascii, take_bool, take_number
from drivers.modbus.codec import (
    Decoded,
    TagCodec,
    encode,
    make_array_decoder,
    make_decoder,
    resolve_byte_order,
)
from drivers.modbus.config import (
    BIT_TABLES,
    ModbusConnection,
    ModbusDevice,
    ModbusProfile,
    ModbusTag,
)
from drivers.modbus.errors import LinkDown, ModbusError, NoAnswer
from drivers.modbus.link import Client, ModbusLink
from drivers.modbus.planner import Request, TagSlice, plan

#: Registers per write request (function 16 allows 123).
MAX_WRITE_REGISTERS = 123

#: Modbus exception codes as the specification names them, for the quality reason.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

Decoder = Callable[[Sequence[int] | Sequence[bool]], Decoded | list[Decoded]]


def exception_reason(code: int) -> str:
    """``exception 2 (illegal data address)``: stable to alert on, readable in a dashboard."""
    return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"


def tag_codec(tag: ModbusTag, device_byte_order: str) -> TagCodec:
    """One tag's decoding facts; the device's byte order applies where the tag has none."""
    if tag.table in BIT_TABLES:
        return TagCodec(type="bool", count=1, from_bits=True)
    width = tag.element_width
    order = "ABCD"
    if tag.type not in ("bool", "string"):
        if tag.byte_order is not None:
            order = resolve_byte_order(tag.byte_order, width, device_default=False)
        else:
            order = resolve_byte_order(device_byte_order, width)
    return TagCodec(
        type=tag.type,
        count=width,
        byte_order=order,
        bit=tag.bit,
        scale=tag.scale,
        offset=tag.offset,
    )


#: A device's tags as decoding sees them: (name, codec, array count) each, hashable.
_DecodeKey = tuple[tuple[str, TagCodec, int | None], ...]


@functools.lru_cache(maxsize=256)
def _shared_decoders(key: _DecodeKey) -> Mapping[str, Decoder]:
    """Tag name to decoder, one table for every device whose tags decode alike (the devices of
    one profile); read-only, so sharing it is safe."""
    return {name: _shared_decoder(codec, count) for name, codec, count in key}


@functools.lru_cache(maxsize=4096)
def _shared_decoder(codec: TagCodec, count: int | None) -> Decoder:
    """One decoder per distinct codec, shared by every tag and device that decodes alike.

    Decoders are pure functions of the (frozen, hashable) codec, and 200 meters of one profile
    would otherwise hold 10,000 copies of the same few (with their struct and Decimal objects:
    megabytes on a small gateway). Bounded, so a config of many odd tags cannot grow it without
    limit; a miss only costs building the decoder again."""
    if count is not None:
        return make_array_decoder(codec, count)
    return make_decoder(codec)


class _PlanTag(NamedTuple):
    """What the planner reads of a tag: the key under which devices share one plan."""

    name: str
    table: str
    address: int
    width: int
    element_width: int


@functools.lru_cache(maxsize=256)
def _shared_plan(
    groups: tuple[tuple[_PlanTag, ...], ...],
    max_gap: int,
    max_registers: int,
    max_bits: int,
    coalesce: bool,
    address_offset: int,
) -> tuple[Request, ...]:
    """One plan (immutable requests and slices) for every device whose tags and limits plan
    alike: 200 meters of one profile need it once, not 200 times. A device that learns
    exception 2 replaces requests in its own copy of the list, never in the shared tuple.

    Each rate group (``drivers.base.rates``) is planned on its own, one after the other, so no
    request mixes tags of two rates: a group's poll sends only its own requests."""
    return tuple(
        request
        for tags in groups
        for request in plan(
            tags,
            max_gap=max_gap,
            max_registers=max_registers,
            max_bits=max_bits,
            coalesce=coalesce,
            address_offset=address_offset,
        )
    )


def _sub_request(req: Request, slices: Sequence[TagSlice]) -> Request:
    """The part of ``req`` that covers only ``slices`` (for splitting on exception 2)."""
    first = min(s.start for s in slices)
    last = max(s.start + s.count for s in slices)
    moved = tuple(TagSlice(s.tag, s.start - first, s.count, s.part) for s in slices)
    return Request(table=req.table, address=req.address + first, count=last - first, slices=moved)


def _without(reads: list[Request], name: str) -> list[Request]:
    """``reads`` with tag ``name`` taken out (requests that read nothing else dropped)."""
    return [
        r if name not in r.tags else _sub_request(r, [s for s in r.slices if s.tag != name])
        for r in reads
        if set(r.tags) != {name}
    ]


#: How one slice of an answer becomes a value: (tag, start, end, part, decoder). ``part`` is -1
#: when the request carries the tag whole (the common case: decoded straight from the answer),
#: else the index of this piece of an array split over several requests.
_Read = tuple[str, int, int, int, Decoder]


def _reads_of(
    req: Request, decoders: Mapping[str, Decoder], split: frozenset[str]
) -> tuple[_Read, ...]:
    return tuple(
        (s.tag, s.start, s.start + s.count, s.part if s.tag in split else -1, decoders[s.tag])
        for s in req.slices
    )


def _split_tags(requests: Sequence[Request]) -> frozenset[str]:
    """Tags whose registers span several requests (long arrays)."""
    return frozenset(s.tag for r in requests for s in r.slices if s.part)


@functools.lru_cache(maxsize=256)
def _shared_reads(
    requests: tuple[Request, ...], key: _DecodeKey
) -> Mapping[int, tuple[_Read, ...]]:
    """For each request of a shared plan (by identity: the plan's tuple keeps them alive), how
    its answer decodes. Worked out once per profile, not per poll nor per device, because the
    poll loop runs it for every request of every device."""
    decoders = _shared_decoders(key)
    split = _split_tags(requests)
    return {id(r): _reads_of(r, decoders, split) for r in requests}


@dataclass(slots=True)
class _Parked:
    """A tag whose address the device refuses (exception 2), out of the plan until a probe
    reads it again."""

    reason: str
    requests: list[Request]
    step: int  # cycles skipped before the next probe, doubled per failed probe
    due: int  # the cycle of the next probe


@dataclass(slots=True)
class _Unfinished:
    """A rate group's turn stopped for a faster group: the requests still to send, the parked
    tags it probes, the pieces of long arrays read so far, and the tags answered or failed in
    the parts already returned (for the probes' verdict)."""

    pending: list[Request]
    probing: list[str]
    parts: dict[str, list[tuple[int, Sequence[int] | Sequence[bool]]]]
    seen: set[str]
    failed: set[str]


class ModbusDriver(Driver):
    """One Modbus device (or one unit id behind a gateway or on an RS-485 line)."""

    name = "modbus"
    device_model = ModbusDevice
    profile_model = ModbusProfile

    def __init__(self, device: DeviceBase) -> None:
        super().__init__(device)
        device = own_config(device, ModbusDevice)
        self.config: ModbusDevice = device
        by_name = {t.name: t for t in device.tags}
        self.groups = rate_groups(device)
        self.requests = _shared_plan(
            tuple(
                tuple(
                    _PlanTag(t.name, t.table, t.address, t.width, t.element_width)
                    for t in (by_name[name] for name in group.tags)
                )
                for group in self.groups
            ),
            device.max_gap,
            device.max_registers,
            device.max_bits,
            not device.no_coalescing,
            device.address_offset,
        )
        decode_key = tuple((t.name, tag_codec(t, device.byte_order), t.count) for t in device.tags)
        self._decoders = _shared_decoders(decode_key)
        self._split = _split_tags(self.requests)
        self._plan_reads = _shared_reads(self.requests, decode_key)
        # Requests made since (exception-2 halves, probes), each kept with its request so the
        # id cannot be reused while the entry exists.
        self._more_reads: dict[int, tuple[Request, tuple[_Read, ...]]] = {}
        self._plan: list[Request] = list(self.requests)
        self._parked: dict[str, _Parked] = {}  # tags learned to answer exception 2
        # Rate groups stopped for a faster one (poll_group_until): what is left of their turn.
        self._unfinished: dict[frozenset[str], _Unfinished] = {}
        self._learned_at: float | None = None
        self._cycle = 0
        # Seconds after which a plan split by exception 2 is dropped and the full plan probed.
        self._reprobe = device.reprobe_interval
        self._max_step = max(1, int(self._reprobe / device.poll_interval))
        self._link: ModbusLink | None = None
        self._shared = device.connection.shared
        # The last answer to each request (registers as 16-bit array items: every device keeps
        # them, and at 10,000 tags lists of int objects cost megabytes); tags are cut from them
        # only when someone asks (``edge-agent read``), not on every poll.
        self._answers: dict[int, tuple[Request, Sequence[int] | Sequence[bool]]] = {}
        self.splits = 0  # requests split on exception 2 since start (tests, metrics)
        self._errors: Counter[str] = Counter()

    def _find_tag(self, name: str) -> ModbusTag | None:
        """The tag called ``name``: a scan, not a table per device, as only writes and learning
        (both rare) look tags up by name."""
        return next((t for t in self.config.tags if t.name == name), None)

    def _tag(self, name: str) -> ModbusTag:
        tag = self._find_tag(name)
        if tag is None:
            raise KeyError(name)
        return tag

    def describe_plan(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "requests": len(self.requests),
            "registers": sum(r.count for r in self.requests if not r.is_bits),
            "bits": sum(r.count for r in self.requests if r.is_bits),
        }
        if len(self.groups) > 1:
            facts["rate_groups"] = {
                g.label: sum(1 for r in self.requests if r.slices[0].tag in set(g.tags))
                for g in self.groups
            }
        return facts

    def error_counts(self) -> Mapping[str, int]:
        """Timeouts, exception answers by code, answers that could not be used."""
        return dict(self._errors)

    def raw_values(self) -> Mapping[str, Any]:
        pieces: dict[str, list[tuple[int, list[Any]]]] = {}
        for req, words in list(self._answers.values()):
            for name, start, end, part, _ in self._reads_for(req):
                if end <= len(words):
                    pieces.setdefault(name, []).append((part, list(words[start:end])))
        return {
            name: [w for _, chunk in sorted(got, key=lambda p: p[0]) for w in chunk]
            for name, got in pieces.items()
        }

    def _reads_for(self, req: Request) -> tuple[_Read, ...]:
        """How ``req``'s answer decodes (property tests decode arbitrary answers through it)."""
        reads = self._plan_reads.get(id(req))
        if reads is not None:
            return reads
        known = self._more_reads.get(id(req))
        if known is None:
            known = (req, _reads_of(req, self._decoders, self._split))
            self._more_reads[id(req)] = known
        return known[1]

    @classmethod
    def scan(cls, argv: Sequence[str]) -> int:
        """``edge-agent scan modbus --port P --baudrate N``: the units on an RTU line
        (``drivers.modbus.scan``)."""
        from drivers.modbus import scan

        return scan.main(argv)

    # -- lines ------------------------------------------------------------------------------------

    @classmethod
    def line_settings(cls, entry: Mapping[str, Any]) -> LineSettings | None:
        conn = entry.get("connection")
        if not isinstance(conn, Mapping):
            return None
        transport = conn.get("transport", "tcp")
        if transport == "rtu":
            port = conn.get("port")
            if not isinstance(port, str):
                return None
            defaults = ModbusConnection.model_fields
            agree: dict[str, object] = {"driver": "modbus", "connection.transport": "rtu"}
            for key in ("baudrate", "parity", "stopbits", "bytesize"):
                agree[f"connection.{key}"] = conn.get(key, defaults[key].default)
            return LineSettings(key=port, agree=agree)
        if transport in ("rtu-over-tcp", "tcp-gateway"):
            host, port = conn.get("host"), conn.get("port", 502)
            if not isinstance(host, str):
                return None
            return LineSettings(
                key=f"{host}:{port}",
                agree={"driver": "modbus", "connection.transport": transport},
            )
        return None

    def line_key(self) -> str | None:
        return self.config.connection.endpoint if self._shared else None

    def make_line(self) -> Line:
        return ModbusLink(self.config.connection)

    def use_line(self, line: Line) -> None:
        if not isinstance(line, ModbusLink):
            raise TypeError(f"a Modbus device cannot share {line.key} with another protocol")
        self._link = line

    @property
    def link(self) -> ModbusLink | None:
        """The medium this device talks through (tests and the benchmark count its frames)."""
        return self._link

    # -- connection -------------------------------------------------------------------------------

    async def connect(self) -> None:
        await self._open()
        self._relearn()

    async def _open(self) -> None:
        if self._shared:
            if self._link is None:
                raise DeviceError("no line", "use_line() was not called")
            await self._link.open()
        else:
            await self.close()
            link = ModbusLink(self.config.connection)
            await link.open()
            self._link = link

    async def close(self) -> None:
        if not self._shared and self._link is not None:
            link, self._link = self._link, None
            await link.close()

    def _relearn(self) -> None:
        """Back to the full plan: addresses learned invalid are probed again."""
        self._unfinished.clear()
        self._plan = list(self.requests)
        self._parked.clear()
        self._learned_at = None
        self._more_reads.clear()
        self._answers.clear()

    @property
    def _timeout(self) -> float:
        return self.config.connection.timeout

    async def _execute(self, call: Callable[[Client], Any]) -> Any:
        link = self._link
        if link is None:
            raise DeviceError("connection lost", "not connected")
        return await link.execute(
            call, timeout=self._timeout, pause=self.config.pause_between_requests
        )

    # -- polling ----------------------------------------------------------------------------------

    async def poll(self) -> list[Reading]:
        return (await self._poll_tags(None, None))[0]

    async def poll_group(self, group: RateGroup) -> list[Reading]:
        """Only the group's requests: each rate group was planned on its own in ``__init__``,
        so a request belongs to the group of its first tag."""
        return (await self._poll_tags(frozenset(group.tags), None))[0]

    async def poll_group_until(self, group: RateGroup, until: float) -> tuple[list[Reading], bool]:
        """The group's requests until ``until``; the rest (and what it has learned on the way:
        pieces of long arrays, parked tags being probed) waits for the next call."""
        return await self._poll_tags(frozenset(group.tags), until)

    async def _poll_tags(
        self, only: frozenset[str] | None, until: float | None
    ) -> tuple[list[Reading], bool]:
        if not self.config.close_connection_after_poll:
            return await self._poll(only, until)
        # The quirk: a connection per poll (what was learned about the device stays).
        if not self.connected:
            await self._open()
        try:
            return await self._poll(only, until)
        finally:
            await self.close()

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.connected

    async def _poll(
        self, only: frozenset[str] | None = None, until: float | None = None
    ) -> tuple[list[Reading], bool]:
        """Read the plan's requests (those of the tags in ``only``, when given: one rate
        group) and decode them into readings; with ``until`` (the event loop's clock), stop
        between two requests once it is reached, keep the rest for the next call and say the
        group is not done."""
        if not self.connected:
            raise DeviceError("connection lost", "not connected")
        left = self._unfinished.pop(only, None) if only is not None else None
        if left is None:
            if self._learned_at is not None and time.monotonic() - self._learned_at > self._reprobe:
                self._relearn()
            self._cycle += 1
            probing = [
                name
                for name, p in self._parked.items()
                if p.due <= self._cycle and (only is None or name in only)
            ]
            pending = (
                list(self._plan)
                if only is None
                else [r for r in self._plan if r.slices[0].tag in only]
            )
            for name in probing:
                pending += self._parked[name].requests
            left = _Unfinished(pending, probing, {}, set(), set())
        pending, probing, parts = left.pending, left.probing, left.parts
        clock = asyncio.get_running_loop().time
        unit = self.config.connection.unit_id
        readings: list[Reading] = []
        failed: dict[str, str] = {}
        answered = 0
        while pending:
            if until is not None and answered and clock() >= until and only is not None:
                left.seen.update(r.tag for r in readings)
                left.failed.update(failed)
                self._unfinished[only] = left
                now = time.time()
                readings.extend(Reading.bad(name, now, reason) for name, reason in failed.items())
                return readings, False
            req = pending.pop(0)
            try:
                response = await self._execute(self._reader(req, unit))
            except NoAnswer as exc:
                if not self.connected:
                    raise DeviceError("connection lost", str(exc)) from exc
                self._errors["timeout"] += 1
                if answered == 0:
                    raise DeviceError(
                        "timeout", f"no answer from unit {unit} within {self._timeout}s"
                    ) from exc
                # The device stopped answering mid-cycle: one timeout is enough per cycle.
                for later in (req, *pending):
                    failed.update(dict.fromkeys(later.tags, "timeout"))
                break
            except LinkDown as exc:
                raise DeviceError("connection lost", str(exc)) from exc
            except ModbusError as exc:
                answered += 1
                self._errors["invalid answer"] += 1
                failed.update(dict.fromkeys(req.tags, f"error: {exc}"))
                continue
            answered += 1
            if response.isError():
                code = int(response.exception_code)
                self._errors[f"exception {code}"] += 1
                if code == 2 and self._learn(req, pending):
                    continue  # split: both halves are next in ``pending``
                failed.update(dict.fromkeys(req.tags, exception_reason(code)))
                continue
            words: Sequence[int] | Sequence[bool]
            if req.is_bits:
                words = response.bits
            else:  # 16-bit items (the TCP client's already are; pymodbus's RTU answers are lists)
                words = response.registers
                if words.__class__ is not array:
                    words = array("H", words)
            self._answers[id(req)] = (req, words)
            size = len(words)
            # A tag this request carries whole is decoded here, stamped with this answer's time
            # (nothing later in the cycle can make it bad); pieces of long arrays wait for the
            # rest of their tag.
            now = time.time()
            for name, start, end, part, decoder in self._reads_for(req):
                if end > size:
                    failed[name] = "short response"
                elif part < 0:
                    readings.append(Reading(name, decoder(words[start:end]), now))
                else:
                    parts.setdefault(name, []).append((part, words[start:end]))
        answered_tags = {r.tag for r in readings}.union(parts, left.seen) if self._parked else set()
        for name in probing:
            parked = self._parked[name]
            if name in failed or name in left.failed or name not in answered_tags:
                continue
            # It answers again (a firmware update, or the exception was a fluke): back in.
            del self._parked[name]
            self._plan += parked.requests
        now = time.time()
        for name, parked in self._parked.items():
            wanted = only is None or name in only
            if wanted and name not in answered_tags and name not in left.failed:
                failed.setdefault(name, parked.reason)
        for name, got in parts.items():
            if name in failed or name in left.failed:
                continue
            if len(got) == 1:
                words_of_tag = got[0][1]
            else:
                got.sort(key=lambda p: p[0])
                words_of_tag = [w for _, chunk in got for w in chunk]
            readings.append(Reading(tag=name, value=self._decoders[name](words_of_tag), ts=now))
        readings.extend(Reading.bad(name, now, reason) for name, reason in failed.items())
        return readings, True

    def _learn(self, req: Request, pending: list[Request]) -> bool:
        """Exception 2 on ``req``. Several tags: split it in two, both halves sent next (at the
        front of ``pending``) and kept in the plan. One tag: park it, probing it again after
        skipping 1, 2, 4... cycles (at most every ``reprobe_interval``), so a truly missing
        address costs ever fewer requests and a fluke costs one skipped cycle. True when
        split."""
        self._learned_at = self._learned_at or time.monotonic()
        if len(set(req.tags)) > 1:
            ordered = sorted(req.slices, key=lambda s: (s.start, s.count))
            half = len(ordered) // 2
            halves = [_sub_request(req, ordered[:half]), _sub_request(req, ordered[half:])]
            self._replace(req, halves)
            pending[:0] = halves
            self.splits += 1
            return True
        name = req.tags[0]
        parked = self._parked.get(name)
        if parked is not None:  # a probe that failed again: wait twice as long
            parked.step = min(parked.step * 2, self._max_step)
            parked.due = self._cycle + parked.step + 1
            return False
        tag = self._tag(name)
        self._parked[name] = _Parked(
            reason=exception_reason(2),
            requests=list(
                plan(
                    [tag],
                    max_registers=self.config.max_registers,
                    max_bits=self.config.max_bits,
                    address_offset=self.config.address_offset,
                )
            ),
            step=1,
            due=self._cycle + 2,
        )
        # Every part of an array goes: the tag is bad whole until a probe reads all of it.
        self._plan = _without(self._plan, name)
        pending[:] = _without(pending, name)
        return False

    def _replace(self, req: Request, halves: list[Request]) -> None:
        for i, r in enumerate(self._plan):
            if r is req:
                self._plan[i : i + 1] = halves
                self._answers.pop(id(req), None)
                return

    def _read_function(self, table: str) -> int:
        if table in BIT_TABLES:
            return 1 if table == "coil" else 2
        return self.config.read_function or (3 if table == "holding" else 4)

    def _reader(self, req: Request, unit: int) -> Callable[[Client], Any]:
        return lambda client: self._read(client, req, unit)

    async def _read(self, client: Client, req: Request, unit: int) -> Any:
        function = self._read_function(req.table)
        if function == 3:
            return await client.read_holding_registers(req.address, count=req.count, device_id=unit)
        if function == 4:
            return await client.read_input_registers(req.address, count=req.count, device_id=unit)
        if function == 1:
            return await client.read_coils(req.address, count=req.count, device_id=unit)
        return await client.read_discrete_inputs(req.address, count=req.count, device_id=unit)

    # -- writes -----------------------------------------------------------------------------------

    def check_write(self, tag: str, value: Any) -> None:
        self._encode(tag, value)

    def _encode(self, tag: str, value: Any) -> list[int]:
        """The registers (or bits) the value becomes; ``WriteError`` when it cannot be written.

        A bool in a register comes back as the one register with only that bit set; the write
        itself reads the register first and changes only that bit."""
        t = self._find_tag(tag)
        if t is None or not t.writable:
            raise WriteError(f"tag '{tag}' is not writable")
        codec = tag_codec(t, self.config.byte_order)
        if t.count is not None:
            if not isinstance(value, list) or len(value) != t.count:
                raise WriteError(f"tag '{tag}' takes a list of {t.count} numbers")
            regs: list[int] = []
            for i, element in enumerate(value):
                regs += self._encode_one(t, codec, element, f"'{tag}'[{i}]")
            return regs
        return self._encode_one(t, codec, value, f"'{tag}'")

    @staticmethod
    def _encode_one(t: ModbusTag, codec: TagCodec, value: Any, what: str) -> list[int]:
        subject = f"tag {what}"
        if t.type == "bool":
            return encode(codec, take_bool(value, subject))
        if t.type == "string":
            return encode(codec, take_ascii(value, subject, codec.count * 2))
        value = take_number(value, subject, t.min, t.max)
        try:
            return encode(codec, value)
        except (ValueError, OverflowError) as exc:
            raise WriteError(f"tag {what}: {exc}") from None
        except Exception:  # struct.error: out of the type's range
            raise WriteError(f"{value} does not fit tag {what} ({t.type})") from None

    async def write(self, tag: str, value: Any) -> None:
        if not self.config.close_connection_after_poll:
            return await self._write(tag, value)
        if not self.connected:
            await self._open()
        try:
            return await self._write(tag, value)
        finally:
            await self.close()

    async def _write(self, tag: str, value: Any) -> None:
        regs = self._encode(tag, value)
        t = self._tag(tag)
        unit = self.config.connection.unit_id
        address = t.address + self.config.address_offset
        multiple = self.config.write_function == 16
        try:
            if t.table == "coil":
                bit = bool(regs[0])
                if multiple:
                    await self._answered(lambda c: c.write_coils(address, [bit], device_id=unit))
                else:
                    await self._answered(lambda c: c.write_coil(address, bit, device_id=unit))
                back = await self._answered(
                    lambda c: c.read_coils(address, count=1, device_id=unit)
                )
                if bool(back.bits[0]) != bit:
                    raise WriteError(f"not confirmed: read back {bool(back.bits[0])}")
                return
            if t.type == "bool":
                mask = 1 << (t.bit or 0)
                current = (await self._read_back(address, 1, unit))[0]
                regs = [(current & ~mask) | (mask if value else 0)]
            for first in range(0, len(regs), MAX_WRITE_REGISTERS):
                chunk = regs[first : first + MAX_WRITE_REGISTERS]
                at = address + first
                if len(chunk) == 1 and not multiple:
                    await self._answered(_call("write_register", at, chunk[0], device_id=unit))
                else:
                    await self._answered(_call("write_registers", at, chunk, device_id=unit))
            back_regs = await self._read_back(address, len(regs), unit)
        except NoAnswer as exc:
            if not self.connected:
                raise DeviceError("connection lost", str(exc)) from exc
            raise DeviceError("timeout", f"no answer from unit {unit}") from exc
        except LinkDown as exc:
            raise DeviceError("connection lost", str(exc)) from exc
        except ModbusError as exc:
            raise WriteError(f"error: {exc}") from exc
        if back_regs != regs:
            shown = self._decoders[tag](back_regs)
            raise WriteError(f"not confirmed: read back {shown!r}")

    async def _answered(self, call: Callable[[Client], Any]) -> Any:
        """Run a request; an exception answer becomes ``WriteError`` with its name."""
        response = await self._execute(call)
        if response.isError():
            raise WriteError(f"device answered {exception_reason(int(response.exception_code))}")
        return response

    async def _read_back(self, address: int, count: int, unit: int) -> list[int]:
        regs: list[int] = []
        function = self.config.read_function or 3
        for first in range(0, count, self.config.max_registers):
            n = min(self.config.max_registers, count - first)
            at = address + first
            if function == 3:
                response = await self._answered(
                    _call("read_holding_registers", at, count=n, device_id=unit)
                )
            else:
                response = await self._answered(
                    _call("read_input_registers", at, count=n, device_id=unit)
                )
            regs += [int(r) for r in response.registers[:n]]
        return regs


def _call(method: str, *args: Any, **kwargs: Any) -> Callable[[Client], Any]:
    """A request for ``ModbusLink.execute``: ``method`` of the client with these arguments."""
    return lambda client: getattr(client, method)(*args, **kwargs)
