"""The DL/T 645 driver: energy meters of either edition on an RS-485 line.

Meters on one port share it as Modbus RTU units do: every meter's ``line_key`` is the port, so the
agent polls them from one task, one request at a time, fairly, and a meter that stops answering is
backed off while the others keep their cadence (``agent.south.lines``). The line itself is the
serial driver's :class:`SerialLine` (one open port, bytes delivered to the meter whose turn it
is), so a DL/T 645 meter can even share a port with ASCII instruments in poll mode.

One poll reads each distinct identifier once (ten tags on ``voltage_a`` cost one request), in
tag order. An answer is taken only from the meter asked (its address in the frame, any address
for ``AAAAAAAAAAAA``), with the answer bit set, so an adapter that echoes the request, or a late
answer of a neighbour, is not mistaken for it. An answer flagged "follow-up frames" is completed
with the edition's read-follow-up requests. A meter's error answer, a garbled answer or bytes
that are not the format become that tag's bad-quality reason; only a poll in which the meter
answered nothing at all is the meter lost (``DeviceError("timeout")``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drivers.base import (
    DeviceBase,
    DeviceError,
    Driver,
    Line,
    LineSettings,
    RateGroup,
    Reading,
)
from drivers.base.driver import own_config
from drivers.dlt645.bcd import BadValue, Format
from drivers.dlt645.catalogue import Protocol, di_bytes
from drivers.dlt645.config import (
    Dlt645Connection,
    Dlt645Device,
    Dlt645Profile,
    line_settings_of,
)
from drivers.dlt645.frame import ANY_ADDRESS, Frame, FrameReader, Trouble, address_bytes, encode
from drivers.serial.config import SerialConnection
from drivers.serial.port import SerialLine, SerialPort, fail_answer, live_port

log = logging.getLogger(__name__)

#: Function codes of a master's requests, per edition: read data, read follow-up data.
READ: Mapping[Protocol, int] = {"2007": 0x11, "1997": 0x01}
READ_MORE: Mapping[Protocol, int] = {"2007": 0x12, "1997": 0x02}
#: Bytes of an identifier in each edition.
DI_BYTES: Mapping[Protocol, int] = {"2007": 4, "1997": 2}
#: Follow-up frames taken for one item at most: a meter that keeps saying "more" is broken.
MAX_FOLLOW_UPS = 16
#: Line settings every meter on one port must share: the port is configured once.
LINE_SETTINGS = ("baudrate", "parity", "stopbits")

#: The meaning of each bit of an error answer's byte (ERR, -2007 and SERR, -1997).
ERROR_BITS: Mapping[Protocol, tuple[str, ...]] = {
    "2007": (
        "other error",
        "no such data",
        "unauthorised",
        "baud rate unchangeable",
        "too many year zones",
        "too many day periods",
        "too many tariffs",
        "reserved",
    ),
    "1997": (
        "illegal data",
        "wrong identifier",
        "password error",
        "reserved",
        "too many year zones",
        "too many day periods",
        "too many tariffs",
        "reserved",
    ),
}


def error_reason(protocol: Protocol, data: bytes) -> str:
    """A meter's error answer as a quality reason: ``error 02 (no such data)``."""
    if not data:
        return "error (no code)"
    code = data[0]
    names = [n for bit, n in enumerate(ERROR_BITS[protocol]) if code & (1 << bit)]
    return f"error {code:02X} ({', '.join(names) or 'no bit set'})"


@dataclass(frozen=True, slots=True)
class Item:
    """One identifier read per poll, and how its value is written."""

    di: str
    format: Format


class Dlt645Driver(Driver):
    """One meter: its turn on the line of its port."""

    name = "dlt645"
    device_model = Dlt645Device
    profile_model = Dlt645Profile

    def __init__(self, device: DeviceBase) -> None:
        super().__init__(device)
        device = own_config(device, Dlt645Device)
        self.config: Dlt645Device = device
        self._address = address_bytes(device.address)
        self._items: dict[str, Item] = {}
        # Per tag: the identifier it reads, or why it cannot be read (a profile's tag merged in
        # after validation may name what this edition lacks).
        self._tags: list[tuple[str, str | None, str | None]] = []
        for tag in device.tags:
            try:
                di, fmt, _ = tag.resolve(device.protocol)
            except ValueError:
                self._tags.append((tag.name, None, f"not a -{device.protocol} identifier"))
                continue
            self._items.setdefault(di, Item(di, fmt))
            self._tags.append((tag.name, di, None))
        lacking = [name for name, di, _ in self._tags if di is None]
        if lacking:
            log.warning(
                "dlt645 tags %s (from a profile) name what DL/T 645-%s meters lack: always bad",
                ", ".join(lacking),
                device.protocol,
                extra={"device": device.name},
            )
        self.errors: collections.Counter[str] = collections.Counter()
        self._logged: set[str] = set()
        self._reader = FrameReader()
        self._line: SerialLine | None = None
        self._answer: asyncio.Future[Frame | str] | None = None
        # The answer waited for (function code, identifier), and what an answer of the meter
        # that was not it said instead: a late answer to an earlier request is passed over.
        self._expect: tuple[int, bytes] = (0, b"")
        self._mismatch: str | None = None
        self._raw: dict[str, str] = {}
        # Rate groups stopped for a faster one (poll_group_until): their identifiers not read.
        self._unfinished: dict[frozenset[str], frozenset[str]] = {}

    # -- the line ---------------------------------------------------------------------------------

    @staticmethod
    def _serial(conn: Dlt645Connection) -> SerialConnection:
        """The port settings as the serial driver's line opens a port."""
        return SerialConnection(
            port=conn.port,
            baudrate=conn.baudrate,
            parity=conn.parity,
            bytesize=8,
            stopbits=conn.stopbits,
            timeout=conn.timeout,
        )

    @classmethod
    def line_settings(cls, entry: Mapping[str, Any]) -> LineSettings | None:
        conn = line_settings_of(entry.get("connection"))
        if conn is None:
            return None
        agree: dict[str, object] = {f"connection.{k}": getattr(conn, k) for k in LINE_SETTINGS}
        agree["connection.bytesize"] = 8
        # Modbus RTU devices say "driver: modbus" here (pymodbus owns their port): a meter on
        # their port is refused at its driver key instead of failing when the agent starts.
        agree["driver"] = "dlt645"
        return LineSettings(key=conn.port, agree=agree)

    def line_key(self) -> str | None:
        return self.config.connection.port

    def make_line(self) -> Line:
        return SerialLine(self._serial(self.config.connection))

    def use_line(self, line: Line) -> None:
        if not isinstance(line, SerialLine):
            raise TypeError(f"a DL/T 645 meter cannot share {line.key} with another protocol")
        self._line = line

    @classmethod
    def scan(cls, argv: Sequence[str]) -> int:
        """``edge-agent scan dlt645 --port P``: the meters on a line (``drivers.dlt645.scan``)."""
        from drivers.dlt645 import scan

        return scan.main(argv)

    def describe_plan(self) -> dict[str, Any]:
        return {
            "protocol": self.config.protocol,
            "address": self.config.address,
            "requests": len(self._items),
        }

    def error_counts(self) -> Mapping[str, int]:
        return dict(self.errors)  # one C-level copy: safe from the scrape thread

    def raw_values(self) -> Mapping[str, Any]:
        return dict(self._raw)

    # -- connection -------------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._line is None:
            raise DeviceError("no line", "use_line() was not called")
        await self._line.open()

    async def close(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()

    def _port(self) -> SerialPort:
        port = self._line.port if self._line is not None else None
        return live_port(port, self.config.connection.port)

    def _on_lost(self, why: str) -> None:
        fail_answer(self._answer, self.config.connection.port, why)

    def _on_data(self, data: bytes) -> None:
        for event in self._reader.feed(data):
            waiting = self._answer is not None and not self._answer.done()
            if isinstance(event, Trouble):
                self._report(event.kind, event.sample)
                if event.kind == "checksum" and waiting:
                    assert self._answer is not None
                    self._answer.set_result("checksum")
            elif waiting and self._mine(event):
                assert self._answer is not None
                why = self._unexpected(event)
                if why is None:
                    self._answer.set_result(event)
                else:
                    self._mismatch = why
                    self._report(why, bytes([event.control]) + event.data[:16])

    def _mine(self, frame: Frame) -> bool:
        """An answer (not an echoed request) from the meter asked."""
        if not frame.from_meter:
            return False
        return self.config.address == ANY_ADDRESS or frame.address == self._address

    def _unexpected(self, frame: Frame) -> str | None:
        """Why the meter's frame is not the answer waited for (None when it is)."""
        function, di = self._expect
        if frame.function != function:
            return "wrong answer"
        if not frame.error and not frame.data.startswith(di):
            return "wrong identifier"
        return None

    def _report(self, kind: str, sample: bytes) -> None:
        self.errors[kind] += 1
        if kind in self._logged:
            return
        self._logged.add(kind)
        shown = sample.hex(" ")
        log.warning(
            "dlt645 %s: %s (first of its kind; further ones are counted, not logged)",
            kind,
            shown,
            extra={"device": self.config.name, "kind": kind, "sample": shown},
        )

    # -- requests ---------------------------------------------------------------------------------

    async def _exchange(self, port: SerialPort, control: int, data: bytes) -> Frame | str:
        """Send one request (``data`` starts with the identifier); the meter's answer to it, or
        why there is none: ``timeout``, ``checksum``, or what the meter sent instead (``wrong
        identifier``, ``wrong answer``) when nothing else came in time."""
        port.drain_input()
        self._reader.discard()
        self._answer = asyncio.get_running_loop().create_future()
        self._expect, self._mismatch = (control, data[: DI_BYTES[self.config.protocol]]), None
        request = encode(self._address, control, data, preamble=self.config.connection.preamble)
        try:
            await port.write(request)
            return await asyncio.wait_for(self._answer, self.config.connection.timeout)
        except TimeoutError:
            if self._mismatch is not None:
                return self._mismatch
            self._report("timeout", request)
            return "timeout"
        finally:
            self._answer = None

    async def _read(self, port: SerialPort, item: Item) -> bytes | str:
        """The item's data bytes (follow-up frames joined), or the reason it has none."""
        protocol = self.config.protocol
        di = di_bytes(item.di)
        function = READ[protocol]
        request = di
        payload = b""
        for seq in range(MAX_FOLLOW_UPS + 1):
            answer = await self._exchange(port, function, request)
            if isinstance(answer, str):
                return answer
            if answer.error:
                return error_reason(protocol, answer.data)
            data = answer.data[len(di) :]  # the identifier, checked by _unexpected
            if seq > 0 and protocol == "2007":
                data = data[:-1]  # the frame's sequence number (SEQ) closes a follow-up answer
            payload += data
            if not answer.more:
                return payload
            function = READ_MORE[protocol]
            request = di + bytes([seq + 1]) if protocol == "2007" else di
        self._report("endless follow-ups", di)
        return "endless follow-ups"

    async def poll(self) -> list[Reading]:
        return (await self._poll(self._tags))[0]

    async def poll_group(self, group: RateGroup) -> list[Reading]:
        """Only the group's identifiers: on a 2400-baud line each request costs about 200 ms,
        so energy totals read each minute must not be asked for with the voltages each
        second."""
        return (await self._poll(self._group_tags(group)))[0]

    async def poll_group_until(self, group: RateGroup, until: float) -> tuple[list[Reading], bool]:
        """The group's identifiers one request at a time until ``until``: a faster group due
        then (voltages each second) waits for one request at most, not for the dozen slow
        requests of the energy totals; the identifiers not yet read wait for the next call."""
        tags = self._group_tags(group)
        key = frozenset(group.tags)
        left = self._unfinished.pop(key, None)
        if left is not None:
            tags = [t for t in tags if t[1] is None or t[1] in left]
        readings, rest = await self._poll(tags, until)
        if rest:
            self._unfinished[key] = rest
        return readings, not rest

    def _group_tags(self, group: RateGroup) -> list[tuple[str, str | None, str | None]]:
        wanted = frozenset(group.tags)
        return [t for t in self._tags if t[0] in wanted]

    async def _poll(
        self, tags: list[tuple[str, str | None, str | None]], until: float | None = None
    ) -> tuple[list[Reading], frozenset[str]]:
        """Read each distinct identifier of ``tags`` once; the tags' readings in their order,
        and (with ``until``, the event loop's clock) the identifiers left unread when it came
        (their tags have no reading in this call's batch: the next call reads them)."""
        if self._line is not None:
            self._line.listen(self._on_data, self._on_lost)  # our turn: the answers are ours
        port = self._port()
        values: dict[str, Reading | str] = {}
        raw: dict[str, str] = {}
        answered = False
        wanted = [self._items[di] for di in dict.fromkeys(di for _, di, _ in tags if di)]
        loop = asyncio.get_running_loop()
        rest: frozenset[str] = frozenset()
        for i, item in enumerate(wanted):
            if until is not None and i > 0 and loop.time() >= until:
                rest = frozenset(x.di for x in wanted[i:])
                break
            di = item.di
            result = await self._read(port, item)
            if result != "timeout":
                answered = True
            if isinstance(result, str):
                values[di] = result
                continue
            raw[di] = result.hex(" ")
            try:
                if len(result) < item.format.length:
                    raise BadValue(f"{len(result)} bytes, {item.format.length} expected")
                values[di] = Reading(di, float(item.format.decode(result)), time.time())
            except BadValue as exc:
                self._report("bad value", result[:16])
                values[di] = "bad value"
                log.debug("dlt645 %s: %s", di, exc)
        if wanted and not answered:
            raise DeviceError("timeout", f"meter {self.config.address} answered no request")
        if rest:
            tags = [t for t in tags if t[1] not in rest]
        now = time.time()
        for name, of, _ in tags:  # what this poll received; nothing for a tag it did not get
            if of is not None and of in raw:
                self._raw[name] = raw[of]
            else:
                self._raw.pop(name, None)
        readings = []
        for name, of, problem in tags:
            got: Reading | str = values.get(of, "not read") if of is not None else str(problem)
            if isinstance(got, Reading):
                readings.append(Reading(tag=name, value=got.value, ts=got.ts))
            else:
                readings.append(Reading.bad(name, now, got))
        return readings, rest
