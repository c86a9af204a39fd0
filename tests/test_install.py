"""systemd/install.sh into a throwaway root, from a wheelhouse (offline), and the unit it installs
checked by systemd's own tools (``systemd-analyze verify`` and ``security``).

The host is not touched: ``--root`` puts every file under a temporary directory, users and groups
are made only in that directory's own ``etc/passwd`` and ``etc/group`` (``useradd --root``), and
systemctl only enables the unit inside the root (``systemctl --root``). Who may read what is then
proven by running the installed program under those users' ids (``setpriv``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import free_port

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "systemd" / "install.sh"
UNIT = REPO / "systemd" / "edge-agent.service"
#: The page that documents installing, and its Simplified Chinese twin.
INSTALLING = REPO / "docs" / "operations.md"
ZH = REPO / "docs" / "zh-CN" / "operations.md"
#: What `systemd-analyze security` may rate the unit at most (0 = locked down, 10 = exposed).
MAX_EXPOSURE = 2.5


def run(*args: str | Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """What `make wheelhouse` builds: wheels of the package and every dependency."""
    wh = tmp_path_factory.mktemp("wheelhouse")
    done = run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", wh, REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    yield wh


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


#: The documentation files the installer puts beside the program, with docs/ as a whole.
SHIPPED_DOCS = ("README.md", "README.zh-CN.md", "CHANGELOG.md")


def assert_documentation_shipped(share: Path) -> None:
    """The short READMEs send the reader to docs/ and CHANGELOG.md: on a gateway without the
    repository, every page they link to must be there too, at the same relative path."""
    for name in SHIPPED_DOCS:
        assert (share / name).read_text(encoding="utf-8") == (REPO / name).read_text(
            encoding="utf-8"
        ), name
    pages = sorted(p.relative_to(REPO) for p in (REPO / "docs").rglob("*.md"))
    assert pages
    missing = [str(p) for p in pages if not (share / p).is_file()]
    assert not missing, missing
    for readme in SHIPPED_DOCS[:2]:
        text = (share / readme).read_text(encoding="utf-8")
        targets = re.findall(r"\]\(((?:docs/|CHANGELOG)[^)#\s]*)", text)
        assert targets, f"{readme} links to no page of docs/"
        unreachable = [t for t in targets if not (share / t).is_file()]
        assert not unreachable, f"{readme}: {unreachable}"


@pytest.mark.slow
def test_install_upgrade_uninstall_in_a_throwaway_root(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "root"
    # No network: pip may only look in the wheelhouse.
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/"}
    args: list[str | Path] = [
        "sh",
        INSTALL,
        "--root",
        root,
        "--wheelhouse",
        wheelhouse,
        "--no-user",
    ]
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
    share = root / "opt/edge-agent/share/edge-agent"
    assert_documentation_shipped(share)
    assert (share / "grafana").is_dir()
    assert (share / "profiles" / "eastron-sdm630.yaml").is_file()  # profile: NAME finds it
    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_text() == UNIT.read_text()
    if shutil.which("systemctl"):
        wants = root / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
        assert os.readlink(wants) == "/etc/systemd/system/edge-agent.service"
    # The installed program works and accepts the example it installed.
    checked = run(exe, "validate", config)
    assert checked.returncode == 0, checked.stderr
    # ... and finds a bundled profile by name (share/edge-agent/profiles beside the program).
    meter = tmp_path / "meter.yaml"
    meter.write_text(
        "agent: {id: t}\ndevices:\n  - {name: m, driver: modbus, profile: eastron-sdm630, "
        "connection: {host: 127.0.0.1}}\n"
    )
    found = run(exe, "validate", meter)
    assert found.returncode == 0 and "45 tags" in found.stdout, found.stdout + found.stderr

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


def verifiable_unit(tmp_path: Path) -> Path:
    """The unit in a directory of its own, the commands it runs pointed at stand-ins (verify
    needs them to exist). Drop-ins go into ``<unit>.d/`` beside it, where verify reads them."""
    exe = tmp_path / "opt/edge-agent/bin/edge-agent"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = tmp_path / "units/edge-agent.service"
    unit.parent.mkdir()
    unit.write_text(UNIT.read_text().replace("/opt/edge-agent", str(tmp_path / "opt/edge-agent")))
    return unit


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    done = run(analyze(), "verify", verifiable_unit(tmp_path))
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


# -- serial ports: the unit, the docs' table of device groups and their drop-in example agree ----


def install_section(lang: str) -> str:
    """The "Installing on a gateway" part of the operations page as the integrator reads it, in
    either language."""
    page, heading = (
        (INSTALLING, "Installing on a gateway") if lang == "en" else (ZH, "在网关上安装")
    )
    text = page.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n") + 1
    return text[start : text.index("\n## ", start)]


def unit_device_groups(unit: str) -> list[str]:
    return re.findall(r"^DeviceAllow=char-(\S+) rw$", unit, re.M)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_unit_allows_exactly_the_serial_groups_the_readme_lists(lang: str) -> None:
    listed = re.findall(r"^\| `char-([^`]+)` \|", install_section(lang), re.M)
    unit = UNIT.read_text()
    assert unit_device_groups(unit) == listed
    # Nothing beside them: every DeviceAllow= is one of those lines, under a closed policy.
    assert len(re.findall(r"^DeviceAllow=", unit, re.M)) == len(listed)
    assert re.search(r"^DevicePolicy=closed$", unit, re.M)
    # Plain names as /proc/devices prints them: a glob would let in more than the table says.
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", g) for g in listed), listed
    # RS-485 HATs (SC16IS7xx, ttySC*) were the ports the first unit shut out.
    assert {"ttyS", "ttyAMA", "ttyUSB", "ttyACM", "ttySC", "ttymxc"} <= set(listed)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_readme_drop_in_for_another_serial_group_is_a_valid_unit_fragment(
    lang: str, tmp_path: Path
) -> None:
    section = install_section(lang)
    # How the README finds the group: the node's major number, then its line in /proc/devices.
    found = re.search(
        r"^\$ ls -l /dev/(\S+)\n\S+ \d+ \S+ \S+ (\d+), \d+ .*\n"
        r"\$ grep '\^ \*(\d+) ' /proc/devices\n(\d+) (\S+)\n",
        section,
        re.M,
    )
    assert found, "the console example: ls -l NODE, then grep MAJOR /proc/devices"
    node, major, grepped, line_major, group = found.groups()
    assert major == grepped == line_major and node.startswith(group)
    block = re.search(r"```ini\n(.*?)```", section, re.S)
    assert block is not None
    fragment = block.group(1)
    assert fragment == f"[Service]\nDeviceAllow=char-{group} rw\n"
    assert group not in unit_device_groups(UNIT.read_text()), "an example of one to add"

    unit = verifiable_unit(tmp_path)
    drop_in = unit.parent / "edge-agent.service.d" / "override.conf"
    drop_in.parent.mkdir()
    drop_in.write_text(fragment)
    done = run(analyze(), "verify", unit)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    # verify does read the drop-in: the same fragment with a typo is reported.
    drop_in.write_text(fragment.replace("char-", "chr-"))
    spoiled = run(analyze(), "verify", unit)
    assert "override.conf:2" in spoiled.stderr, spoiled.stderr


# -- who may read what after installing: the operator, the service, everybody else --------------


def image(root: Path) -> None:
    """The user database of a fresh OS image: root, dialout, and two people: alice, who will run
    the install with sudo, and bob, who never joins."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    people = {"alice": 54330, "bob": 54331}
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        + "".join(f"{n}:x:{i}:{i}::/home/{n}:/bin/sh\n" for n, i in people.items())
    )
    (etc / "group").write_text(
        "root:x:0:\ndialout:x:20:\n" + "".join(f"{n}:x:{i}:\n" for n, i in people.items())
    )
    (etc / "shadow").write_text("".join(f"{n}:*:19000:0:99999:7:::\n" for n in ["root", *people]))
    (etc / "gshadow").write_text("".join(f"{n}:!::\n" for n in ["root", "dialout", *people]))
    (etc / "shadow").chmod(0o640)
    (etc / "gshadow").chmod(0o640)


def users(root: Path) -> dict[str, tuple[int, int]]:
    rows = (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())
    return {r[0]: (int(r[2]), int(r[3])) for r in rows}


def groups(root: Path) -> dict[str, tuple[int, list[str]]]:
    rows = (line.split(":") for line in (root / "etc/group").read_text().splitlines())
    return {r[0]: (int(r[2]), [m for m in r[3].split(",") if m]) for r in rows}


def login(root: Path, name: str) -> list[str]:
    """``setpriv`` to what a new login of ``name`` gets in the image: its uid, its primary group
    and the groups that list it as a member."""
    uid, gid = users(root)[name]
    extra = [str(g) for g, members in groups(root).values() if name in members]
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        f"--groups={','.join(extra)}" if extra else "--clear-groups",
        "--",
    ]


#: A login's environment: nothing of root's.
LOGIN_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}


def as_user(
    root: Path, name: str, *cmd: str | Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return run(*login(root, name), *cmd, env=LOGIN_ENV, cwd=cwd)


def gateway_python() -> str:
    """The Python the venv is built from, one every user may run, as on a gateway (Debian's
    /usr/bin/python3). The test's own interpreter may live under root's home (pyenv), which the
    users under test could not enter."""
    base = str(getattr(sys, "_base_executable", sys.executable))
    for candidate in ("/usr/bin/python3", base):
        path = Path(candidate).resolve()
        reachable = path.exists() and all(
            p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents]
        )
        check = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"
        if reachable and run(candidate, "-c", check).returncode == 0:
            return candidate
    raise AssertionError(
        "no Python 3.11+ with venv that other users may run: apt-get install python3-venv"
    )


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A temporary directory other users can enter (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="edge-agent-image-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


#: The line `edge-agent status` prints for an agent that is ready.
READY_LINE = re.compile(r"^ready +yes$", re.M)


@pytest.mark.slow
def test_image_install_lets_the_operator_validate_and_ask_status_never_read_secrets(
    open_dir: Path, wheelhouse: Path
) -> None:
    root = open_dir / "root"
    image(root)
    env = {
        **os.environ,
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": "http://127.0.0.1:9/",
        "PYTHON": gateway_python(),
        "SUDO_USER": "alice",
    }
    args: list[str | Path] = ["sh", INSTALL, "--root", root, "--wheelhouse", wheelhouse]
    first = run(*args, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created system user edge-agent" in first.stdout
    assert "added alice to group edge-agent" in first.stdout
    assert "alice: log out and in again" in first.stdout

    # The image's users, groups and ids (not the host's).
    grp = groups(root)
    assert grp["edge-agent"][1] == ["alice"] and grp["dialout"][1] == ["edge-agent"]
    uid, gid = users(root)["edge-agent"]
    assert gid == grp["edge-agent"][0]
    etc = root / "etc/edge-agent"
    config, secrets, state = etc / "config.yaml", etc / "env", root / "var/lib/edge-agent"
    owners = {p: (p.stat().st_uid, p.stat().st_gid, mode(p)) for p in (etc, config, state)}
    assert owners == {etc: (0, gid, 0o750), config: (0, gid, 0o640), state: (uid, gid, 0o750)}
    assert (secrets.stat().st_uid, mode(secrets)) == (0, 0o600)

    exe = root / "opt/edge-agent/bin/edge-agent"
    python = root / "opt/edge-agent/bin/python"
    # README, after the new login: `edge-agent validate /etc/edge-agent/config.yaml`.
    checked = as_user(root, "alice", exe, "validate", config)
    assert checked.returncode == 0 and ": ok (" in checked.stdout, checked.stderr
    # README, before it: `sudo -u edge-agent edge-agent validate ...`, from the operator's home,
    # which the service user may not enter.
    home = open_dir / "home-alice"
    home.mkdir(mode=0o700)
    early = as_user(root, "edge-agent", exe, "validate", config, cwd=home)
    assert early.returncode == 0, early.stderr
    # Someone outside the group reads no config: one line saying so, exit 2.
    denied = as_user(root, "bob", exe, "validate", config)
    assert denied.returncode == 2
    assert denied.stderr == f"edge-agent: cannot read {config}: Permission denied\n"
    # The secrets are root's alone: not the operator's, not the service's (systemd reads them).
    for name in ("alice", "edge-agent", "bob"):
        peek = as_user(root, name, "cat", secrets)
        assert peek.returncode != 0 and "Permission denied" in peek.stderr, name

    # The integrator's edit: the listener on a free port, the buffer in the image's state dir,
    # a broker and a device that do not answer (the status is the agent's own).
    listen = free_port()
    text = config.read_text()
    for old, new in (
        ("127.0.0.1:9108", f"127.0.0.1:{listen}"),
        ("/var/lib/edge-agent", str(state)),
        ("broker.example.com", "127.0.0.1"),
        ("port: 1883", f"port: {free_port()}"),
        ("192.168.1.20", "127.0.0.1"),
    ):
        assert old in text
        text = text.replace(old, new)
    config.write_text(text)

    # The agent as the service runs it: the service user, telling a "service manager" (our
    # socket, as systemd's NOTIFY_SOCKET) when it is ready.
    manager_path = open_dir / "notify"
    log = open_dir / "agent.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager, log.open("wb") as out:
        manager.bind(str(manager_path))
        manager_path.chmod(0o666)
        manager.settimeout(60)
        agent = subprocess.Popen(
            [*login(root, "edge-agent"), str(exe), "run", "--config", str(config)],
            env={**LOGIN_ENV, "NOTIFY_SOCKET": str(manager_path)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            try:
                while b"READY=1" not in manager.recv(4096):
                    pass
            except TimeoutError:
                raise AssertionError(log.read_text()) from None
            # README: `edge-agent status`, the operator finding the listener in the config.
            shown = as_user(root, "alice", exe, "status", "-c", config)
            assert shown.returncode == 0, shown.stdout + shown.stderr
            assert READY_LINE.search(shown.stdout) and "line1-gw" in shown.stdout
            # Without -c it reads /etc/edge-agent/config.yaml: here, the image's.
            default = (
                "import sys; from pathlib import Path; import agent.app.status_cli as s; "
                "s.DEFAULT_CONFIG = Path(sys.argv[1]); "
                "sys.exit(s.status_command(None, None, False))"
            )
            shown = as_user(root, "alice", python, "-c", default, config)
            assert shown.returncode == 0 and READY_LINE.search(shown.stdout), shown.stderr
            # Outside the group: the reason, not a traceback nor a guess at the listener.
            refused = as_user(root, "bob", python, "-c", default, config)
            assert refused.returncode == 2
            assert refused.stderr == f"edge-agent: cannot read {config}: Permission denied\n"
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
    assert agent.returncode == 0, log.read_text()

    # Again as another sudoer who asks not to join: nobody is added, alice stays.
    again = run(*args, "--no-operator", env={**env, "SUDO_USER": "bob"})
    assert again.returncode == 0, again.stdout + again.stderr
    assert "added" not in again.stdout and groups(root)["edge-agent"][1] == ["alice"]

    # --purge takes the user and its group out of the image; the people stay.
    purged = run("sh", INSTALL, "--root", root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert "edge-agent" not in users(root) and "edge-agent" not in groups(root)
    assert {"alice", "bob"} <= set(users(root)) and groups(root)["dialout"][1] == []
