"""The running agent's listener, as a person, a fleet tool and a browser see it.

A real agent process, a real Modbus simulator and broker, real HTTP, and Debian's Chromium in
headless mode for the page (``make system-deps`` installs it; the test does not skip without it).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from simulators.modbus_map import PRESS_POINTS
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, free_port
from tests.e2e import write_config
from tests.test_ops_rig import BIN, AgentProcess, http, wait_http
from tests.test_status_page import outline

#: Screenshots are kept here for a person to look at after the run.
SHOTS = Path("/tmp/edge-agent-screenshots")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "chromium is not installed: run `make system-deps` (apt-get install chromium)"
    )


def browse(url: str, *args: str, lang: str = "en-US") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # tests run as root in CI containers
            "--disable-gpu",
            "--hide-scrollbars",
            f"--accept-lang={lang}",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
async def test_status_endpoints_page_and_cli(tmp_path: Path, broker: Mosquitto) -> None:
    port = free_port()
    async with ModbusSimulator(port=free_port(), units=(1,)) as sim:
        cfg = write_config(
            tmp_path / "c.yaml",
            broker_port=broker.port,
            modbus_port=sim.port,
            metrics=f"127.0.0.1:{port}",
            devices=[
                {
                    "name": "press-1",
                    "poll_interval": "200ms",
                    "connection": {"host": "127.0.0.1", "port": sim.port, "unit_id": 1},
                    "tags": [p.tag() for p in PRESS_POINTS],
                },
                {  # nothing listens there: down, with the reason
                    "name": "press-2",
                    "poll_interval": "200ms",
                    "connection": {"host": "127.0.0.1", "port": free_port(), "unit_id": 1},
                    "tags": [PRESS_POINTS[0].tag()],
                },
            ],
        )
        url = f"http://127.0.0.1:{port}"
        with AgentProcess(cfg) as agent:
            agent.wait_msg("agent running")
            await asyncio.to_thread(wait_http, f"{url}/readyz", lambda s, b: s == 200)
            assert http(f"{url}/healthz")[0] == 200

            def both_known(status: int, body: bytes) -> bool:
                devices = {d["name"]: d for d in json.loads(body)["devices"]}
                # Values show once a batch is committed (within buffer.commit_interval).
                press = devices["press-1"]
                return (
                    bool(press["state"] == "up" and press["values"])
                    and devices["press-2"]["state"] == "down"
                )

            body = await asyncio.to_thread(wait_http, f"{url}/status.json", both_known)
            snap = json.loads(body)
            devices = {d["name"]: d for d in snap["devices"]}
            assert snap["agent"]["id"] == "test-gw" and snap["broker"]["connected"] is True
            assert snap["buffer"]["open"] is True and snap["ready"] is True
            assert devices["press-2"]["reason"] == "connection refused"
            assert devices["press-2"]["error_rate"] == 1.0
            assert {p.name for p in PRESS_POINTS} <= set(devices["press-1"]["values"])
            assert snap["clock"]["synchronized"] in (True, False, None)

            status, headers, metrics = http(f"{url}/metrics")
            assert status == 200 and b"edge_agent_clock_synchronized" in metrics
            assert b'edge_agent_info{agent="test-gw"' in metrics

            # Read-only: nothing but /read takes a POST, and /read wants its header.
            assert http(f"{url}/", data=b"")[0] == 405
            assert http(f"{url}/read?device=press-1", data=b"")[0] == 403
            assert http(f"{url}/nope")[0] == 404
            # The simulator runs on this loop: requests that wait for a poll go to a thread.
            status, _, body = await asyncio.to_thread(
                http,
                f"{url}/read?device=press-1&tag=voltage_l1",
                data=b"",
                headers={"X-Edge-Agent": "read"},
            )
            doc = json.loads(body)
            assert status == 200 and doc["ok"], doc
            assert [r["tag"] for r in doc["readings"]] == ["voltage_l1"]
            assert doc["readings"][0]["quality"] == "good", doc["readings"][0]

            # The page in both languages, by Accept-Language.
            status, headers, page = http(f"{url}/", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
            assert status == 200 and headers["Content-Language"] == "zh-CN"
            assert outline(page.decode()).lang == "zh-CN" and "网关状态" in page.decode()
            assert "default-src 'none'" in headers["Content-Security-Policy"]

            # The command line, as an operator types it.
            out = await asyncio.to_thread(cli, "status", "-c", str(cfg))
            assert out.returncode == 0, out.stderr
            assert "connected" in out.stdout and "press-2" in out.stdout
            assert any(
                line.split()[:3] == ["press-2", "modbus", "down"]
                for line in out.stdout.splitlines()
            ), out.stdout
            out = await asyncio.to_thread(cli, "read", "-c", str(cfg), "press-1", "voltage_l1")
            assert out.returncode == 0, out.stderr
            assert "running agent" in out.stdout
            assert out.stdout.splitlines()[2].split()[::2] == ["voltage_l1", "good"]

            # A real browser: the DOM it builds, in both languages, and a screenshot.
            SHOTS.mkdir(exist_ok=True)
            dom = await asyncio.to_thread(browse, f"{url}/", "--dump-dom", lang="zh-CN")
            o = outline(dom.stdout)
            assert o.lang == "zh-CN", dom.stderr[-2000:]
            assert ("h2", "设备") in o.headings and ("h3", "press-1") in o.headings
            assert {"header", "nav", "main", "footer", "table", "caption"} <= set(o.tags)
            assert o.th_scopes and all(s in ("col", "row") for s in o.th_scopes)
            dom = await asyncio.to_thread(browse, f"{url}/", "--dump-dom")
            assert outline(dom.stdout).lang == "en" and "Gateway status" in dom.stdout
            for lang in ("en", "zh-CN"):
                shot = SHOTS / f"status-{lang}.png"
                shot.unlink(missing_ok=True)
                done = await asyncio.to_thread(
                    browse,
                    f"{url}/",
                    f"--screenshot={shot}",
                    "--window-size=1200,1000",
                    lang=lang,
                )
                assert shot.exists(), done.stderr[-2000:]
                data = shot.read_bytes()
                assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # not blank
        assert agent.proc.returncode == 0

        # No agent now: read polls the device itself.
        out = await asyncio.to_thread(cli, "read", "-c", str(cfg), "press-1")
        assert out.returncode == 0, out.stderr
        assert "polled directly" in out.stdout
        assert {line.split()[0] for line in out.stdout.splitlines()[2:]} == {
            p.name for p in PRESS_POINTS
        }
        out = await asyncio.to_thread(cli, "status", "-c", str(cfg))
        assert out.returncode == 1 and "no agent answers" in out.stderr
        out = await asyncio.to_thread(cli, "read", "-c", str(cfg), "nope")
        assert out.returncode == 2 and "no device 'nope'" in out.stderr
