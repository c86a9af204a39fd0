"""One PLC connection: python-snap7's blocking client, driven from a thread of its own.

snap7's calls block (a socket read per answer), so every call of one PLC runs in that PLC's own
worker thread and the event loop only awaits it: a slow or dead PLC holds its own thread, never
the loop nor another PLC's polls. The socket timeout only bounds each ``recv``, so a PLC that
dribbles an answer a byte at a time (or a CP that accepts TCP and then says nothing) would hold
the thread for ever; each call therefore has a deadline, and at the deadline the socket is shut
down from the loop, which ends the blocked ``recv`` at once. The thread pool is then replaced,
so a thread still unwinding never delays the next connection attempt.

Reads use snap7's request builder and its ISO-on-TCP connection, but not ``read_multi_vars``:
that call plans on its own and fails the whole request when one item fails, where a missing DB
must cost only its own tags. The answer is parsed by snap7 (header, error class, lengths) and
its items here, each with its return code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from snap7.client import Client
from snap7.datatypes import S7Area, S7WordLen
from snap7.error import S7ConnectionError, S7Error, S7ProtocolError, S7TimeoutError
from snap7.s7protocol import S7_RETURN_CODES
from snap7.type import Parameter

from drivers.base import DeviceError
from drivers.s7.config import S7Connection

#: The PDU size we ask for: the largest any S7 CPU grants (S7-1500); the PLC answers with its
#: own maximum, and planning follows what it answers.
PDU_REQUEST: Final = 960
#: Answers to wait for when a stale one (an earlier request's, after a timeout) comes first.
STALE_ANSWERS: Final = 3

T = TypeVar("T")


def item_reason(code: int) -> str:
    """``item error 0x0a (object does not exist)``: the PLC's return code for one item."""
    text = S7_RETURN_CODES.get(code, "unknown").lower()
    return f"item error {code:#04x} ({text})"


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item of an answer: its data, or the PLC's reason for refusing it."""

    data: bytes | None
    reason: str | None = None


class InvalidAnswer(Exception):
    """An answer that parses as S7 but does not answer what was asked (wrong item count, a
    length that is not the one requested): its tags are bad, the connection stays."""


class S7Link:
    """The connection to one PLC and the thread its calls run in."""

    def __init__(self, connection: S7Connection, *, name: str) -> None:
        self.connection = connection
        self.name = name
        self.client: Client | None = None
        self.pdu = 0
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.exchanges = 0  # requests sent since made (tests and the benchmark count them)

    @property
    def connected(self) -> bool:
        return self.client is not None and bool(self.client.get_connected())

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"s7-{self.name}"
            )
        return self._pool

    async def _run(self, call: Callable[[], T], what: str) -> T:
        """``call`` in the PLC's thread, within the timeout; at the deadline the socket is shut
        (ending the blocked read) and ``DeviceError("timeout")`` raised."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor(), call)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.connection.timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            # The call ends (with an error) once the socket is shut; nobody awaits it any more.
            future.add_done_callback(_swallow)
            self._abort()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise DeviceError("timeout", f"no {what} within {self.connection.timeout}s") from None

    def _abort(self) -> None:
        """Shut the socket under a blocked call and give the next call a fresh thread."""
        client = self.client
        conn = client.connection if client is not None else None
        sock = conn.socket if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if conn is not None:
            conn.connected = False
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # -- connection ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (ISO-on-TCP, then the S7 setup that negotiates the PDU); ``DeviceError``
        with a stable reason when the PLC cannot be reached or refuses."""
        await self.close()
        conn = self.connection
        client = Client()
        client.set_param(Parameter.PDURequest, PDU_REQUEST)
        if conn.local_tsap is not None:
            client.local_tsap = conn.local_tsap
        remote = conn.remote
        # snap7 builds the remote TSAP as (type << 8) | (rack << 5) | slot: any TSAP splits so.
        client.set_connection_type(remote >> 8)
        self.client = client

        def connect() -> int:
            client.connect(conn.host, (remote & 0xFF) >> 5, remote & 0x1F, conn.port)
            if client.connection is not None and client.connection.socket is not None:
                client.connection.socket.settimeout(conn.timeout)
            return int(client.get_pdu_length())

        try:
            self.pdu = await self._run(connect, "connection")
        except DeviceError:
            self.client = None
            raise
        except S7Error as exc:
            self.client = None
            raise DeviceError(*_connect_reason(exc, conn)) from None
        except OSError as exc:
            self.client = None
            raise DeviceError("connection failed", str(exc)) from None
        if self.pdu < 64:
            await self.close()
            raise DeviceError("invalid answer", f"the PLC negotiated a PDU of {self.pdu} bytes")

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            pool = self._pool
            if pool is not None:
                with contextlib.suppress(Exception):
                    await asyncio.get_running_loop().run_in_executor(pool, client.disconnect)
            else:
                with contextlib.suppress(Exception):
                    client.disconnect()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # -- exchanges -----------------------------------------------------------------------------

    def _client(self) -> Client:
        client = self.client
        if client is None or client.connection is None:
            raise DeviceError("connection lost", "not connected")
        return client

    async def read(self, specs: Sequence[tuple[int, int, int, int]]) -> list[ItemResult]:
        """One multi-variable read of ``(area code, db, start byte, size)`` items."""
        client = self._client()
        return await self._exchange(lambda: _read_sync(client, specs), "answer")

    async def write(self, area: int, db: int, start: int, data: bytes, *, bit: bool) -> None:
        """One write: ``data`` at byte ``start`` (with ``bit``: bit ``start`` as byte*8+bit).
        ``InvalidAnswer`` when the PLC refuses it (its reason in the message)."""
        client = self._client()
        await self._exchange(lambda: _write_sync(client, area, db, start, data, bit), "answer")

    async def _exchange(self, call: Callable[[], T], what: str) -> T:
        self.exchanges += 1
        try:
            return await self._run(call, what)
        except DeviceError:
            raise
        except S7TimeoutError as exc:
            raise DeviceError("timeout", str(exc)) from None
        except (S7ConnectionError, OSError) as exc:
            raise DeviceError("connection lost", str(exc)) from None
        except S7Error as exc:
            # A frame snap7 could not parse: the stream may be out of step; start afresh.
            raise DeviceError("invalid answer", str(exc)) from None


def _swallow(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a call given up on, so asyncio does not log it as lost."""
    if not future.cancelled():
        future.exception()


def _connect_reason(exc: S7Error, conn: S7Connection) -> tuple[str, str]:
    """What a failed connect means for the person at the PLC."""
    text = str(exc)
    if "refused" in text.lower() and "tcp" in text.lower():
        return "connection refused", text
    if isinstance(exc, S7TimeoutError):
        return "timeout", text
    if "COTP" in text or "closed by peer" in text or "Receive" in text:
        who = (
            f"TSAP {conn.remote >> 8:02X}.{conn.remote & 0xFF:02X}"
            if conn.remote_tsap is not None
            else f"connection type {conn.connection_type}, rack {conn.rack}, slot {conn.slot}"
        )
        return (
            "connection refused by PLC",
            f"{text}: the PLC refused the connection ({who}); check rack/slot, free "
            "connection resources and PUT/GET access",
        )
    return "connection failed", text


def _answer(client: Client, request: bytes) -> dict[str, Any]:
    """Send ``request`` and return snap7's parse of its answer, skipping stale answers (those
    to an earlier request, which a PLC still sends after we gave up waiting)."""
    conn = client.connection
    if conn is None:
        raise S7ConnectionError("not connected")
    protocol = client.protocol
    conn.send_data(request)
    for _ in range(STALE_ANSWERS + 1):
        frame = conn.receive_data()  # exactly one TPKT frame: the stream stays in step
        try:
            response = protocol.parse_response(frame)
        except S7ProtocolError as exc:
            if exc.error_code == 0x8104:
                raise InvalidAnswer(
                    "PLC error 0x8104 (service not available: on an S7-1200/1500, allow PUT/GET "
                    "access and use a non-optimised data block)"
                ) from None
            if exc.error_code:
                raise InvalidAnswer(f"PLC error {exc.error_code:#06x}") from None
            raise InvalidAnswer(str(exc)) from None
        if response["sequence"] == protocol.sequence:
            return response
    raise InvalidAnswer(f"{STALE_ANSWERS + 1} answers to other requests")


def _read_sync(client: Client, specs: Sequence[tuple[int, int, int, int]]) -> list[ItemResult]:
    request = client.protocol.build_multi_read_request(list(specs))
    response = _answer(client, request)
    params = response.get("parameters") or {}
    if params.get("function_code") != 0x04 or params.get("item_count") != len(specs):
        raise InvalidAnswer(
            f"answer for {params.get('item_count')} items of function "
            f"{params.get('function_code')}, asked 0x04 for {len(specs)}"
        )
    return parse_items(response.get("raw_data") or b"", [s[3] for s in specs])


def parse_items(raw: bytes, sizes: Sequence[int]) -> list[ItemResult]:
    """The data section of a read answer, item by item: return code 0xFF with exactly the
    bytes asked for is data; another code is that item's reason. ``InvalidAnswer`` when the
    section does not hold the items it should (truncated, a length that was not asked)."""
    results: list[ItemResult] = []
    at = 0
    last = len(sizes) - 1
    for n, size in enumerate(sizes):
        if at + 4 > len(raw):
            raise InvalidAnswer(f"answer truncated at item {n + 1} of {len(sizes)}")
        code, transport, length = struct.unpack_from(">BBH", raw, at)
        at += 4
        if code != 0xFF:
            results.append(ItemResult(None, item_reason(code)))
            continue
        nbytes = length // 8 if transport in (0x03, 0x04, 0x05) else length
        if transport == 0x03:  # BIT: the length counts bits, one per byte
            nbytes = length
        if nbytes != size:
            raise InvalidAnswer(f"item {n + 1} carries {nbytes} bytes, asked {size}")
        if at + nbytes > len(raw):
            raise InvalidAnswer(f"answer truncated in item {n + 1} of {len(sizes)}")
        results.append(ItemResult(bytes(raw[at : at + nbytes])))
        at += nbytes + (nbytes & 1 if n < last else 0)
    if at != len(raw):
        raise InvalidAnswer(f"{len(raw) - at} bytes after the last item")
    return results


def _write_sync(client: Client, area: int, db: int, start: int, data: bytes, bit: bool) -> None:
    word_len = S7WordLen.BIT if bit else S7WordLen.BYTE
    request = client.protocol.build_write_request(S7Area(area), db, start, word_len, data)
    response = _answer(client, request)
    raw = response.get("raw_data") or b""
    params = response.get("parameters") or {}
    if params.get("function_code") != 0x05 or len(raw) != 1:
        raise InvalidAnswer("the answer does not acknowledge the write")
    if raw[0] != 0xFF:
        raise InvalidAnswer(item_reason(raw[0]))
