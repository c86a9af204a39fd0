"""A serial line gone bad, 10,000 frames of it: no crash, bounded memory, every error counted.

``HostileSerialEmitter`` writes counter frames to a pty at 2,000 frames/s: wrong checksums, frames
that never end, frames of 5,000 bytes, binary noise, NUL and 0xFF bursts, frames that match no
pattern and frames split across writes, between good ones. The agent (a real process) reads the
line in stream mode. Proof: it keeps running and stops cleanly, its memory is flat after warm-up,
the driver counted the errors by kind (``edge_agent_driver_errors_total``), and every value it
published as good came from a well-formed frame.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from simulators.hostile import HostileSerialEmitter
from tests.brokers import Mosquitto, Subscriber, free_port
from tests.e2e import agent_process, rss_at_marks, scrape_metric, until


def _config(tmp_path: Path, broker_port: int, port: str, metrics_port: int) -> Path:
    doc = {
        "agent": {"id": "test-gw", "data_dir": str(tmp_path / "data")},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "reconnect_min": "50ms"},
        "buffer": {"max_size": "16MB"},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "devices": [
            {
                "name": "counter",
                "driver": "serial",
                "connection": {"port": port, "baudrate": 115200, "timeout": "200ms"},
                "framing": {"start": r"\x02", "end": r"\x03"},
                "checksum": {"kind": "xor", "format": "hex"},
                "max_frame": 64,
                "mode": "stream",
                "match": r"^C=(?P<count>\d{6})$",
                "poll_interval": "50ms",
                "tags": [{"name": "parts", "group": "count", "type": "int64"}],
            }
        ],
    }
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.slow
async def test_10000_hostile_serial_frames_no_crash_bounded_memory_errors_counted(
    tmp_path: Path, broker: Mosquitto
) -> None:
    metrics_port = free_port()
    sub = Subscriber(broker.port, ["edge/test-gw/+/data"], client_id="serial-watch").start()
    async with HostileSerialEmitter(rate=2000.0, seed=5, paused=True) as emitter:
        cfg = _config(tmp_path, broker.port, emitter.path, metrics_port)
        try:
            with agent_process(cfg, tmp_path / "agent.log") as proc:
                await until(lambda: _has_open(proc.pid, emitter.path), 20)
                emitter.resume()
                rss = await rss_at_marks(proc, lambda: emitter.frames)
                await asyncio.sleep(0.3)  # the last frames are read
                errors = await asyncio.to_thread(
                    scrape_metric, metrics_port, "edge_agent_driver_errors_total"
                )
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 20)
        finally:
            sub.stop()
    text = (tmp_path / "agent.log").read_text()
    print(
        f"hostile serial: {emitter.frames} frames {dict(emitter.sent)}; agent RSS at "
        f"2k/4k/6k/8k/10k frames: {', '.join(f'{r:.1f}' for r in rss)} MB; "
        f"driver errors counted {errors:.0f}"
    )
    assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]
    assert rss[-1] - rss[1] < 3.0, rss
    assert errors >= 1000, errors
    values = [m.json()["values"].get("parts") for m in sub.snapshot()]
    good = [v for v in values if v is not None]
    assert len(good) >= 20
    assert set(good) <= emitter.good, sorted(set(good) - emitter.good)[:10]
    assert good == sorted(good)  # the latest frame each interval: never backwards


def _has_open(pid: int, path: str) -> bool:
    """The agent has the line open: from now on nothing it is sent is lost before it reads."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == path for fd in fds.iterdir())
    except OSError:
        return False
