"""Our Modbus TCP client (drivers/modbus/mbap.py): every function against the real simulator, and
every way a stream can go wrong against small raw servers whose answers each test writes by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from drivers.base import DeviceError
from drivers.modbus.config import ModbusConnection
from drivers.modbus.errors import LinkDown, ModbusError, NoAnswer
from drivers.modbus.link import ModbusLink
from drivers.modbus.mbap import InvalidAnswer, MbapClient
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import free_port

TIMEOUT = 0.2


@dataclass
class Req:
    tid: int
    unit: int
    pdu: bytes

    @property
    def function(self) -> int:
        return self.pdu[0]

    @property
    def count(self) -> int:
        return int(struct.unpack_from(">H", self.pdu, 3)[0])


def frame(
    tid: int, unit: int, pdu: bytes, *, protocol: int = 0, length: int | None = None
) -> bytes:
    size = len(pdu) + 1 if length is None else length
    return struct.pack(">HHHB", tid, protocol, size, unit) + pdu


def registers(function: int, values: list[int], byte_count: int | None = None) -> bytes:
    n = 2 * len(values) if byte_count is None else byte_count
    return struct.pack(f">BB{len(values)}H", function, n, *values)


def answer(req: Req, values: list[int] | None = None) -> bytes:
    """The correct answer to a register read: register i holds 100 + i unless given."""
    got = values if values is not None else [100 + i for i in range(req.count)]
    return frame(req.tid, req.unit, registers(req.function, got))


Handler = Callable[[Req, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A Modbus TCP "device" that hands each request to the test's ``handler`` to answer."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Req] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                req = Req(tid, unit, await reader.readexactly(length - 1))
                self.requests.append(req)
                await self.handler(req, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


@contextlib.asynccontextmanager
async def client_of(port: int, timeout: float = TIMEOUT) -> AsyncIterator[MbapClient]:
    client = MbapClient("127.0.0.1", port, timeout=timeout)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


async def correct(req: Req, writer: asyncio.StreamWriter) -> None:
    writer.write(answer(req))


# -- every function against the simulator ---------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimulator]:
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as s:
        yield s


async def test_reads_of_all_four_tables(sim: ModbusSimulator) -> None:
    sim.set_registers(1, "holding", 10, [1, 2, 65535])
    sim.set_registers(1, "input", 20, [7, 0x8001])
    sim.set_registers(1, "coil", 30, [1, 0, 1, 1, 0, 0, 0, 0, 0, 1])
    sim.set_registers(1, "discrete", 40, [0, 1, 1])
    async with client_of(sim.port) as c:
        holding = await c.read_holding_registers(10, count=3, device_id=1)
        inputs = await c.read_input_registers(20, count=2, device_id=1)
        coils = await c.read_coils(30, count=10, device_id=1)
        discrete = await c.read_discrete_inputs(40, count=3, device_id=1)
    assert not holding.isError() and list(holding.registers) == [1, 2, 65535]
    assert list(inputs.registers) == [7, 0x8001]
    # Padded to whole bytes, as pymodbus gives them; the driver slices what it asked for.
    assert len(coils.bits) == 16
    assert list(coils.bits[:10]) == [c == "1" for c in "1011000001"]
    assert list(discrete.bits[:3]) == [False, True, True]
    assert list(sim.log)[-4:] == [(1, 3, 10, 3), (1, 4, 20, 2), (1, 1, 30, 10), (1, 2, 40, 3)]


async def test_writes_of_all_four_functions(sim: ModbusSimulator) -> None:
    async with client_of(sim.port) as c:
        one = await c.write_register(100, 0xBEEF, device_id=1)
        many = await c.write_registers(110, [1, 2, 3], device_id=1)
        coil = await c.write_coil(5, True, device_id=1)
        coils = await c.write_coils(16, [True, False, True, True, False, False, False, True, True])
    assert not any(a.isError() for a in (one, many, coil, coils))
    assert sim.registers(1, "holding", 100, 1) == [0xBEEF]
    assert sim.registers(1, "holding", 110, 3) == [1, 2, 3]
    assert sim.registers(1, "coil", 5, 1) == [1]
    assert sim.registers(1, "coil", 16, 9) == [1, 0, 1, 1, 0, 0, 0, 1, 1]
    assert [fc for _, fc, _, _ in sim.log] == [6, 16, 5, 15]


async def test_exception_answers_carry_their_code(sim: ModbusSimulator) -> None:
    sim.set_exception(1, "holding", 50, 60, 4)
    sim.set_illegal(1, 70, 70)
    async with client_of(sim.port) as c:
        failure = await c.read_holding_registers(50, count=2, device_id=1)
        illegal = await c.read_input_registers(70, count=1, device_id=1)
        fine = await c.read_holding_registers(0, count=1, device_id=1)
    assert failure.isError() and failure.exception_code == 4
    assert illegal.isError() and illegal.exception_code == 2
    assert not fine.isError() and fine.exception_code == 0


async def test_transaction_ids_wrap_from_65535_to_1() -> None:
    async with RawServer(correct) as server, client_of(server.port) as c:
        c._tid = 0xFFFE
        for _ in range(3):
            assert list((await c.read_holding_registers(0, count=1)).registers) == [100]
    assert [r.tid for r in server.requests] == [0xFFFF, 1, 2]


# -- framing --------------------------------------------------------------------------------------


class Chunks(MbapClient):
    """Counts the pieces the answers arrived in."""

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", port, timeout=TIMEOUT)
        self.chunks: list[int] = []

    def data_received(self, data: bytes) -> None:
        self.chunks.append(len(data))
        super().data_received(data)


async def test_answer_split_across_several_segments() -> None:
    async def dribble(req: Req, writer: asyncio.StreamWriter) -> None:
        data = answer(req)
        for cut in (data[:3], data[3:8], data[8:9], data[9:]):
            writer.write(cut)
            await writer.drain()
            await asyncio.sleep(0.01)  # the stimulus: separate TCP segments, well under TIMEOUT

    async with RawServer(dribble) as server:
        client = Chunks(server.port)
        assert await client.connect()
        try:
            got = await client.read_holding_registers(0, count=3)
        finally:
            client.close()
    assert list(got.registers) == [100, 101, 102]
    assert len(client.chunks) >= 2, client.chunks


async def test_a_late_answer_and_the_current_one_in_one_segment() -> None:
    async def stale_first(req: Req, writer: asyncio.StreamWriter) -> None:
        writer.write(
            frame((req.tid - 1) & 0xFFFF, req.unit, registers(3, [9] * req.count)) + answer(req)
        )

    async with RawServer(stale_first) as server, client_of(server.port) as c:
        got = await c.read_holding_registers(0, count=2)
        assert list(got.registers) == [100, 101]
        assert c.stale_answers == 1


async def test_late_answer_after_a_timeout_is_discarded_and_the_next_request_answered() -> None:
    held: list[Req] = []

    async def late(req: Req, writer: asyncio.StreamWriter) -> None:
        if not held:
            held.append(req)  # no answer now: the client times out
            return
        writer.write(answer(held[0], [7, 7]))  # the old answer arrives first...
        await writer.drain()
        writer.write(answer(req))  # ...then the current one

    async with RawServer(late) as server, client_of(server.port) as c:
        with pytest.raises(NoAnswer):
            await c.read_holding_registers(0, count=2)
        assert c.connected and c.timeouts == 1
        got = await c.read_holding_registers(0, count=2)
        assert list(got.registers) == [100, 101]
        assert c.stale_answers == 1


async def test_each_request_gets_its_own_full_timeout_from_the_shared_timer() -> None:
    """The timer stays armed across answers: one armed for an earlier request must neither cut
    a later request short (it re-arms) nor make a shorter timeout wait for it (it is moved)."""

    async def first_only(req: Req, writer: asyncio.StreamWriter) -> None:
        if req.tid in (1, 3):
            writer.write(answer(req))

    loop = asyncio.get_running_loop()
    async with RawServer(first_only) as server, client_of(server.port, timeout=0.3) as c:
        await c.read_holding_registers(0, count=1)  # arms the timer for t0 + 0.3
        await asyncio.sleep(0.15)  # the stimulus: the next request starts half-way
        sent = loop.time()
        with pytest.raises(NoAnswer):
            await c.read_holding_registers(0, count=1)
        assert 0.29 <= loop.time() - sent < 2.0
        c.timeout = 5.0
        await c.read_holding_registers(0, count=1)  # arms the timer 5 s ahead
        c.timeout = 0.1
        sent = loop.time()
        with pytest.raises(NoAnswer):
            await c.read_holding_registers(0, count=1)
        assert 0.09 <= loop.time() - sent < 2.0
        assert c.timeouts == 2


async def test_a_wrong_transaction_id_is_not_taken_for_the_answer() -> None:
    async def wrong_tid(req: Req, writer: asyncio.StreamWriter) -> None:
        writer.write(frame(req.tid + 5, req.unit, registers(3, [1])))
        if req.tid == 2:
            writer.write(answer(req))

    async with RawServer(wrong_tid) as server, client_of(server.port) as c:
        with pytest.raises(NoAnswer):  # only a foreign frame: no answer
            await c.read_holding_registers(0, count=1)
        got = await c.read_holding_registers(0, count=1)  # foreign, then the right one
        assert list(got.registers) == [100]
        assert c.stale_answers == 2
        assert c.connected


async def test_tid_0_is_no_wildcard() -> None:
    """pymodbus accepts an answer with transaction id 0 for any request; we do not."""

    async def zero(req: Req, writer: asyncio.StreamWriter) -> None:
        writer.write(frame(0, req.unit, registers(3, [666])))

    async with RawServer(zero) as server, client_of(server.port) as c:
        with pytest.raises(NoAnswer):
            await c.read_holding_registers(0, count=1)
        assert c.stale_answers == 1


def _invalid_then_correct(bad: Callable[[Req], bytes]) -> Handler:
    """The first request gets ``bad(req)``, every later one the correct answer."""

    async def handler(req: Req, writer: asyncio.StreamWriter) -> None:
        writer.write(bad(req) if req.tid == 1 else answer(req))

    return handler


INVALID = {
    "wrong unit id": lambda r: frame(r.tid, r.unit + 1, registers(3, [1] * r.count)),
    "wrong function code": lambda r: frame(r.tid, r.unit, registers(4, [1] * r.count)),
    "fewer registers than asked": lambda r: frame(r.tid, r.unit, registers(3, [1] * (r.count - 1))),
    "byte count against the frame": lambda r: frame(
        r.tid, r.unit, registers(3, [1] * r.count, byte_count=2 * r.count + 2)
    ),
    "exception with extra bytes": lambda r: frame(r.tid, r.unit, bytes([0x83, 2, 0])),
    "frame shorter than its length": lambda r: frame(
        r.tid, r.unit, registers(3, [1] * r.count), length=2 * r.count + 1
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
async def test_an_answer_that_cannot_be_right_is_invalid_and_the_next_one_is_read(
    case: str,
) -> None:
    handler = _invalid_then_correct(INVALID[case])
    async with RawServer(handler) as server, client_of(server.port) as c:
        with pytest.raises(ModbusError) as err:
            await c.read_holding_registers(0, count=2, device_id=3)
        assert isinstance(err.value, InvalidAnswer), err.value
        assert str(err.value).startswith("invalid answer: ")
        assert c.connected
        got = await c.read_holding_registers(0, count=2, device_id=3)
        assert list(got.registers) == [100, 101]


async def test_write_echo_and_coil_byte_count_are_checked() -> None:
    async def wrong(req: Req, writer: asyncio.StreamWriter) -> None:
        if req.function == 6:  # echoes another value
            writer.write(frame(req.tid, req.unit, req.pdu[:3] + b"\x00\x09"))
        elif req.function == 16:  # the right echo
            writer.write(frame(req.tid, req.unit, req.pdu[:5]))
        else:  # 10 coils need 2 bytes, not 1
            writer.write(frame(req.tid, req.unit, bytes([1, 1, 0xFF])))

    async with RawServer(wrong) as server, client_of(server.port) as c:
        with pytest.raises(InvalidAnswer, match="not echoed"):
            await c.write_register(7, 8)
        assert not (await c.write_registers(7, [8, 9])).isError()
        with pytest.raises(InvalidAnswer, match="byte count 1, expected 2"):
            await c.read_coils(0, count=10)


OUT_OF_SYNC = {
    "protocol id not 0": lambda r: frame(r.tid, r.unit, registers(3, [1] * r.count), protocol=7),
    "length 0": lambda r: frame(r.tid, r.unit, registers(3, [1] * r.count), length=0),
    "garbage": lambda r: bytes(range(200, 230)),
}


@pytest.mark.parametrize("case", list(OUT_OF_SYNC))
async def test_a_stream_out_of_sync_is_dropped_with_its_connection(case: str) -> None:
    """Only a new connection finds the next frame boundary for sure: the request fails as a lost
    connection (the agent reconnects with backoff), and nothing of the stream is kept."""
    handler = _invalid_then_correct(OUT_OF_SYNC[case])
    async with RawServer(handler) as server, client_of(server.port) as c:
        with pytest.raises(LinkDown, match="out of sync"):
            await c.read_holding_registers(0, count=2, device_id=3)
        assert not c.connected and c.desyncs == 1
        assert c.dropped_bytes == len(OUT_OF_SYNC[case](Req(1, 3, bytes([3, 0, 0, 0, 2]))))
        assert len(c._buffer) == 0


async def test_unit_0_takes_an_answer_from_any_unit() -> None:
    async def other_unit(req: Req, writer: asyncio.StreamWriter) -> None:
        writer.write(frame(req.tid, 17, registers(3, [5])))

    async with RawServer(other_unit) as server, client_of(server.port) as c:
        assert list((await c.read_holding_registers(0, count=1, device_id=0)).registers) == [5]


async def test_an_oversized_frame_is_skipped_not_buffered_and_sync_kept() -> None:
    big = 65000

    async def oversized(req: Req, writer: asyncio.StreamWriter) -> None:
        if req.tid == 1:
            data = frame(req.tid, req.unit, bytes([3, 255]) + bytes(big))
            for i in range(0, len(data), 4096):  # in pieces, as a slow sender would
                writer.write(data[i : i + 4096])
                await writer.drain()
        writer.write(answer(req) if req.tid > 1 else b"")

    async with RawServer(oversized) as server, client_of(server.port) as c:
        with pytest.raises(InvalidAnswer, match="frame"):
            await c.read_holding_registers(0, count=1)
        got = await c.read_holding_registers(0, count=1)
        assert list(got.registers) == [100]
        assert c.dropped_bytes == 7 + 2 + big  # all of it dropped, none of it kept
        assert len(c._buffer) == 0


async def test_a_slowloris_never_grows_the_buffer_past_one_frame() -> None:
    got_request = asyncio.Event()

    async def slowloris(req: Req, writer: asyncio.StreamWriter) -> None:
        got_request.set()
        # A valid header announcing the largest frame, then its body one byte at a time.
        writer.write(frame(req.tid, req.unit, b"", length=254))
        for _ in range(300):
            writer.write(b"\x00")
            await writer.drain()
            await asyncio.sleep(0)

    async with RawServer(slowloris) as server, client_of(server.port, timeout=0.5) as c:
        pending = asyncio.ensure_future(c.read_holding_registers(0, count=1))
        await got_request.wait()
        peak = 0
        while not pending.done():
            peak = max(peak, len(c._buffer))
            await asyncio.sleep(0)
        with pytest.raises(ModbusError):
            pending.result()
    assert peak <= 260


# -- connection -----------------------------------------------------------------------------------


async def test_connection_reset_mid_request() -> None:
    async def reset(req: Req, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with RawServer(reset) as server, client_of(server.port) as c:
        with pytest.raises(LinkDown):
            await c.read_holding_registers(0, count=1)
        assert not c.connected
        with pytest.raises(LinkDown):
            await c.read_holding_registers(0, count=1)


async def test_server_closing_mid_request() -> None:
    async def close(req: Req, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(req)[:5])  # half a header, then FIN
        writer.close()

    async with RawServer(close) as server, client_of(server.port) as c:
        with pytest.raises(LinkDown):
            await c.read_holding_registers(0, count=1)
        assert not c.connected


async def test_close_fails_the_waiting_request_at_once() -> None:
    async def silent(req: Req, writer: asyncio.StreamWriter) -> None:
        pass

    async with RawServer(silent) as server, client_of(server.port, timeout=5) as c:
        pending = c.read_holding_registers(0, count=1)  # sent: the future is returned at once
        c.close()
        assert not c.connected
        with pytest.raises(LinkDown):
            await pending


async def test_one_request_at_a_time_and_a_cancelled_one_frees_the_connection() -> None:
    answer_now = asyncio.Event()

    async def on_cue(req: Req, writer: asyncio.StreamWriter) -> None:
        if req.tid == 1:
            return
        await answer_now.wait()
        writer.write(answer(req))

    async with RawServer(on_cue) as server, client_of(server.port, timeout=5) as c:
        first = c.read_holding_registers(0, count=1)
        with pytest.raises(RuntimeError):
            c.read_holding_registers(0, count=1)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        second = c.read_holding_registers(0, count=1)
        answer_now.set()
        assert list((await second).registers) == [100]


async def test_connect_refused_says_why() -> None:
    client = MbapClient("127.0.0.1", free_port(), timeout=TIMEOUT)
    assert not await client.connect()
    assert isinstance(client.error, ConnectionRefusedError)
    assert not client.connected


# -- the link -------------------------------------------------------------------------------------


async def test_link_uses_the_lean_client_for_tcp_and_counts_frames(sim: ModbusSimulator) -> None:
    link = ModbusLink(ModbusConnection.model_validate({"host": "127.0.0.1", "port": sim.port}))
    await link.open()
    try:
        for _ in range(3):
            got = await link.execute(
                lambda c: c.read_holding_registers(0, count=2, device_id=1), timeout=TIMEOUT
            )
            assert not got.isError()
        assert isinstance(link._client, MbapClient)
        assert (link.frames_sent, link.bytes_sent, link.bytes_received) == (3, 36, 39)
    finally:
        await link.close()
    assert not link.connected and link.frames_sent == 3  # kept across the close


async def test_link_refused_reason_unchanged() -> None:
    port = free_port()
    link = ModbusLink(ModbusConnection.model_validate({"host": "127.0.0.1", "port": port}))
    with pytest.raises(DeviceError) as err:
        await link.open()
    assert err.value.reason == "connection refused"
