"""Structured logging: ``key=value`` lines on a terminal, JSON lines for journald and shippers.

Fields come from ``extra=`` (for example ``log.warning("device down", extra={"device": d})``), so
a shipper can filter on ``device`` without parsing prose. Secrets are never passed to a logger:
the config keeps them in ``SecretStr`` whose ``str()`` is masked.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


#: Field names whose values are never printed, whatever a caller passes by mistake.
_SECRET = re.compile(r"pass(word|wd)?|secret|token|credential", re.I)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """Fields from ``extra=``; a field named like a secret is masked (a safety net: the config
    already keeps secrets in ``SecretStr``, so this should never have anything to do)."""
    return {
        k: "***" if _SECRET.search(k) else v
        for k, v in record.__dict__.items()
        if k not in _STANDARD
    }


def _utc(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """E.g. ``2026-11-23T10:00:00.123Z WARNING agent.scheduler device down device=press-1``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_utc(record), record.levelname, record.name, record.getMessage()]
        for key, value in _extras(record).items():
            text = str(value)
            if not text or any(c.isspace() or c in '"=' for c in text):
                text = json.dumps(text, ensure_ascii=False)
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``{"ts": ..., "level": ..., "logger": ..., "msg": ..., ...}``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _utc(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once, at start. Third-party chatter (pymodbus, asyncua) is kept
    at WARNING so a failing device does not flood the journal with library tracebacks."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pymodbus", "asyncua", "paho"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # pymodbus logs every failed request at ERROR, python-snap7 every connect and failed
    # exchange; the agent reports those itself, once per state.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("snap7").setLevel(logging.CRITICAL)
