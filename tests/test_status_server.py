"""The listener on its own: a hung event loop shows in /healthz; /read only from this machine."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.ops.http import StatusServer, _is_loopback
from tests.test_ops_rig import http
from tests.test_status_page import snapshot


class Source:
    async def snapshot(self) -> dict[str, Any]:
        return snapshot()

    async def read_device(self, device: str, tags: list[str]) -> dict[str, Any]:
        return {"ok": True, "device": device, "readings": [], "tags": tags}


@pytest.fixture
def served() -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = StatusServer("127.0.0.1", 0, CollectorRegistry(), Source(), loop)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", loop
    finally:
        server.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_healthz_tells_a_hung_loop(served: tuple[str, asyncio.AbstractEventLoop]) -> None:
    url, loop = served
    assert http(f"{url}/healthz")[:1] == (200,)
    assert http(f"{url}/readyz")[0] == 200
    loop.call_soon_threadsafe(time.sleep, 3)  # the loop hangs for 3 s
    status, _, body = http(f"{url}/healthz")
    assert status == 503 and body == b"event loop not responding\n"
    assert http(f"{url}/metrics")[0] == 200  # metrics do not need the loop


def test_read_needs_its_header_and_no_origin(served: tuple[str, asyncio.AbstractEventLoop]) -> None:
    url, _ = served
    ok = {"X-Edge-Agent": "read"}
    assert http(f"{url}/read?device=d&tag=a", data=b"", headers=ok)[0] == 200
    assert http(f"{url}/read?device=d", data=b"")[0] == 403
    # A page in a browser adds Origin (and could not add the header without a preflight).
    assert http(f"{url}/read?device=d", data=b"", headers={**ok, "Origin": "http://x"})[0] == 403
    assert http(f"{url}/status.json", data=b"")[0] == 405


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("::ffff:10.0.0.5", False),
        ("fe80::1", False),
        ("not an address", False),
    ],
)
def test_loopback_only(address: str, local: bool) -> None:
    assert _is_loopback(address) is local
