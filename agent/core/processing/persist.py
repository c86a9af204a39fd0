"""Processing state kept across restarts: one small JSON file per device in
``<data_dir>/processing/``, written whole to a temporary file, fsynced and renamed over the old
one, so a power cut leaves either the previous or the new file, never half of one."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class StateFiles:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "processing"

    def path(self, device: str) -> Path:
        return self.dir / f"{device}.json"

    def load(self, device: str) -> dict[str, Any]:
        """The saved state, or an empty one when there is none or it is unreadable (logged)."""
        path = self.path(device)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning(
                "processing state unreadable, starting afresh",
                extra={"device": device, "path": str(path), "error": str(exc)},
            )
            return {}
        return doc if isinstance(doc, dict) else {}

    def save(self, device: str, doc: dict[str, Any]) -> None:
        """Blocking (file I/O and fsync): call from a worker thread."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(device)
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
