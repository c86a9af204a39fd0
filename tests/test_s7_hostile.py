"""An S7 PLC that breaks the protocol hundreds of times: the driver only ever raises DeviceError,
never waits past its deadline, counts what went wrong, and never passes a wrong value as good.

``HostileS7Server`` answers reads with items refused, answers cut short, wrong item lengths and
counts, header errors (PUT/GET off), stale answers, lying TPKT lengths, garbage, answers dribbled
slower than the timeout, and silence, mixed with correct answers whose bytes follow from their
address, so every good value can be checked.
"""

from __future__ import annotations

import time
from typing import Any

from drivers.base import DeviceError, Quality
from drivers.s7.config import S7Device
from drivers.s7.driver import S7Driver
from simulators.hostile_s7 import HostileS7Server

WEIGHTS = {
    "ok": 4.0,
    "item_error": 2.0,
    "truncated": 2.0,
    "wrong_length": 2.0,
    "wrong_count": 1.0,
    "header_error": 1.0,
    "stale": 2.0,
    "bad_tpkt": 0.5,
    "garbage": 0.5,
    "slowloris": 0.1,
    "silent": 0.2,
}
TIMEOUT = 0.1
#: Words far enough apart to be items of their own (one request of four items per poll).
ADDRESSES = {"w0": ("DB1.DBW0", 0), "w40": ("DB1.DBW40", 40), "m9": ("MW9", 9), "q3": ("QW3", 3)}


def expected(byte: int) -> int:
    """A WORD at ``byte`` as the hostile server's correct answers hold it."""
    return (byte & 0xFF) << 8 | (byte + 1) & 0xFF


async def test_hundreds_of_hostile_answers_only_device_errors_and_only_right_values() -> None:
    tags: list[dict[str, Any]] = [
        {"name": name, "address": address, "type": "WORD"}
        for name, (address, _) in ADDRESSES.items()
    ]
    good = bad = device_errors = 0
    reasons: set[str] = set()
    async with HostileS7Server(seed=7, weights=WEIGHTS, slowloris_delay=0.05) as server:
        dev = S7Device.model_validate(
            {
                "name": "hostile",
                "driver": "s7",
                "connection": {"host": "127.0.0.1", "port": server.port, "timeout": TIMEOUT},
                "tags": tags,
            }
        )
        driver = S7Driver(dev)
        try:
            while server.frames < 400:
                started = time.monotonic()
                try:
                    if driver.link is None or not driver.link.connected:
                        await driver.connect()
                    readings = await driver.poll()
                except DeviceError as exc:
                    device_errors += 1
                    reasons.add(exc.reason)
                    await driver.close()
                    readings = []
                # Connect and poll each wait one deadline at most (plus the loop's own time).
                assert time.monotonic() - started < 2 * TIMEOUT + 0.25
                for r in readings:
                    if r.quality is Quality.GOOD:
                        assert r.value == expected(ADDRESSES[r.tag][1]), (r, dict(server.sent))
                        good += 1
                    else:
                        assert r.reason
                        bad += 1
        finally:
            await driver.close()
    counts = driver.error_counts()
    print(
        f"hostile S7: {server.frames} hostile answers {dict(server.sent)}; good {good}, bad {bad}, "
        f"device errors {device_errors} {sorted(reasons)}, counted {dict(counts)}"
    )
    assert good > 300 and bad > 100 and device_errors > 10
    assert reasons <= {"timeout", "connection lost", "invalid answer"}
    assert counts.get("invalid answer", 0) > 50 and counts.get("item error", 0) > 20
    assert server.connections > 5  # reconnected after every lost connection
