"""The MC driver: connect, poll the planned requests, decode, report quality per tag; writes.

Each request's answer either carries its tags' words (decoded into good readings) or an end code
(the PLC or its Ethernet module refused: every tag of that request is bad with the end code and
its meaning; the other requests of the cycle still go). An end code that names an address the
CPU does not have (C056, 4031, C05B, C05C) on a request that joins several tags means one of
them is wrong: the request is split in two, both halves planned again and sent at once,
recursively, until every tag that still fails is alone and bad with the end code, and the split
plan is kept, so one mistyped address costs its own tag only, not the 150 others of its random
read. The full plan is tried again after every reconnect. A timeout, a broken frame or a lost
connection loses the device as a whole (``DeviceError``): the 3E frame cannot tell a late answer
from the next one, so the connection is closed and the agent reconnects with backoff.

Writes use batch write (1401) in word or bit units, then read the tag back to confirm.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drivers.base import DeviceBase, DeviceError, Driver, LineSettings, Reading, WriteError
from drivers.base.driver import own_config
from drivers.base.writes import take_ascii, take_bool, take_number
from drivers.mc.client import McClient
from drivers.mc.codec import Decoder, encode, make_decoder
from drivers.mc.config import McDevice, McProfile, McTag
from drivers.mc.devices import DEVICES, Address
from drivers.mc.frame import Answer, FrameError, batch_read, batch_write_bits, batch_write_words
from drivers.mc.frame import random_read as random_read_frame
from drivers.mc.planner import Request, plan

#: End codes as the MC protocol manuals name them, for the quality reason.
END_CODES = {
    0x0055: "write during RUN not enabled",
    0xC050: "ASCII data not convertible (binary/ASCII mismatch)",
    0xC051: "too many points",
    0xC052: "too many points",
    0xC053: "too many points",
    0xC054: "too many points",
    0xC056: "address out of range",
    0xC058: "request length mismatch",
    0xC059: "command not supported",
    0xC05B: "device cannot be read or written",
    0xC05C: "request contents wrong",
    0xC05F: "request not executable by the CPU",
    0xC060: "request contents wrong",
    0xC061: "request length mismatch",
    0xC06F: "binary/ASCII mismatch",
    0xC0B5: "data the CPU cannot handle",
    0x4031: "address out of range",
}


def end_code_reason(code: int) -> str:
    """``end code 0xC056 (address out of range)``: stable to alert on, readable in a dashboard."""
    return f"end code 0x{code:04X} ({END_CODES.get(code, 'unknown')})"


#: End codes that say an address is not on this CPU: a request joining several tags is split.
ADDRESS_END_CODES = frozenset({0xC056, 0x4031, 0xC05B, 0xC05C})

#: Answer words per request kind: batch words/bits and random reads.
Words = Sequence[int] | Sequence[bool]

#: How one tag of a request's answer becomes its value: (tag, start, end, decoder).
_Read = tuple[str, int, int, Decoder]


@dataclass(frozen=True, slots=True)
class _Planned:
    """A request as the poll sends it: the request, its frame, how its answer decodes."""

    request: Request
    frame: bytes
    reads: tuple[_Read, ...]


class McDriver(Driver):
    """One Mitsubishi PLC over MC protocol 3E (binary or ASCII, TCP or UDP)."""

    name = "mc"
    device_model = McDevice
    profile_model = McProfile

    def __init__(self, device: DeviceBase) -> None:
        super().__init__(device)
        device = own_config(device, McDevice)
        self.config: McDevice = device
        self.requests = self._plan_of(device.tags)
        conn = device.connection
        self._decoders: dict[str, Decoder] = {t.name: make_decoder(t.type) for t in device.tags}
        self._full = [self._planned(r) for r in self.requests]
        self._plan: list[_Planned] = list(self._full)  # split where the CPU refused addresses
        self._client: McClient | None = None
        # The last answer to each planned request (by identity; the entry keeps it alive).
        self._answers: dict[int, tuple[_Planned, Words]] = {}
        self._errors: Counter[str] = Counter()
        self._timer = conn.timer
        self.splits = 0  # requests split on an address end code since start (tests, logs)

    def _planned(self, req: Request) -> _Planned:
        """A request with its frame and how its answer becomes readings: worked out once, run
        every poll."""
        reads = tuple(
            (s.tag, s.start, s.start + s.count, self._decoders[s.tag]) for s in req.slices
        )
        return _Planned(req, self._read_frame(req), reads)

    def _read_frame(self, req: Request) -> bytes:
        enc = self.config.connection.encoding
        timer = self.config.connection.timer
        if req.kind == "random":
            return random_read_frame(enc, req.words, req.dwords, timer=timer)
        kind = DEVICES[req.device]
        return batch_read(enc, kind, req.number, req.count, bits=req.kind == "bits", timer=timer)

    def _find_tag(self, name: str) -> McTag | None:
        return next((t for t in self.config.tags if t.name == name), None)

    def describe_plan(self) -> dict[str, Any]:
        return {
            "requests": len(self.requests),
            "random": sum(1 for r in self.requests if r.kind == "random"),
            "words": sum(r.size for r in self.requests if r.kind != "bits"),
            "bits": sum(r.size for r in self.requests if r.kind == "bits"),
        }

    def error_counts(self) -> Mapping[str, int]:
        """Timeouts, broken answers, end codes by code."""
        return dict(self._errors)

    def raw_values(self) -> Mapping[str, Any]:
        """The words (or bits) each tag was cut from in the last poll's answers."""
        out: dict[str, Any] = {}
        for planned, words in list(self._answers.values()):
            for name, start, end, _ in planned.reads:
                out[name] = list(words[start:end])
        return out

    @classmethod
    def line_settings(cls, entry: Mapping[str, Any]) -> LineSettings | None:
        """For ``validate``: an open-setting line (a TCP port of the PLC) serves one client, so
        two devices naming one host and TCP port would take turns losing their connection;
        each needs its own line. UDP ports take any number of clients."""
        conn = entry.get("connection")
        if not isinstance(conn, Mapping) or conn.get("transport", "tcp") != "tcp":
            return None
        host, port = conn.get("host"), conn.get("port")
        if not isinstance(host, str) or not isinstance(port, int):
            return None
        return LineSettings(key=f"{host}:{port} (MC over TCP)", alone="connection.port")

    @property
    def client(self) -> McClient | None:
        """The connection (tests and the benchmark count its frames)."""
        return self._client

    # -- connection ---------------------------------------------------------------------------

    async def connect(self) -> None:
        await self.close()
        conn = self.config.connection
        client = McClient(
            conn.host,
            conn.port,
            encoding=conn.encoding,
            transport=conn.transport,
            timeout=conn.timeout,
        )
        await client.open()
        self._client = client
        self._answers.clear()
        self._plan = list(self._full)  # a replaced CPU or a changed program: probe everything

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _exchange(self, frame: bytes) -> Answer:
        client = self._client
        if client is None or not client.connected:
            raise DeviceError("connection lost", "not connected")
        try:
            return await client.exchange(frame)
        except DeviceError as exc:
            self._errors[exc.reason] += 1
            raise

    # -- polling ------------------------------------------------------------------------------

    async def poll(self) -> list[Reading]:
        readings: list[Reading] = []
        pending = list(self._plan)
        while pending:
            planned = pending.pop(0)
            req = planned.request
            ans = await self._exchange(planned.frame)
            now = time.time()
            if ans.end_code:
                self._errors[f"end code 0x{ans.end_code:04X}"] += 1
                self._answers.pop(id(planned), None)
                if ans.end_code in ADDRESS_END_CODES and len(set(req.tags)) > 1:
                    pending[:0] = self._split(planned)
                    continue
                reason = end_code_reason(ans.end_code)
                readings.extend(Reading.bad(name, now, reason) for name in req.tags)
                continue
            words = await self._words(req, ans)
            self._answers[id(planned)] = (planned, words)
            readings += [
                Reading(name, decode(words[start:end]), now)
                for name, start, end, decode in planned.reads
            ]
        return readings

    def _split(self, planned: _Planned) -> list[_Planned]:
        """``planned`` refused for an address: its tags in two halves, each planned again
        (batch or random, as fits), in the plan instead of it; the halves, to send next."""
        names = list(dict.fromkeys(planned.request.tags))
        half = len(names) // 2
        halves: list[_Planned] = []
        for part in (names[:half], names[half:]):
            tags = [t for t in self.config.tags if t.name in part]
            halves += [self._planned(r) for r in self._plan_of(tags)]
        i = next(i for i, p in enumerate(self._plan) if p is planned)
        self._plan[i : i + 1] = halves
        self.splits += 1
        return halves

    def _plan_of(self, tags: Sequence[McTag]) -> tuple[Request, ...]:
        c = self.config
        return plan(
            tags,
            max_gap=c.max_gap,
            max_words=c.max_words,
            max_bits=c.max_bits,
            random_reads=c.random_reads,
            max_random_points=c.max_random_points,
        )

    async def _words(self, req: Request, ans: Answer) -> Words:
        """The answer's data as the request's flat list of words (bits for a bit read); a data
        part of the wrong size is a broken answer (``DeviceError``, connection closed)."""
        try:
            words: Words
            if req.kind == "bits":
                words = ans.data.bits(req.count)
            elif req.kind == "words":
                words = ans.data.words(req.count)
            else:
                flat = ans.data.words(len(req.words))
                for d in ans.data.dwords(len(req.dwords)):
                    flat += [d & 0xFFFF, d >> 16]
                words = flat
            ans.data.end()
            return words
        except FrameError as exc:
            self._errors["invalid answer"] += 1
            await self.close()
            raise DeviceError("invalid answer", str(exc)) from None

    # -- writes -------------------------------------------------------------------------------

    def check_write(self, tag: str, value: Any) -> None:
        self._encode(tag, value)

    def _encode(self, tag: str, value: Any) -> list[int]:
        """The words (or the one bit) the value becomes; ``WriteError`` when it cannot be
        written."""
        t = self._find_tag(tag)
        if t is None or not t.writable:
            raise WriteError(f"tag '{tag}' is not writable")
        subject = f"tag '{tag}'"
        if t.type == "bool":
            return [int(take_bool(value, subject))]
        if t.type == "string":
            return encode("string", take_ascii(value, subject, 2 * t.width), t.length)
        value = take_number(value, subject, t.min, t.max)
        try:
            return encode(t.type, value)
        except ValueError as exc:
            raise WriteError(f"{subject}: {exc}") from None
        except Exception:  # struct.error: out of the type's range
            raise WriteError(f"{value} does not fit {subject} ({t.type})") from None

    async def write(self, tag: str, value: Any) -> None:
        words = self._encode(tag, value)
        t = self._find_tag(tag)
        assert t is not None
        where: Address = t.where
        kind = where.kind
        enc, timer = self.config.connection.encoding, self._timer
        if kind.bits:
            bits = [bool(w) for w in words]
            ans = await self._exchange(batch_write_bits(enc, kind, where.number, bits, timer=timer))
        else:
            ans = await self._exchange(
                batch_write_words(enc, kind, where.number, words, timer=timer)
            )
        if ans.end_code:
            self._errors[f"end code 0x{ans.end_code:04X}"] += 1
            raise WriteError(f"PLC answered {end_code_reason(ans.end_code)}")
        back_req = Request(
            "bits" if kind.bits else "words",
            (),
            device=where.device,
            number=where.number,
            count=len(words),
        )
        back = await self._exchange(
            batch_read(enc, kind, where.number, len(words), bits=kind.bits, timer=timer)
        )
        if back.end_code:
            raise WriteError(f"not confirmed: read back {end_code_reason(back.end_code)}")
        got = [int(w) for w in await self._words(back_req, back)]
        if got != words:
            raise WriteError(f"not confirmed: read back {self._decoders[tag](got)!r}")
