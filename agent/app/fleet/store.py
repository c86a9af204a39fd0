"""Pushed versions on disk, beside the buffer: ``<data_dir>/fleet/``.

Each version's text is a file of its own (``v0000000007.yaml``) and ``state.json`` says which
version is in force, which was the highest tried (replays are refused against it), whether an
apply was under way (a SIGKILL or a power cut in the middle of one is seen at the next boot) and
a short history. Every write is atomic (a temporary file, fsync, rename, fsync of the folder):
after a power cut either the old or the new state is there, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: History entries kept in ``state.json`` (the versions' texts follow ``fleet.keep``).
HISTORY = 100


@dataclass
class Entry:
    """One version as the store knows it."""

    version: int
    hash: str
    ts: float = field(default_factory=time.time)  # applied at (current), started at (pending)
    id: str = ""  # the push's, so that a result after a restart still answers it


@dataclass
class StoreState:
    current: Entry | None = None
    highest: int = 0
    pending: Entry | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, version: int, hash_: str, result: str, reason: str | None = None) -> None:
        item: dict[str, Any] = {"version": version, "hash": hash_, "result": result}
        item["ts"] = time.time()
        if reason:
            item["reason"] = reason
        self.history = [*self.history, item][-HISTORY:]


class FleetStore:
    """The folder of one gateway's pushed versions."""

    def __init__(self, data_dir: Path, keep: int = 10) -> None:
        self.dir = data_dir / "fleet"
        self.keep = keep

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def version_file(self, version: int) -> Path:
        return self.dir / f"v{version:010d}.yaml"

    def load(self) -> StoreState:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return StoreState()
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot read {self.state_file}: {exc}") from None
        return StoreState(
            current=Entry(**raw["current"]) if raw.get("current") else None,
            highest=int(raw.get("highest", 0)),
            pending=Entry(**raw["pending"]) if raw.get("pending") else None,
            history=list(raw.get("history", [])),
        )

    def save(self, state: StoreState) -> None:
        doc = {
            "current": asdict(state.current) if state.current else None,
            "highest": state.highest,
            "pending": asdict(state.pending) if state.pending else None,
            "history": state.history,
        }
        self._write(self.state_file, json.dumps(doc, indent=1).encode())

    def save_version(self, version: int, text: str) -> None:
        self._write(self.version_file(version), text.encode())

    def read_version(self, version: int) -> str:
        return self.version_file(version).read_text()

    def versions(self) -> list[int]:
        """The versions whose text is on disk, oldest first."""
        found = []
        for path in self.dir.glob("v*.yaml"):
            with contextlib.suppress(ValueError):
                found.append(int(path.stem[1:]))
        return sorted(found)

    def prune(self, protect: set[int]) -> None:
        """Keep the newest ``keep`` versions' texts, and always those in ``protect``."""
        kept = self.versions()
        for version in kept[: max(0, len(kept) - self.keep)]:
            if version not in protect:
                self.version_file(version).unlink(missing_ok=True)

    def _write(self, path: Path, data: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
