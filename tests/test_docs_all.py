"""Every page an integrator reads (README.md, README.zh-CN.md, docs/**/*.md) holds up as a whole:

(a) every YAML example is a config the loader accepts, judged by how it is built (a whole file,
    a device list, a tag list, a device's keys: tests/doc_examples.py says how each is completed);
    a block that is deliberately not a config says so before its fence, with the reason;
(b) every ``edge-agent`` command shown in a shell or console block names a real command with real
    options (parsed by the CLI's own parser, not run), ``edge-agent discover DRIVER`` with the
    driver's options, and every ``make X`` names a target of the Makefile;
(c) every relative link points to a file that exists, and to a heading of it where it names one.

The pages are found anew on every run, so a page added tomorrow is checked without a change here.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import urllib.parse
from pathlib import Path

import pytest

from agent.app.cli import _parser
from agent.south.registry import load_drivers
from tests.doc_examples import (
    MINIMAL,
    ROOT,
    Block,
    code_blocks,
    config_candidates,
    load_example,
    pages,
    without_code,
)
from tests.test_reference_docs import DISCOVER, SCAN

DRIVERS = load_drivers()
PAGES = pages()
YAML_BLOCKS = [b for page in PAGES for b in code_blocks(page, ("yaml", "yml"))]


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# -- (a) YAML examples ----------------------------------------------------------------------------


def test_every_driver_can_carry_a_fragment() -> None:
    """Fragments (tag lists, a device's keys) are completed with a minimal device per driver."""
    missing = sorted(set(DRIVERS) - set(MINIMAL))
    assert not missing, f"add a minimal device for {missing} to MINIMAL in tests/doc_examples.py"


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=str)
def test_yaml_example_is_a_valid_config(block: Block, tmp_path: Path) -> None:
    reason = block.not_config
    if reason is not None:
        assert reason, f"{block}: say why it is not a config: <!-- not-config: the reason -->"
        # The marker must be true: a block that loads as a config is checked as one.
        with pytest.raises(AssertionError):
            load_example(block.text, DRIVERS, tmp_path)
        return
    try:
        load_example(block.text, DRIVERS, tmp_path)
    except AssertionError as exc:
        pytest.fail(f"{block}: the example does not validate\n{exc}")


def test_the_classifier_completes_each_kind_of_fragment(tmp_path: Path) -> None:
    """The kinds of example the module docstring names, each loaded for what it is."""
    whole = "mqtt:\n  host: broker\ndevices: []\n"
    assert load_example(whole, DRIVERS, tmp_path).mqtt.host == "broker"
    devices = "  - name: m1\n    driver: modbus\n    connection: {host: h}\n"
    assert [d.name for d in load_example(devices, DRIVERS, tmp_path).devices] == ["m1"]
    tags = "      - {name: speed, node: 'ns=2;s=Speed'}\n"
    config = load_example(tags, DRIVERS, tmp_path)
    assert config.devices[0].driver == "opcua" and config.devices[0].tags[0].name == "speed"
    keys = "    state:\n      rules:\n        - {state: running, when: 'speed > 5'}\n"
    device = load_example(keys, DRIVERS, tmp_path).devices[0]
    assert device.state is not None and [t.name for t in device.tags] == ["speed"]
    # A wrong example stays wrong, and a shape that is no config at all is said to be one.
    with pytest.raises(AssertionError, match="poll_interval"):
        load_example(devices + "    poll_interval: soon\n", DRIVERS, tmp_path)
    assert config_candidates("groups:\n  - name: edge\n    rules: []\n", DRIVERS) == []
    with pytest.raises(AssertionError, match="not-config"):
        load_example("- just\n- strings\n", DRIVERS, tmp_path)


# -- (b) commands ---------------------------------------------------------------------------------

#: Blocks whose lines are all commands, and blocks where commands are the lines after a ``$``.
SCRIPT_LANGS = ("sh", "bash", "shell", "zsh")
SESSION_LANGS = ("console", "shell-session", "text", "")
_OPERATORS = {"|", "||", "&&", ";", "&", "|&", "(", ")"}
_REDIRECTS = re.compile(r"^\d*[<>]+&?$")
_PREFIXES = {"sudo", "env", "exec", "time", "nohup", "command"}
_SUDO_WITH_VALUE = {"-u", "-g", "-C", "-D", "-p", "-r", "-t", "-U"}


def command_lines(block: Block) -> list[str]:
    """The command lines of a block: every line of a script (heredoc bodies and comments left
    out), the ``$ `` lines of a console session; continuation lines joined."""
    raw = block.text.splitlines()
    if block.lang not in SCRIPT_LANGS:
        found, i = [], 0
        while i < len(raw):
            line = raw[i]
            if line.startswith("$ "):
                command = line[2:]
                while command.endswith("\\") and i + 1 < len(raw):
                    i += 1
                    command = command[:-1] + " " + raw[i]
                found.append(command)
            i += 1
        return found
    found, pending, heredoc = [], "", None
    for line in raw:
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        command = pending + line
        pending = ""
        match = re.search(r"<<-?\s*['\"]?(\w+)", command)
        heredoc = match.group(1) if match else None
        if command.strip() and not command.lstrip().startswith("#"):
            found.append(command)
    return found


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line: split at pipes and lists, redirections dropped,
    ``sudo``/``env`` and variable assignments in front removed."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes in a shown line: not a command to check
        return []
    commands: list[list[str]] = [[]]
    skip = False
    for token in tokens:
        if skip:
            skip = False
        elif token in _OPERATORS:
            commands.append([])
        elif _REDIRECTS.match(token):
            skip = True
        else:
            commands[-1].append(token)
    return [_strip_prefixes(c) for c in commands if c]


def _strip_prefixes(words: list[str]) -> list[str]:
    """The command after ``sudo -u edge-agent``, ``env A=1``, ``A=1`` and the like."""
    i, after_prefix = 0, False
    while i < len(words):
        word = words[i]
        if word in _PREFIXES or re.match(r"^[A-Za-z_]\w*=", word):
            i, after_prefix = i + 1, True
        elif word.startswith("-") and after_prefix:  # an option of sudo or env
            i += 2 if word in _SUDO_WITH_VALUE else 1
        else:
            break
    return words[i:]


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    heads = re.findall(r"^([A-Za-z0-9_.%/-]+(?:[ \t]+[A-Za-z0-9_.%/-]+)*)[ \t]*:(?!=)", text, re.M)
    return {t for head in heads for t in head.split()} - {".PHONY"}


def check_edge_agent(args: list[str]) -> str | None:
    """Why the CLI's parser refuses these arguments, or None (``--help`` is fine)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            ns = _parser().parse_args(args)
            if ns.command == "discover":
                if ns.driver not in DISCOVER:
                    return f"driver {ns.driver!r} cannot discover (drivers that can: {DISCOVER})"
                DISCOVER[ns.driver]().parse_args(ns.driver_args)
            if ns.command == "scan":
                if ns.driver not in SCAN:
                    return f"driver {ns.driver!r} cannot scan (drivers that can: {SCAN})"
                SCAN[ns.driver]().parse_args(ns.driver_args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1]
    return None


def check_make(args: list[str], targets: set[str]) -> str | None:
    names, skip = [], False
    for word in args:
        if skip:
            skip = False
        elif word in ("-C", "-f", "-j", "-o", "-W", "-I"):
            if word in ("-C", "-f"):
                return None  # another directory's or another file's targets
            skip = True
        elif not word.startswith("-") and "=" not in word:
            names.append(word)
    unknown = [n for n in names if n not in targets]
    return f"no Makefile target {unknown}" if unknown else None


def shown_commands(page: Path) -> list[tuple[Block, list[str]]]:
    """Every ``edge-agent`` and ``make`` command the page's shell and console blocks show."""
    found = []
    for block in code_blocks(page, SCRIPT_LANGS + SESSION_LANGS):
        for line in command_lines(block):
            for words in simple_commands(line):
                if Path(words[0]).name == "edge-agent" or words[0] == "make":
                    found.append((block, words))
    return found


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_commands_shown_are_real(page: Path) -> None:
    targets = make_targets()
    problems = []
    for block, words in shown_commands(page):
        make = words[0] == "make"
        why = check_make(words[1:], targets) if make else check_edge_agent(words[1:])
        if why is not None:
            problems.append(f"{block}: `{shlex.join(words)}`: {why}")
    assert not problems, "\n".join(problems)


def test_commands_are_found_and_a_wrong_one_is_refused() -> None:
    """The check above sees the commands the pages show, and would refuse a wrong one."""
    shown = [words for page in PAGES for _, words in shown_commands(page)]
    assert any(w[:2] == ["edge-agent", "validate"] for w in shown)
    assert any(w[0] == "make" for w in shown)
    assert check_edge_agent(["status", "--no-such-option"]) is not None
    assert check_edge_agent(["discover", "opcua", "opc.tcp://h:4840", "--depht", "2"]) is not None
    assert check_edge_agent(["discover", "opcua", "opc.tcp://h:4840", "--depth", "2"]) is None
    scan = ["scan", "dlt645", "--port", "/dev/ttyUSB0"]
    assert check_edge_agent([*scan, "--protcol", "1997"]) is not None
    assert check_edge_agent([*scan, "--protocol", "1997"]) is None
    assert check_make(["no-such-target"], make_targets()) is not None
    session = Block(
        ROOT / "README.md", 1, "console", "$ sudo -u edge-agent edge-agent stat\nok\n", ""
    )
    words = [w for line in command_lines(session) for w in simple_commands(line)]
    assert words == [["edge-agent", "stat"]] and check_edge_agent(words[0][1:]) is not None


# -- (c) links ------------------------------------------------------------------------------------

_INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*)?\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)=["']([^"']+)["']""", re.I)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def links(page: Path) -> list[str]:
    """Every link target the page's text holds (code blocks and code spans left out)."""
    text = without_code(page.read_text(encoding="utf-8"))
    return [m for rx in (_INLINE_LINK, _REFERENCE, _HTML_LINK) for m in rx.findall(text)]


def heading_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: its text (links reduced to their text, markup
    dropped), lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = without_code(page.read_text(encoding="utf-8"), inline=False)
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", text, re.M):
        base = heading_anchor(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    found.update(re.findall(r"""<a\b[^>]*?\b(?:id|name)=["']([^"']+)["']""", text))
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # a web address: not this repository's to check
        path_part, _, anchor = urllib.parse.unquote(target).partition("#")
        if path_part.startswith("/"):
            resolved = ROOT / path_part.lstrip("/")
        else:
            resolved = (page.parent / path_part) if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with the anchor #{anchor}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_relative_links_point_to_what_exists(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, f"{_page_id(page)}:\n" + "\n".join(broken)


def test_the_link_check_sees_links_and_anchors(tmp_path: Path) -> None:
    """It finds the links the pages hold, computes GitHub's anchors, and refuses a broken one."""
    assert sum(len(links(p)) for p in PAGES) > 20
    assert heading_anchor("`devices[].tags[]` (driver: modbus)") == "devicestags-driver-modbus"
    assert heading_anchor("Changing the config: reload") == "changing-the-config-reload"
    assert heading_anchor("在网关上安装") == "在网关上安装"
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## Its part\n", encoding="utf-8")
    page.write_text(
        "# T\n\n## A b\n\n[ok](#a-b) [bad](#nope) [gone](missing.md) `[code](nowhere.md)`\n"
        "[there](other.md#its-part) [not there](other.md#their-part)\n"
        "```sh\n# [in a block](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "#nope: no heading with the anchor #nope",
        "missing.md: no such file",
        "other.md#their-part: no heading with the anchor #their-part",
    ]
