"""The Makefile's install steps on a machine that lacks the tools: they must ask apt to install.

This machine has mosquitto, chromium and protoc already, so a broken check (an ``exit 1`` in a
``{ ...; }`` group ends the recipe's shell before the install branch) passed here unseen while a
fresh machine's ``make test`` stopped at ``test-deps``. Each test runs the real Makefile with a
PATH that hides the tools and an ``apt-get`` that only records what it was asked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
HIDDEN = {"apt-get", "sudo", "chromium", "chromium-browser", "protoc", "mosquitto"}


def _shim(tmp_path: Path, hide: set[str]) -> tuple[Path, Path]:
    """A bin directory linking every system command but ``hide``, with a recording apt-get
    and a sudo that runs its arguments (the Makefile uses sudo when not root)."""
    shim = tmp_path / "bin"
    shim.mkdir()
    log = tmp_path / "apt.log"
    for d in SYSTEM_DIRS:
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target = shim / name
            if name in hide or target.exists() or target.is_symlink():
                continue
            target.symlink_to(os.path.join(d, name))
    (shim / "apt-get").write_text(f'#!/bin/sh\necho "apt-get $*" >> "{log}"\nexit 0\n')
    (shim / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    for name in ("apt-get", "sudo"):
        (shim / name).chmod(0o755)
    return shim, log


def _make(shim: Path, target: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(shim), "HOME": os.environ.get("HOME", "/root"), "LANG": "C"}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), target, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_test_deps_installs_the_missing_test_tools(tmp_path: Path) -> None:
    shim, log = _shim(tmp_path, HIDDEN)
    done = _make(shim, "test-deps", "MOSQUITTO_BIN=/nonexistent/mosquitto")
    assert done.returncode == 0, done.stdout + done.stderr
    asked = log.read_text()
    installs = [line for line in asked.splitlines() if " install " in line]
    assert any("mosquitto" in line for line in installs), asked
    assert any("chromium" in line and "protobuf-compiler" in line for line in installs), asked
    assert "apt-get update" in asked


def test_test_deps_with_everything_present_installs_nothing(tmp_path: Path) -> None:
    """The other branch: where the tools are there, apt is not asked (no needless sudo)."""
    present = all(shutil.which(t) for t in ("chromium", "protoc", "mosquitto", "openssl"))
    if not present or not Path("/usr/share/fonts/opentype/noto").is_dir():
        pytest.skip("the test tools are not installed here (make test-deps installs them)")
    shim, log = _shim(tmp_path, {"apt-get", "sudo"})
    done = _make(shim, "test-deps")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not log.exists(), log.read_text()
