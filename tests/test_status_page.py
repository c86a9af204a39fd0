"""The status page and its parts without a process: language choice, escaping, semantics."""

from __future__ import annotations

import time
from html.parser import HTMLParser
from typing import Any

import pytest

from agent.ops.status import readiness
from agent.ops.web.i18n import TEXT, pick_language
from agent.ops.web.page import render_page


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        ("", "en"),
        ("en-US,en;q=0.9", "en"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        ("zh", "zh-CN"),
        ("zh-Hans-CN", "zh-CN"),
        ("en;q=0.5,zh-CN;q=0.8", "zh-CN"),
        ("zh-CN;q=0,en", "en"),
        ("de-DE,fr;q=0.9", "en"),
        ("en,zh-CN", "en"),
        ("zh-CN;q=abc", "en"),
        ("zh-CN", "zh-CN"),
    ],
)
def test_language_follows_accept_language(header: str, lang: str) -> None:
    assert pick_language(header) == lang


def test_both_languages_have_every_word() -> None:
    assert set(TEXT["en"]) == set(TEXT["zh-CN"])


def snapshot(**over: Any) -> dict[str, Any]:
    now = time.time()
    snap: dict[str, Any] = {
        "agent": {
            "id": "gw-1",
            "version": "0.1.0",
            "running": True,
            "started": now - 100,
            "uptime_s": 100.0,
            "config": "/etc/edge-agent/config.yaml",
            "config_loaded": now - 100,
            "reloads": 0,
        },
        "now": now,
        "broker": {"host": "broker", "port": 8883, "tls": True, "connected": True, "sessions": 1},
        "buffer": {
            "open": True,
            "batches": 3,
            "bytes": 40960,
            "max_size": 256_000_000,
            "oldest_age_s": 1.5,
            "dropped_total": 0,
        },
        "clock": {"synchronized": True, "steps": 0, "timestamps_clamped": 0},
        "devices": [
            {
                "name": "press-1",
                "driver": "modbus",
                "state": "down",
                "reason": "<script>alert(1)</script>",
                "since": now - 5,
                "poll_interval": 1.0,
                "last_poll": now - 1,
                "cycles": 9,
                "last_seq": 9,
                "error_rate": 0.5,
                "timestamps_clamped": 0,
                "values": {
                    "label": {
                        "value": '"><img src=x onerror=alert(1)>',
                        "quality": "good",
                        "ts": now,
                    },
                    "temp": {"value": None, "quality": "bad", "ts": now, "reason": "timeout"},
                },
                "units": {"temp": "degC"},
            }
        ],
        "recent_errors": [
            {"ts": now, "level": "warning", "logger": "x", "msg": "a <b>bold</b> & claim"}
        ],
    }
    snap.update(over)
    snap["problems"] = readiness(snap)
    snap["ready"] = not snap["problems"]
    return snap


class Outline(HTMLParser):
    """What a screen reader navigates by: language, landmarks, headings, table headers."""

    def __init__(self) -> None:
        super().__init__()
        self.lang: str | None = None
        self.tags: list[str] = []
        self.headings: list[tuple[str, str]] = []
        self.th_scopes: list[str | None] = []
        self.captions = 0
        self._heading: str | None = None
        self._text = ""
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "html":
            self.lang = a.get("lang")
        if tag in ("h1", "h2", "h3"):
            self._heading, self._text = tag, ""
        if tag == "th":
            self.th_scopes.append(a.get("scope"))
        if tag == "caption":
            self.captions += 1
        if tag == "script" or any(k.startswith("on") for k in a):
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == self._heading:
            self.headings.append((tag, self._text.strip()))
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._heading:
            self._text += data


def outline(page: str) -> Outline:
    o = Outline()
    o.feed(page)
    return o


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_page_is_semantic_and_escaped(lang: str) -> None:
    page = render_page(snapshot(), lang)
    o = outline(page)
    assert o.lang == lang
    for landmark in ("header", "nav", "main", "footer"):
        assert landmark in o.tags
    assert [h for h, _ in o.headings].count("h1") == 1
    assert [text for h, text in o.headings if h == "h2"] == [
        TEXT[lang][k] for k in ("overview", "devices", "values", "errors")
    ]
    assert ("h3", "press-1") in o.headings
    assert o.th_scopes and all(s in ("col", "row") for s in o.th_scopes)
    assert o.captions >= 2
    # Nothing from a device or a log line becomes markup.
    assert o.scripts == 0
    assert "<script>" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'http-equiv="refresh"' in page
    # States are words, not only colours.
    assert TEXT[lang]["state_down"] in page and TEXT[lang]["quality_bad"] in page


def test_page_says_what_is_wrong() -> None:
    snap = snapshot(
        broker={"host": "b", "port": 1883, "tls": False, "connected": False, "sessions": 0},
        buffer={
            "open": True,
            "batches": 10,
            "bytes": 950_000,
            "max_size": 1_000_000,
            "oldest_age_s": 4000,
            "dropped_total": 7,
        },
        clock={"synchronized": False, "steps": 1, "timestamps_clamped": 3},
    )
    assert not snap["ready"]
    page = render_page(snap, "zh-CN")
    for text in ("未连接", "未同步", "时钟回拨", "未就绪原因", "丢弃"):
        assert text in page
    en = render_page(snap, "en")
    assert "NOT synchronised" in en and "broker disconnected and buffer above 90%" in en
