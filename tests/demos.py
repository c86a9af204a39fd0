"""What the ``make demo*`` tests share: validating a demo's config and running a demo runner on a
copy of its config whose data folder is the test's own (the runners start simulator, broker and
agent as processes and print what arrives; a test reads that output)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def validate(config: str) -> subprocess.CompletedProcess[str]:
    """``agent validate CONFIG`` (a path from the repository's root)."""
    return subprocess.run(
        [sys.executable, "-m", "agent", "validate", config],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def run_demo(
    module: str, config: str, data: str, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS --config COPY``: COPY is ``config`` with its data folder ``data``
    replaced by ``tmp_path / "data"``, so the demo leaves nothing in the repository."""
    copy = tmp_path / Path(config).name
    copy.write_text((ROOT / config).read_text().replace(data, str(tmp_path / "data")))
    return subprocess.run(
        [sys.executable, "-m", module, *args, "--config", str(copy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
