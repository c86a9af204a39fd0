"""systemd/install.sh into a throwaway root, from a wheelhouse (offline), and the unit it installs
checked by systemd's own tools (``systemd-analyze verify`` and ``security``).

The host is not touched: ``--root`` puts every file under a temporary directory, ``--no-user``
skips useradd, and systemctl only enables the unit inside the root (``systemctl --root``).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "systemd" / "install.sh"
UNIT = REPO / "systemd" / "edge-agent.service"
#: What `systemd-analyze security` may rate the unit at most (0 = locked down, 10 = exposed).
MAX_EXPOSURE = 2.5


def run(*args: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """What `make wheelhouse` builds: wheels of the package and every dependency."""
    wh = tmp_path_factory.mktemp("wheelhouse")
    done = run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", wh, REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    yield wh


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
def test_install_upgrade_uninstall_in_a_throwaway_root(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "root"
    # No network: pip may only look in the wheelhouse.
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/"}
    args = ["sh", INSTALL, "--root", root, "--wheelhouse", wheelhouse, "--no-user"]
    first = run(*args, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "installing from" in first.stdout and "(offline)" in first.stdout

    exe = root / "opt/edge-agent/bin/edge-agent"
    etc = root / "etc/edge-agent"
    config = etc / "config.yaml"
    assert mode(etc) == 0o750 and mode(config) == 0o640 and mode(etc / "env") == 0o600
    assert mode(root / "var/lib/edge-agent") == 0o750
    assert (etc / "config.yaml.example").read_text() == config.read_text()
    assert os.readlink(root / "usr/local/bin/edge-agent") == "/opt/edge-agent/bin/edge-agent"
    assert (root / "opt/edge-agent/share/edge-agent/README.md").exists()
    assert (root / "opt/edge-agent/share/edge-agent/grafana").is_dir()
    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_text() == UNIT.read_text()
    if shutil.which("systemctl"):
        wants = root / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
        assert os.readlink(wants) == "/etc/systemd/system/edge-agent.service"
    # The installed program works and accepts the example it installed.
    checked = run(exe, "validate", config)
    assert checked.returncode == 0, checked.stderr

    # Again (an upgrade): the integrator's config is kept, nothing fails.
    config.write_text(config.read_text().replace("line1-gw", "hall2-gw"))
    again = run(*args, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "kept /etc/edge-agent/config.yaml" in again.stdout
    assert "hall2-gw" in config.read_text()
    assert "line1-gw" in (etc / "config.yaml.example").read_text()

    # Another prefix rewrites the unit's paths.
    other = tmp_path / "root2"
    done = run(*args[:3], other, "--prefix", "/srv/ea", *args[4:], env=env)
    assert done.returncode == 0, done.stderr
    text = (other / "etc/systemd/system/edge-agent.service").read_text()
    assert "/srv/ea/bin/edge-agent run" in text and "/opt/edge-agent" not in text

    # Uninstall keeps config and buffer; --purge removes them; both can run twice.
    for _ in range(2):
        gone = run("sh", INSTALL, "--root", root, "--uninstall", "--no-user")
        assert gone.returncode == 0, gone.stderr
    assert not (root / "opt/edge-agent").exists() and not unit.exists()
    assert not (root / "usr/local/bin/edge-agent").exists()
    assert config.exists() and (root / "var/lib/edge-agent").is_dir()
    purged = run("sh", INSTALL, "--root", root, "--uninstall", "--purge", "--no-user")
    assert purged.returncode == 0 and not etc.exists()
    assert not (root / "var/lib/edge-agent").exists()


def test_install_refuses_unknown_options() -> None:
    done = run("sh", INSTALL, "--frobnicate")
    assert done.returncode == 2 and "unknown option --frobnicate" in done.stderr


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        raise RuntimeError("systemd-analyze is missing: run `make system-deps` (apt: systemd)")
    return found


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verify needs the commands the unit runs to exist: point them at stand-ins."""
    exe = tmp_path / "opt/edge-agent/bin/edge-agent"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/edge-agent", str(tmp_path / "opt/edge-agent")))
    done = run(analyze(), "verify", unit)
    # verify exits 0 on unknown keys too: any message at all is a finding.
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_unit_security_exposure(tmp_path: Path) -> None:
    version = run(analyze(), "--version").stdout.split()[1]
    if int(version) < 250:  # --offline came with systemd 250
        pytest.fail(f"systemd {version} cannot review unit files offline: needs 250 or newer")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/edge-agent.service")
    done = run(
        analyze(),
        "security",
        "--offline=true",
        f"--root={root}",
        f"--threshold={int(MAX_EXPOSURE * 10)}",
        "/etc/systemd/system/edge-agent.service",
    )
    found = re.search(r"Overall exposure level for edge-agent\.service: ([\d.]+)", done.stdout)
    assert found, done.stdout[-2000:] + done.stderr
    score = float(found.group(1))
    print(f"systemd-analyze security: exposure {score}")
    assert score <= MAX_EXPOSURE, done.stdout[-3000:]
    # The list, one by one (a ✓ line each).
    for setting in (
        "NoNewPrivileges=",
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "RestrictAddressFamilies=~AF_PACKET",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
    ):
        line = next((x for x in done.stdout.splitlines() if setting in x), "")
        assert line.startswith("✓"), (setting, line)
