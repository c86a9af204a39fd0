"""The host application's side of Sparkplug B, independent of the agent's protobuf code.

Payloads are decoded and encoded by ``protoc`` (Debian's protobuf-compiler, a C++ parser)
against the schema written from the specification, so a mistake in our Python encoder cannot
hide behind the same mistake in a Python decoder.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PROTO = (
    Path(__file__).resolve().parents[2]
    / "agent"
    / "north"
    / "formats"
    / "sparkplug"
    / "sparkplug_b.proto"
)
MESSAGE = "org.eclipse.tahu.protobuf.Payload"


def protoc() -> str:
    found = shutil.which("protoc")
    if found is None:
        pytest.skip("protoc is not installed (apt-get install protobuf-compiler; make system-deps)")
    return found


def decode_text(payload: bytes) -> str:
    """protoc's text rendering of a payload; fails on anything that is not a valid Payload."""
    done = subprocess.run(
        [protoc(), f"--proto_path={PROTO.parent}", f"--decode={MESSAGE}", PROTO.name],
        input=payload,
        capture_output=True,
        check=False,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def encode(text: str) -> bytes:
    """A payload from protobuf text format, encoded by protoc."""
    done = subprocess.run(
        [protoc(), f"--proto_path={PROTO.parent}", f"--encode={MESSAGE}", PROTO.name],
        input=text.encode(),
        capture_output=True,
        check=False,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def _scalar(raw: str) -> Any:
    if raw.startswith('"'):
        return ast.literal_eval(raw)
    if raw in ("true", "false"):
        return raw == "true"
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw  # an enum name


def parse_text(text: str) -> dict[str, list[Any]]:
    """Protobuf text format to nested dicts; every field is a list (repeated or not)."""
    root: dict[str, list[Any]] = {}
    stack = [root]
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.endswith("{"):
            child: dict[str, list[Any]] = {}
            stack[-1].setdefault(line[:-1].strip(), []).append(child)
            stack.append(child)
        elif line == "}":
            stack.pop()
        else:
            key, _, raw = line.partition(": ")
            stack[-1].setdefault(key, []).append(_scalar(raw))
    return root


class Decoded:
    """One Sparkplug payload as protoc saw it."""

    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic = topic
        self.kind = topic.split("/")[2]
        self.device = topic.split("/")[4] if topic.count("/") >= 4 else None
        self.doc = parse_text(decode_text(payload))

    @property
    def seq(self) -> int | None:
        return self.doc["seq"][0] if "seq" in self.doc else None

    @property
    def timestamp(self) -> int:
        return int(self.doc["timestamp"][0])

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """Each metric with its fields flattened to single values."""
        out = []
        for m in self.doc.get("metrics", []):
            flat = {k: v[0] if len(v) == 1 else v for k, v in m.items()}
            out.append(flat)
        return out

    def metric(self, name: str) -> dict[str, Any]:
        return next(m for m in self.metrics if m.get("name") == name)
