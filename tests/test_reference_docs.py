"""The reference pages (docs/reference/) list exactly what the agent has: every config key (the
page is the generator's output for the current schema), every command and option of the CLI,
every metric it exports and every HTTP endpoint it serves, nothing more and nothing less."""

from __future__ import annotations

import argparse
import ast
import asyncio
import inspect
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from agent.app.cli import _parser
from agent.app.config import config_schema, load_config
from agent.app.reference import config_reference, slug
from agent.app.runtime import Agent
from agent.ops import http as agent_http
from agent.ops.http import StatusServer
from agent.ops.status import StatusView
from agent.south.registry import load_drivers
from drivers.dlt645 import scan as dlt645_scan
from drivers.modbus import scan as modbus_scan
from drivers.opcua import discover as opcua_discover
from tests.test_ops_rig import http

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
METRICS = REFERENCE / "metrics.md"
HTTP = REFERENCE / "http.md"


# -- config.md ------------------------------------------------------------------------------------


def test_config_page_is_the_generators_output_for_the_current_schema() -> None:
    page = (REFERENCE / "config.md").read_text(encoding="utf-8")
    assert page == config_reference(config_schema(load_drivers())), (
        "docs/reference/config.md is out of date: run `make reference` "
        "(edge-agent schema --markdown > docs/reference/config.md) and commit it"
    )


def test_config_page_names_every_key_of_every_section() -> None:
    """Independent of the generator's own walk: every property of every definition of the schema
    is a row of some table, and every link of the page lands on one of its headings."""
    schema = config_schema(load_drivers())
    page = config_reference(schema)
    rows = set(re.findall(r"^\| `([^`]+)` \|", page, re.M))
    objects = [schema, *schema["$defs"].values()]
    keys = {key for obj in objects for key in obj.get("properties", {})}
    assert keys and keys <= rows, sorted(keys - rows)
    headings = [slug(h) for h in re.findall(r"^#{1,6} (.+)$", page, re.M)]
    # GitHub numbers repeated anchors: the second "tags" is "tags-1".
    anchors = {
        h if i == 0 else f"{h}-{i}" for n, h in enumerate(headings) for i in [headings[:n].count(h)]
    }
    links = set(re.findall(r"\]\(#([^)]+)\)", page))
    assert links and links <= anchors, sorted(links - anchors)


def test_config_page_shows_types_defaults_and_allowed_values() -> None:
    page = config_reference(config_schema(load_drivers()))
    mqtt = page[page.index("## `mqtt`\n") :]
    assert "| `port` | integer | `1883` | 1 to 65535 |" in mqtt
    assert "| `keepalive` | duration | `30.0` | >= 0 |" in mqtt
    # From the format registry: the default first, then by name.
    formats = "`json`, `alibaba`, `aws`, `azure`, `huawei`, `sparkplug`, `thingsboard`"
    assert f"| `format` | string | `json` | {formats} |" in mqtt
    assert "| `id` | name | required |" in page
    assert "| `max_size` | size | `256000000` |" in page
    for driver in ("modbus", "opcua", "serial"):
        assert f"## `devices[]` (driver: {driver})\n" in page
        assert f"### `devices[].tags[]` (driver: {driver})\n" in page
    # A section several drivers share is written once, and says where it is used.
    assert page.count("### `window`\n") == 1
    window = page[page.index("### `window`\n") :]
    used_in = window.split("Used in: ", 1)[1].split("\n", 1)[0]  # every driver's tags, by name
    assert "[`devices[].tags[]` (driver: modbus)](#devicestags-driver-modbus)" in used_in


# -- cli.md ---------------------------------------------------------------------------------------

CLI = REFERENCE / "cli.md"
#: The drivers' own parsers behind ``edge-agent discover DRIVER``.
DISCOVER: dict[str, Callable[[], argparse.ArgumentParser]] = {"opcua": opcua_discover.parser}
#: The drivers' own parsers behind ``edge-agent scan DRIVER``.
SCAN: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "dlt645": dlt645_scan.parser,
    "modbus": modbus_scan.parser,
}


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every command line the parser defines, ``edge-agent discover <driver>`` included."""
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = {f"edge-agent {name}": p for name, p in sub.choices.items()}
    for name, p in sub.choices.items():  # commands of their own: ``edge-agent fleet push``...
        for nested in (a for a in p._actions if isinstance(a, argparse._SubParsersAction)):
            found.update({f"edge-agent {name} {n}": q for n, q in nested.choices.items()})
    found.update({f"edge-agent discover {d}": make() for d, make in DISCOVER.items()})
    found.update({f"edge-agent scan {d}": make() for d, make in SCAN.items()})
    return found


def cli_sections() -> dict[str, str]:
    parts = re.split(r"^## `(edge-agent[^`]*)`\n", CLI.read_text(encoding="utf-8"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def usage(parser: argparse.ArgumentParser) -> str:
    """The usage line as ``--help`` prints it, on one line, without ``[-h]``."""
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=10_000)
    text = " ".join(parser.format_usage().split()).removeprefix("usage: ")
    return text.replace(" [-h]", "")


def rows(section: str) -> dict[str, list[str]]:
    """The argument table: first cell (as written) -> the other cells."""
    found = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if line.startswith("| `") and len(cells) == 3:
            found[cells[0]] = cells[1:]
    return found


def test_every_driver_that_discovers_is_documented_with_its_parser() -> None:
    able = {name for name, cls in load_drivers().items() if "discover" in vars(cls)}
    assert able == set(DISCOVER)


def test_every_driver_that_scans_is_documented_with_its_parser() -> None:
    able = {name for name, cls in load_drivers().items() if "scan" in vars(cls)}
    assert able == set(SCAN)


def test_cli_page_has_a_section_per_command_and_no_other() -> None:
    assert set(cli_sections()) == set(commands())


def test_cli_usage_lines_are_what_help_prints() -> None:
    sections = cli_sections()
    for name, parser in commands().items():
        shown = re.search(r"```text\n(.*?)\n```", sections[name], re.S)
        assert shown is not None, name
        assert shown.group(1) == usage(parser), f"{name}: the usage line differs from --help"


def test_cli_tables_name_every_option_and_argument_and_no_other() -> None:
    sections = cli_sections()
    for name, parser in commands().items():
        table = rows(sections[name])
        options: set[str] = set()
        positionals: set[str] = set()
        for first in table:
            for span in re.findall(r"`([^`]+)`", first):
                word = span.split()[0]
                (options if word.startswith("-") else positionals).add(word)
        defined = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
        arguments = {str(a.metavar or a.dest) for a in parser._actions if not a.option_strings}
        assert options == defined, f"{name}: {sorted(options ^ defined)}"
        assert positionals == arguments, f"{name}: {sorted(positionals ^ arguments)}"


def test_cli_tables_give_the_parsers_defaults() -> None:
    for name, parser in commands().items():
        table = rows(cli_sections()[name])
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, "", argparse.SUPPRESS):
                continue
            cell = next(
                cells[0] for first, cells in table.items() if action.option_strings[-1] in first
            )
            shown = cell.strip("`")
            try:
                same = float(shown) == float(action.default)
            except ValueError:
                same = shown == str(action.default)
            assert same, f"{name} {action.option_strings[-1]}: {cell} != {action.default!r}"


def test_cli_parser_refuses_what_the_page_does_not_list() -> None:
    """The comparison above means something: the parser does refuse an unlisted option."""
    with pytest.raises(SystemExit):
        _parser().parse_args(["status", "--no-such-option"])


# -- metrics.md -----------------------------------------------------------------------------------

METRIC_ROW = re.compile(r"^\| `(edge_agent_\w+)(?:\{([^}]*)\})?` \| (\w+) \|", re.M)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Agent:
    """The runtime's own agent, built (not started) from a config with a device of every kind
    of processing the metrics speak about: every collector the runtime registers is there."""
    path = tmp_path_factory.mktemp("agent") / "config.yaml"
    path.write_text(
        "agent: {id: doc-gw, data_dir: data}\n"
        "devices:\n"
        "  - name: press-1\n"
        "    driver: modbus\n"
        "    connection: {host: 127.0.0.1, port: 1}\n"
        "    tags:\n"
        "      - name: temp\n"
        "        table: holding\n"
        "        address: 0\n"
        "        type: uint16\n"
        "        deadband: 1\n"
        "        alarms: [{name: hot, 'on': '> 80'}]\n",
        encoding="utf-8",
    )
    return Agent(load_config(path, load_drivers()), config_path=path)


def exported(agent: Agent) -> dict[str, tuple[str, set[str] | None]]:
    """family name -> (type, label names, or None when it has no sample yet to show them)."""
    text = generate_latest(agent.metrics.registry).decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    found: dict[str, tuple[str, set[str] | None]] = {}
    for name, kind in types.items():
        base = name.removesuffix("_created")
        if name != base and types.get(base + "_total", types.get(base)) in ("counter", "histogram"):
            continue  # prometheus_client's companion series of a counter or histogram
        samples = re.findall(rf"^{name}(?:_bucket|_count|_sum)?\{{([^}}]*)\}}", text, re.M)
        labels = {k for s in samples for k in re.findall(r"(\w+)=", s)} - {"le"}
        found[name] = (kind, labels if samples else None)
    return found


def test_metrics_page_lists_every_exported_metric_and_no_other(agent: Agent) -> None:
    doc = {name: (kind, labels) for name, labels, kind in METRIC_ROW.findall(METRICS.read_text())}
    have = exported(agent)
    assert set(doc) == set(have), f"page vs agent: {sorted(set(doc) ^ set(have))}"
    for name, (kind, labels) in have.items():
        assert doc[name][0] == kind, name
        documented = {x.strip() for x in doc[name][1].split(",") if x.strip()}
        assert labels is None or labels == documented, f"{name}: {labels} != {documented}"
    # The per-device series have samples once the device exists: their labels were compared.
    assert have["edge_agent_reads_total"][1] == {"device"}


# -- http.md --------------------------------------------------------------------------------------

ROUTE_ROW = re.compile(r"^\| (GET|POST) \| \[`(/[^`]*)`\]", re.M)


def routes_in_code() -> set[tuple[str, str]]:
    """(method, path) for every path ``do_GET``/``do_POST`` of agent/ops/http.py compare against."""
    tree = ast.parse(inspect.getsource(agent_http))
    found: set[tuple[str, str]] = set()
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or fn.name not in ("do_GET", "do_POST"):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Compare) and ast.unparse(node.left) == "url.path":
                for const in ast.walk(node.comparators[0]):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        found.add((fn.name.removeprefix("do_"), const.value))
    return found


def test_http_page_lists_every_route_and_no_other() -> None:
    documented = set(ROUTE_ROW.findall(HTTP.read_text(encoding="utf-8")))
    in_code = routes_in_code()
    assert len(in_code) >= 7
    assert documented == in_code, sorted(documented ^ in_code)


@pytest.fixture
def served(agent: Agent) -> Iterator[str]:
    """The listener in front of the runtime's agent, on its own event loop thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = StatusServer("127.0.0.1", 0, agent.metrics.registry, StatusView(agent), loop)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_every_documented_route_answers(served: str) -> None:
    for method, path in ROUTE_ROW.findall(HTTP.read_text(encoding="utf-8")):
        if method == "GET":
            status, _, _ = http(served + path)
            # /readyz: the agent is built, not started, so it says why it is not ready.
            assert status == (503 if path == "/readyz" else 200), path
        else:
            status, _, body = http(
                f"{served}{path}?device=nothing", data=b"", headers={"X-Edge-Agent": "read"}
            )
            assert status == 200 and json.loads(body)["ok"] is False, path
    assert http(served + "/not-documented")[0] == 404


def test_status_json_keys_are_the_documented_ones(served: str) -> None:
    text = HTTP.read_text(encoding="utf-8")
    table = text[text.index("## GET /status.json") : text.index("## GET /metrics")]
    first_cells = re.findall(r"^\| ((?:`\w+`(?:, )?)+) \|", table, re.M)
    documented = {k for cell in first_cells for k in re.findall(r"`(\w+)`", cell)}
    snap = json.loads(http(served + "/status.json")[2])
    assert documented == set(snap)
    devices_row = next(line for line in table.splitlines() if line.startswith("| `devices` |"))
    assert set(snap["devices"][0]) <= set(re.findall(r"`(\w+)`", devices_row))
