"""The status page as one server-rendered HTML document.

Written for a screen reader as much as for eyes: a ``lang`` attribute, landmarks (header, nav,
main, footer), one ``h1`` and a heading per section, tables with captions and ``th scope``, states
written out in words (colour only repeats them), times in ``<time datetime>``. Everything that
comes from the config, a device or a log line is escaped. No script: it refreshes itself with a
meta refresh, so it works in any browser, a kiosk or a text browser over SSH.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.ops.web.i18n import DURATION_UNITS, TEXT

REFRESH_S = 5

_STYLE = """
body{font-family:system-ui,"Noto Sans CJK SC","Microsoft YaHei",sans-serif;margin:0;color:#1b1b1b;
background:#f6f7f9;line-height:1.45}
header,main,footer{max-width:72rem;margin:0 auto;padding:0 1rem}
header{padding-top:1rem}h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.2rem;margin-top:1.6rem}
h3{font-size:1rem;margin:1rem 0 .3rem}
nav ul{list-style:none;padding:0;display:flex;gap:1rem;flex-wrap:wrap}
a{color:#0b57d0}.skip{position:absolute;left:-999px}.skip:focus{left:1rem}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip-path:inset(50%);white-space:nowrap}
table{border-collapse:collapse;width:100%;background:#fff;margin:.3rem 0 1rem}
caption{text-align:left;font-weight:600;padding:.3rem 0}
th,td{border:1px solid #d0d4da;padding:.3rem .5rem;text-align:left;vertical-align:top}
thead th{background:#eceff3}td.num{text-align:right;font-variant-numeric:tabular-nums}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;background:#fff;
padding:.6rem 1rem;border:1px solid #d0d4da}dt{font-weight:600}dd{margin:0}
.up,.good,.ok{color:#0a6b2d;font-weight:600}.down,.bad,.warn{color:#b3261e;font-weight:600}
.uncertain,.starting{color:#8a5a00;font-weight:600}
footer{padding:1rem;color:#555;font-size:.9rem}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _duration(seconds: float, lang: str) -> str:
    ms, s, mi, h, d = DURATION_UNITS[lang]
    seconds = max(0.0, seconds)
    if 0 < seconds < 1:
        return f"{seconds * 1000:.0f}{ms}"
    if seconds < 120:
        return f"{seconds:.0f}{s}"
    if seconds < 7200:
        return f"{seconds / 60:.0f}{mi}"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}{h}"
    return f"{seconds / 86400:.1f}{d}"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _when(ts: float | None, now: float, t: dict[str, str], lang: str) -> str:
    if ts is None:
        return _e(t["never"])
    ago = t["ago"].format(t=_duration(now - ts, lang))
    return f'<time datetime="{_iso(ts)}">{_e(_clock(ts))}</time>{_e(t["lp"] + ago + t["rp"])}'


def _value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _rate(rate: float | None) -> str:
    return "" if rate is None else f"{rate * 100:.0f} %"


def _rows(rows: Iterable[str]) -> str:
    return "".join(rows)


def _destination(
    out: dict[str, Any], t: dict[str, str], lang: str, word: Callable[[str], str]
) -> tuple[str, str]:
    """One more destination (``outputs:``) in the overview: where, connected or not, and
    its share of the buffer."""
    state = (
        f'<span class="ok">{word("connected")}</span>'
        if out["connected"]
        else f'<span class="warn">{word("disconnected")}</span>'
    )
    text = t["output_text"].format(
        format=out["format"],
        n=out["backlog"],
        age=_duration(out["oldest_age_s"], lang),
        d=out["dropped_total"],
    )
    return (
        _e(t["destination"].format(name=out["name"])),
        f"{_e(', '.join(out['servers']))}{word('colon')}{state}{word('sep')}{_e(text)}",
    )


def render_page(snap: dict[str, Any], lang: str) -> str:
    """The page for one snapshot (``agent.ops.status.build_snapshot``) in ``lang``."""
    t = TEXT[lang]
    now = float(snap["now"])
    agent = snap["agent"]
    broker = snap["broker"]
    buf = snap["buffer"]
    clock = snap["clock"]
    other = "zh-CN" if lang == "en" else "en"

    def word(key: str) -> str:
        return _e(t.get(key, key))

    broker_state = (
        f'<span class="ok">{word("connected")}</span>'
        if broker["connected"]
        else f'<span class="warn">{word("disconnected")}</span>'
    )
    buffer_text = t["buffer_text"].format(
        batches=buf["batches"],
        size=_size(buf["bytes"]),
        max=_size(buf["max_size"]),
        age=_duration(buf["oldest_age_s"], lang),
    )
    sync = clock["synchronized"]
    clock_html = (
        f'<span class="ok">{word("clock_ok")}</span>'
        if sync is True
        else f'<span class="warn">{word("clock_bad")}</span>'
        if sync is False
        else word("clock_unknown")
    )
    if clock["timestamps_clamped"]:
        clock_html += word("sep") + _e(t["clamped"].format(n=clock["timestamps_clamped"]))
    ready = (
        f'<span class="ok">{word("yes")}</span>'
        if snap["ready"]
        else f'<span class="warn">{word("no")}</span>{word("lp")}{word("problems")}{word("colon")}'
        + _e(t["sep"].join(snap["problems"]))
        + word("rp")
    )
    overview = [
        (word("gateway"), _e(agent["id"])),
        (word("version"), _e(agent["version"])),
        (word("uptime"), _e(_duration(agent["uptime_s"] or 0, lang))),
        (word("config"), _e(agent["config"] or "-")),
        (word("reloads"), _e(agent["reloads"])),
        (word("ready"), ready),
        (word("broker"), f"{_e(broker['host'])}:{_e(broker['port'])}{word('colon')}{broker_state}"),
        (
            word("buffer"),
            _e(buffer_text)
            + word("sep")
            + _e(t["dropped"].format(n=buf["dropped_total"]))
            + (
                word("sep")
                + '<span class="warn">'
                + _e(t["quarantined"].format(n=buf["quarantined"]))
                + "</span>"
                if buf.get("quarantined")
                else ""
            ),
        ),
        *(_destination(o, t, lang, word) for o in snap.get("outputs", [])[1:]),
        (word("clock"), clock_html),
    ]
    overview_html = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in overview)

    devices = snap["devices"]
    if devices:
        device_rows = _rows(
            "<tr>"
            f'<th scope="row"><a href="#dev-{_e(d["name"])}">{_e(d["name"])}</a></th>'
            f"<td>{_e(d['driver'])}</td>"
            f'<td><span class="{_e(d["state"])}">{word("state_" + d["state"])}</span></td>'
            f"<td>{_e(d['reason'] or '')}</td>"
            f"<td>{_when(d['last_poll'], now, t, lang)}</td>"
            f'<td class="num">{_e(_duration(d["poll_interval"], lang))}</td>'
            f'<td class="num">{_rate(d["error_rate"])}</td>'
            "</tr>"
            for d in devices
        )
        devices_html = (
            f"<table><caption>{word('devices_caption')}</caption><thead><tr>"
            f'<th scope="col">{word("device")}</th><th scope="col">{word("driver")}</th>'
            f'<th scope="col">{word("state")}</th><th scope="col">{word("reason")}</th>'
            f'<th scope="col">{word("last_poll")}</th><th scope="col">{word("interval")}</th>'
            f'<th scope="col"><abbr title="{word("error_rate_help")}">'
            f"{word('error_rate')}</abbr></th>"
            f"</tr></thead><tbody>{device_rows}</tbody></table>"
        )
    else:
        devices_html = f"<p>{word('no_devices')}</p>"

    value_sections = []
    for d in devices:
        units = d.get("units", {})
        if d["values"]:
            rows = _rows(
                "<tr>"
                f'<th scope="row">{_e(tag)}</th>'
                f'<td class="num">{_e(_value(r["value"]))}</td>'
                f"<td>{_e(units.get(tag, ''))}</td>"
                f'<td><span class="{_e(r["quality"])}">{word("quality_" + r["quality"])}</span>'
                f"{word('colon') + _e(r['reason']) if r.get('reason') else ''}</td>"
                "</tr>"
                for tag, r in d["values"].items()
            )
            table = (
                f'<table><caption class="sr">{word("values")}{word("colon")}{_e(d["name"])}'
                "</caption><thead><tr>"
                f'<th scope="col">{word("tag")}</th><th scope="col">{word("value")}</th>'
                f'<th scope="col">{word("unit")}</th><th scope="col">{word("quality")}</th>'
                f"</tr></thead><tbody>{rows}</tbody></table>"
            )
        else:
            table = f"<p>{word('no_values')}</p>"
        value_sections.append(
            f'<section aria-labelledby="dev-{_e(d["name"])}">'
            f'<h3 id="dev-{_e(d["name"])}">{_e(d["name"])}</h3>{table}</section>'
        )

    errors = snap["recent_errors"]
    if errors:
        error_rows = _rows(
            "<tr>"
            f'<td><time datetime="{_iso(e["ts"])}">{_e(_clock(e["ts"]))}</time></td>'
            f"<td>{_e(e['level'])}</td>"
            f"<td>{_e(e.get('device', ''))}</td>"
            f"<td>{_e(e['msg'])}"
            + "".join(f" {_e(k)}={_e(e[k])}" for k in ("reason", "error", "problem") if k in e)
            + "</td></tr>"
            for e in errors
        )
        errors_html = (
            f"<table><caption>{word('errors')}</caption><thead><tr>"
            f'<th scope="col">{word("time")}</th><th scope="col">{word("level")}</th>'
            f'<th scope="col">{word("device")}</th><th scope="col">{word("message")}</th>'
            f"</tr></thead><tbody>{error_rows}</tbody></table>"
        )
    else:
        errors_html = f"<p>{word('no_errors')}</p>"

    title = f"{t['title']}{t['colon']}{agent['id']}"
    return f"""<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>{_e(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<a class="skip" href="#devices">{word("skip")}</a>
<header>
<h1>{_e(title)}</h1>
<p>{word("updated")}{word("colon")}{_when(now, now, t, lang)}{word("full_stop")}{
        _e(t["refresh"].format(n=REFRESH_S))
    }</p>
<nav aria-label="{word("nav")}"><ul>
<li><a href="#overview">{word("overview")}</a></li>
<li><a href="#devices">{word("devices")}</a></li>
<li><a href="#values">{word("values")}</a></li>
<li><a href="#errors">{word("errors")}</a></li>
<li><a href="/?lang={other}" hreflang="{other}" lang="{other}">{_e(t["lang_switch"])}</a></li>
</ul></nav>
</header>
<main>
<section aria-labelledby="overview"><h2 id="overview">{word("overview")}</h2>
<dl>{overview_html}</dl></section>
<section aria-labelledby="devices"><h2 id="devices">{word("devices")}</h2>
{devices_html}</section>
<section aria-labelledby="values"><h2 id="values">{word("values")}</h2>
{"".join(value_sections) or f"<p>{word('no_devices')}</p>"}</section>
<section aria-labelledby="errors"><h2 id="errors">{word("errors")}</h2>
{errors_html}</section>
</main>
<footer><p>{word("links")}{word("colon")}
<a href="/status.json">status.json</a> · <a href="/metrics">metrics</a> ·
<a href="/healthz">healthz</a> · <a href="/readyz">readyz</a></p></footer>
</body>
</html>
"""
