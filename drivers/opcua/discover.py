"""``edge-agent discover opcua ENDPOINT``: what a server offers, and a device entry to start from.

First the server's endpoints (GetEndpoints, which needs no trust yet): every security policy
and mode, the user tokens each accepts, its certificate, and whether the agent can use it, with
the ``security:`` keys of the strongest one. Then the browse. The output is YAML the agent
accepts as it is (``devices:`` and one entry), the endpoints as comments above it: node ids by
namespace URI (they survive the server renumbering its namespaces), tag names from the browse
path, the type as a comment, the unit where the server has EngineeringUnits. Variables that
cannot be read are listed commented out, with the server's reason, so the integrator sees what
was left out. ``--endpoints`` stops after the endpoints (``--json`` for scripts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from asyncua import Client, ua
from pydantic import ValidationError

from drivers.base import NAME_PATTERN, DeviceError
from drivers.opcua.config import OpcuaConnection, parse_node
from drivers.opcua.convert import status_name
from drivers.opcua.endpoints import Offer, get_endpoints, matching, offers, strongest
from drivers.opcua.nodes import Browser
from drivers.opcua.session import close_session, explain, open_session, pinned_der, why

#: Nodes browsed (or read) per request: servers cap the operations of one call.
PER_REQUEST = 500
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class Found:
    """One variable: where it is, what it is."""

    path: list[str]
    node: ua.NodeId
    name: str = ""
    vtype: str = ""
    array: bool = False
    unit: str | None = None
    problem: str | None = None
    eu_node: ua.NodeId | None = None


@dataclass
class Walk:
    found: list[Found] = field(default_factory=list)
    objects: int = 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-agent discover opcua",
        description="List an OPC UA server's endpoints (security policies and modes, user "
        "tokens, certificates, which the agent can use), browse it and print a ready-to-edit "
        "device entry (YAML).",
    )
    p.add_argument("endpoint", metavar="ENDPOINT", help="opc.tcp://host:port/path")
    p.add_argument(
        "--security",
        metavar="POLICY,MODE",
        help="e.g. Basic256Sha256,SignAndEncrypt (needs --cert, --key, and --server-cert or "
        "--save-server-cert)",
    )
    p.add_argument("--cert", help="this client's certificate")
    p.add_argument("--key", help="this client's private key")
    p.add_argument(
        "--server-cert",
        help="the certificate of the server's endpoint with this policy and mode, to trust",
    )
    p.add_argument(
        "--save-server-cert",
        metavar="FILE",
        help="write the certificate of the endpoint --security names (else of the strongest "
        "one the agent supports) to FILE (DER) and print its thumbprint, to compare with the "
        "one the machine shows; with --security and no --server-cert, it is then trusted",
    )
    p.add_argument(
        "--allow-deprecated",
        action="store_true",
        help="accept Basic128Rsa15 and Basic256 (deprecated, SHA-1) as the config's "
        "allow_deprecated: true does",
    )
    p.add_argument(
        "--endpoints",
        action="store_true",
        help="list the server's endpoints (policies, modes, user tokens, certificates) and stop",
    )
    p.add_argument("--json", action="store_true", help="with --endpoints: print JSON")
    p.add_argument("--username")
    p.add_argument("--password-env", metavar="VAR", help="environment variable with the password")
    p.add_argument("--password-file", metavar="FILE", help="file with the password")
    p.add_argument(
        "--under",
        metavar="NODE",
        default="",
        help="start here: a browse path from Objects (Machine/Spindle) or a node id",
    )
    p.add_argument("--depth", type=int, default=6, help="levels to descend (default 6)")
    p.add_argument("--name", default="opcua-device", help="device name in the output")
    p.add_argument("--mode", choices=["subscribe", "poll"], default="subscribe")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    return p


def connection_of(args: argparse.Namespace) -> dict[str, Any]:
    """The ``connection`` section as the agent's config will say it."""
    conn: dict[str, Any] = {"endpoint": args.endpoint}
    if args.security:
        policy, mode = _wanted(args)
        conn["security"] = {
            "policy": policy,
            **({"mode": mode} if "," in args.security and policy != "None" else {}),
            **{
                key: value
                for key, value in (
                    ("cert_file", args.cert),
                    ("key_file", args.key),
                    ("server_cert_file", args.server_cert or args.save_server_cert),
                )
                if value is not None
            },
            **({"allow_deprecated": True} if args.allow_deprecated else {}),
        }
    if args.username:
        conn["username"] = args.username
    if args.password_env:
        conn["password_env"] = args.password_env
    if args.password_file:
        conn["password_file"] = args.password_file
    return conn


def _wanted(args: argparse.Namespace) -> tuple[str, str]:
    """The policy and mode asked for (``--security POLICY[,MODE]``; None without it)."""
    if not args.security:
        return "None", "None"
    policy, _, mode = args.security.partition(",")
    if policy == "None":
        return "None", "None"
    return policy, mode or "SignAndEncrypt"


def tag_name(path: Sequence[str]) -> str:
    """``["Spindle", "PartCount"]`` → ``spindle_part_count``: safe as a topic level."""
    parts = [_NOT_NAME.sub("_", _CAMEL.sub("_", p)).strip("_").lower() for p in path]
    name = "_".join(p for p in parts if p) or "value"
    return name[:128]


def node_text(node: ua.NodeId, namespaces: list[str]) -> str:
    """The node id by namespace URI (``nsu=...;s=...``), or plain for namespace 0."""
    plain = node.to_string()
    if node.NamespaceIndex == 0 or node.NamespaceIndex >= len(namespaces):
        return str(plain)
    rest = re.sub(r"^ns=\d+;", "", plain)
    return f"nsu={namespaces[node.NamespaceIndex]};{rest}"


async def _start(client: Client, under: str) -> ua.NodeId:
    if not under:
        return ua.NodeId(ua.ObjectIds.ObjectsFolder, 0)
    if re.match(r"^(nsu|ns|i|s|g|b)=", under):
        uri, node = parse_node(under)
        if uri is not None:
            index = (await client.get_namespace_array()).index(uri)
            node = ua.NodeId(node.Identifier, index, node.NodeIdType)
        return node
    found = await Browser(client).resolve(under)
    if isinstance(found, str):
        raise ValueError(f"--under {under}: {found}")
    return found


async def walk(client: Client, start: ua.NodeId, depth: int) -> Walk:
    """Breadth first, one Browse request per level (chunked), properties aside."""
    result = Walk()
    level: list[tuple[ua.NodeId, list[str], Found | None]] = [(start, [], None)]
    seen = {start}
    for _ in range(depth + 1):
        if not level:
            break
        next_level: list[tuple[ua.NodeId, list[str], Found | None]] = []
        for i in range(0, len(level), PER_REQUEST):
            chunk = level[i : i + PER_REQUEST]
            browsed = await client.browse_nodes([client.get_node(n) for n, _, _ in chunk])
            for (node, path, var), (_, res) in zip(chunk, browsed, strict=True):
                for ref in res.References or []:
                    child = ua.NodeId(
                        ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType
                    )
                    if not ref.IsForward or child in seen:
                        continue
                    name = ref.BrowseName.Name
                    if ref.ReferenceTypeId == ua.NodeId(ua.ObjectIds.HasProperty):
                        if var is not None and name == "EngineeringUnits":
                            var.eu_node = child
                        continue
                    if not _hierarchical(ref.ReferenceTypeId):
                        continue
                    if child.NamespaceIndex == 0 and node == ua.NodeId(ua.ObjectIds.ObjectsFolder):
                        continue  # the Server object: diagnostics, not the machine
                    seen.add(child)
                    if ref.NodeClass == ua.NodeClass.Variable:
                        found = Found(path=[*path, name], node=child)
                        result.found.append(found)
                        next_level.append((child, [*path, name], found))
                    elif ref.NodeClass == ua.NodeClass.Object:
                        result.objects += 1
                        next_level.append((child, [*path, name], None))
        level = next_level
    return result


def _hierarchical(ref_type: ua.NodeId) -> bool:
    return (
        ref_type
        in {
            ua.NodeId(ua.ObjectIds.Organizes),
            ua.NodeId(ua.ObjectIds.HasComponent),
            ua.NodeId(ua.ObjectIds.HasOrderedComponent),
            ua.NodeId(ua.ObjectIds.HasChild),
            ua.NodeId(ua.ObjectIds.Aggregates),
        }
        or ref_type.NamespaceIndex != 0
    )


async def describe(client: Client, found: list[Found]) -> None:
    """Type, array-ness, readability and unit of every variable, a few requests in all."""
    for i in range(0, len(found), PER_REQUEST):
        chunk = found[i : i + PER_REQUEST]
        values = await client.uaclient.read_attributes(
            [f.node for f in chunk], ua.AttributeIds.Value
        )
        for f, dv in zip(chunk, values, strict=True):
            code = dv.StatusCode
            if code is not None and code.is_bad():
                f.problem = status_name(code)
                continue
            if dv.Value is None or dv.Value.VariantType == ua.VariantType.Null:
                f.problem = "no value yet"
                continue
            f.vtype = dv.Value.VariantType.name
            f.array = isinstance(dv.Value.Value, list)
            if f.vtype == "ExtensionObject":
                f.problem = "a structure (not a value the payload carries)"
    with_eu = [f for f in found if f.eu_node is not None]
    for i in range(0, len(with_eu), PER_REQUEST):
        chunk = with_eu[i : i + PER_REQUEST]
        values = await client.uaclient.read_attributes(
            [f.eu_node for f in chunk], ua.AttributeIds.Value
        )
        for f, dv in zip(chunk, values, strict=True):
            eu = dv.Value.Value if dv.Value is not None else None
            text = getattr(getattr(eu, "DisplayName", None), "Text", None)
            if text:
                f.unit = str(text)


def endpoint_lines(url: str, found: Sequence[Offer], now: datetime | None = None) -> list[str]:
    """The endpoints as a table a person reads: ``ok`` or ``no`` (the agent can use it, or why
    not), policy, mode, user tokens, and which certificate, the certificates listed once each
    (most servers have one for all endpoints)."""
    labels: dict[bytes, str] = {}
    for o in found:
        if o.cert is not None and o.cert.der not in labels:
            labels[o.cert.der] = f"cert {len(labels) + 1}"
    rows = [
        (
            "ok" if o.supported else "no",
            o.policy,
            o.mode,
            ", ".join(o.tokens) or "-",
            labels[o.cert.der] if o.cert is not None else "-",
            " ".join(
                part for part in (o.refusal or "", f"at {o.url}" if o.url != url else "") if part
            ),
        )
        for o in found
    ]
    if not rows:
        return [f"{url} lists no endpoints."]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f'Endpoints of {url} ("ok": the agent can use it; "no": why not):']
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        lines.append(("  " + "  ".join([*cells, row[5]])).rstrip())
    seen = {o.cert.der: o.cert for o in found if o.cert is not None}
    if seen:
        lines.append("Server certificates:")
    for der, cert in seen.items():
        uri = f"; URI {cert.application_uri}" if cert.application_uri else ""
        lines.append(
            f"  {labels[der]}: {cert.subject}; SHA-1 {cert.sha1}; {cert.validity(now)}{uri}"
        )
    return lines


def suggestion(found: Sequence[Offer], username: str | None) -> tuple[Offer | None, str]:
    """The strongest endpoint the agent can use with the user it has (anonymous without
    ``--username``), and one line saying which it is and why."""
    token = "UserName" if username else "Anonymous"
    best = strongest(found, token)
    if best is None:
        other = strongest(found, "Anonymous" if username else "UserName")
        if other is None:
            return None, "No endpoint the agent can use."
        need = "without --username" if username else "with --username (anonymous is refused)"
        return other, f"Strongest endpoint the agent supports, {need}: {_named(other)}."
    if best.policy == "None":
        return best, "The server offers no secure endpoint the agent can use: nothing is signed."
    return best, f"Strongest endpoint the agent supports: {_named(best)}."


def _named(o: Offer) -> str:
    return "None (no security)" if o.policy == "None" else f"{o.policy} {o.mode}"


def security_lines(args: argparse.Namespace, best: Offer) -> list[str]:
    """The ``security:`` block of ``best`` (YAML, to indent under ``connection:``) and how to
    fetch the endpoint's certificate."""
    if best.policy == "None":
        return []
    server_cert = _cert_file_name(args)
    thumb = f"SHA-1 {best.cert.sha1}" if best.cert is not None else "no certificate"
    lines = ["security:"]
    lines += [f"  {k}: {'true' if v is True else v}" for k, v in best.security().items()]
    lines += [
        "  cert_file: agent-cert.der   # this gateway's certificate and key",
        "  key_file: agent-key.pem",
        f"  server_cert_file: {server_cert}   # this endpoint's certificate ({thumb})",
        f"(edge-agent discover opcua {args.endpoint} --security {best.policy},{best.mode} "
        f"--save-server-cert {server_cert} writes server_cert_file)",
    ]
    return lines


def endpoints_report(
    args: argparse.Namespace, found: Sequence[Offer], out: TextIO, *, comment: str = ""
) -> None:
    """The endpoints and the suggested ``security:`` keys: for a person, or JSON."""
    best, line = suggestion(found, args.username)
    if args.json:
        doc = {
            "endpoint": args.endpoint,
            "endpoints": [o.as_json() for o in found],
            "suggested_security": best.security() if best is not None else None,
        }
        out.write(json.dumps(doc, indent=2) + "\n")
        return
    lines = [*endpoint_lines(args.endpoint, found), line]
    if best is not None and best.policy != "None":
        lines.append("In the device's connection:")
        lines += ["  " + s for s in security_lines(args, best)]
    out.write("".join(f"{comment}{x}".rstrip() + "\n" for x in lines))


def _cert_file_name(args: argparse.Namespace) -> str:
    return str(args.save_server_cert or args.server_cert or f"{args.name}.der")


def render(
    args: argparse.Namespace,
    found: list[Found],
    namespaces: list[str],
    start: str,
    out: TextIO,
    endpoints: Sequence[Offer] = (),
) -> None:
    names: set[str] = set()
    for f in found:
        base = tag_name(f.path)
        name, n = base, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.add(name)
        f.name = name
    good = [f for f in found if f.problem is None]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    q = json.dumps
    out.write(
        f"# edge-agent discover opcua {args.endpoint}: {len(good)} variables under {start} "
        f"(depth {args.depth}), {when}\n"
        "# Paste the entry under `devices:` of your config; rename tags, drop what you do not\n"
        "# need, add deadband or sampling_interval where the server should filter.\n"
    )
    best, line = suggestion(endpoints, args.username)
    if endpoints:
        out.write("#\n")
        out.write("".join(f"# {x}\n" for x in [*endpoint_lines(args.endpoint, endpoints), line]))
    out.write(f"devices:\n  - name: {q(args.name)}\n    driver: opcua\n    connection:\n")
    for key, value in connection_of(args).items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k}: {q(v)}" for k, v in value.items())
            out.write(f"      {key}: {{{inner}}}\n")
        else:
            out.write(f"      {key}: {q(value)}\n")
    used = _wanted(args)
    if best is not None and best.policy != "None" and (best.policy, best.mode) != used:
        out.write(f"      # {line} Its keys:\n")
        for x in security_lines(args, best):
            out.write(f"      # {x}\n")
    out.write(f"    mode: {args.mode}\n")
    out.write(
        "    publishing_interval: 1s\n" if args.mode == "subscribe" else "    poll_interval: 1s\n"
    )
    out.write("    tags:\n" if good else "    tags: []\n")
    for f in found:
        entry = f"{{name: {f.name}, node: {q(node_text(f.node, namespaces))}"
        if f.unit is not None:
            entry += f", unit: {q(f.unit)}"
        entry += "}"
        kind = f"{f.vtype}{'[]' if f.array else ''}"
        path = "/".join(f.path)
        if f.problem is None:
            out.write(f"      - {entry}  # {kind} {path}\n")
        else:
            out.write(f"      # - {entry}  # {path}: {f.problem}\n")


def save_server_cert(args: argparse.Namespace, found: Sequence[Offer]) -> int:
    """Trust on first sight, checked by a human: write the certificate of the endpoint the
    agent will use (``--security``'s policy and mode, else the strongest the agent supports; a
    server may hold one per policy) and show its SHA-1 thumbprint, as servers display it."""
    path = Path(args.save_server_cert)
    if args.security:
        policy, mode = _wanted(args)
        chosen = [o for o in matching(found, policy, mode) if o.cert is not None]
        what = f"{policy} {mode} endpoint"
    else:
        secure = [o for o in found if o.cert is not None and o.policy != "None"]
        best = suggestion(secure, args.username)[0]
        chosen = [best] if best is not None else []
        what = "secure endpoint the agent supports,"
    if not chosen or chosen[0].cert is None:
        print(
            f"edge-agent discover: the server offers no {what} with a certificate",
            file=sys.stderr,
        )
        return 1
    offer, cert = chosen[0], chosen[0].cert
    path.write_bytes(cert.der)
    print(
        f"saved {path}: the certificate of the {offer.policy} {offer.mode} endpoint, "
        f"{cert.subject}, SHA-1 {cert.sha1}, {cert.validity()}",
        file=sys.stderr,
    )
    return 0


def _bare(endpoint: str) -> OpcuaConnection:
    return OpcuaConnection.model_construct(endpoint=endpoint, timeout=5.0)


async def run(args: argparse.Namespace, out: TextIO) -> int:
    if not re.match(NAME_PATTERN, args.name):
        print(f"edge-agent discover: --name {args.name!r}: use [A-Za-z0-9_.-]", file=sys.stderr)
        return 2
    # Only the endpoints, or only the server's certificate: no session, so no client files.
    browse = not args.endpoints and not (args.save_server_cert and not (args.cert or args.key))
    conn = _bare(args.endpoint)
    if browse:
        try:
            conn = OpcuaConnection.model_validate({**connection_of(args), "timeout": args.timeout})
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                where = ".".join(str(p) for p in err["loc"]) or "connection"
                hint = (
                    " (--save-server-cert FILE fetches it)" if "server_cert" in err["msg"] else ""
                )
                print(f"edge-agent discover: {where}: {err['msg']}{hint}", file=sys.stderr)
            return 2
    try:
        described = await get_endpoints(args.endpoint, args.timeout)
    except Exception as exc:
        print(f"edge-agent discover: {why(exc, conn).reason}: {exc}", file=sys.stderr)
        return 1
    found = offers(described, allow_deprecated=args.allow_deprecated)
    if args.save_server_cert:
        code = save_server_cert(args, found)
        if code or not (browse or args.endpoints):
            return code
    if args.endpoints:
        endpoints_report(args, found, out)
        return 0
    try:
        pinned = await asyncio.to_thread(pinned_der, conn)
    except (OSError, ValueError) as exc:
        print(f"edge-agent discover: --server-cert: {exc}", file=sys.stderr)
        return 2
    try:
        problem = explain(conn, offers(described, allow_deprecated=True), pinned)
        if problem is not None:
            raise problem
        client = await open_session(conn)
    except DeviceError as exc:
        print(f"edge-agent discover: {exc.reason}: {exc}", file=sys.stderr)
        endpoints_report(args, found, sys.stderr, comment="  ")
        return 1
    try:
        namespaces = await client.get_namespace_array()
        start = await _start(client, args.under)
        result = await walk(client, start, args.depth)
        await describe(client, result.found)
    except (ValueError, ua.UaStatusCodeError, OSError, TimeoutError) as exc:
        print(f"edge-agent discover: {exc}", file=sys.stderr)
        return 1
    finally:
        await close_session(client, conn.timeout)
    render(args, result.found, namespaces, args.under or "Objects", out, found)
    return 0


def discover(argv: Sequence[str], out: TextIO | None = None) -> int:
    args = parser().parse_args(list(argv))
    if args.depth < 0:
        print("edge-agent discover: --depth must be 0 or more", file=sys.stderr)
        return 2
    if args.json and not args.endpoints:
        print("edge-agent discover: --json goes with --endpoints", file=sys.stderr)
        return 2
    return asyncio.run(run(args, out or sys.stdout))
