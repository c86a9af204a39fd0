"""What a push must pass before it is applied, each problem as ``LINE:COL: key.path: message``
of the pushed text (the gateway's ``config/state`` carries them back to the operator).

The order is cheap first: the envelope (JSON, types, size), the signature, the version, then the
text exactly as ``edge-agent validate`` checks a file, with the gateway's own sections (the ones
a push may not carry) under it, and last the write permissions.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from agent.app.config import ConfigErrors, load_config
from agent.app.config.errors import ConfigIssue
from agent.app.config.models import Config
from agent.app.config.yamlpos import Document, parse_yaml
from agent.app.fleet.sign import verify
from drivers.base import Driver

#: The largest pushed text: a config of thousands of tags stays far below it, and a gateway
#: parses at most this much from the broker.
MAX_YAML_BYTES = 1_048_576
#: The largest message on ``config/set``: the text above, JSON-escaped, with the envelope.
MAX_MESSAGE_BYTES = 4 * MAX_YAML_BYTES + 4096
#: How the pushed text is named while checked (the state's errors leave the name out).
PUSHED = "<pushed>"


class Refused(Exception):
    """A push that will not be applied, and why."""

    def __init__(self, errors: list[str], push: Push | None = None) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors
        self.push = push


@dataclass(frozen=True)
class Push:
    id: str
    version: int
    yaml: str
    sig: str

    @property
    def hash(self) -> str:
        return yaml_hash(self.yaml)


def yaml_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _envelope_error(key: str, message: str) -> str:
    """Problems with the message itself, not the text: reported at 1:1 under ``(push)``."""
    return f"1:1: (push).{key}: {message}" if key else f"1:1: (push): {message}"


def parse_push(payload: bytes) -> Push:
    """The envelope ``{"id", "version", "yaml", "sig"}``, typed, or ``Refused``."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise Refused(
            [_envelope_error("", f"the message is larger than {MAX_MESSAGE_BYTES} bytes")]
        )
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise Refused([_envelope_error("", f"not JSON: {exc}")]) from None
    if not isinstance(doc, dict):
        raise Refused([_envelope_error("", "must be a JSON object {id, version, yaml, sig}")])
    errors = []
    raw_id = doc.get("id", "")
    push_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= 200 else ""
    if push_id != raw_id:
        errors.append(_envelope_error("id", "must be a string of at most 200 characters"))
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 < version < 2**63:
        errors.append(_envelope_error("version", "must be a positive integer"))
        version = 0
    text = doc.get("yaml")
    if not isinstance(text, str):
        errors.append(_envelope_error("yaml", "must be the config file as a string"))
        text = ""
    elif len(text.encode()) > MAX_YAML_BYTES:
        errors.append(_envelope_error("yaml", f"the config is larger than {MAX_YAML_BYTES} bytes"))
    sig = doc.get("sig")
    if not isinstance(sig, str) or len(sig) != 64:
        errors.append(_envelope_error("sig", "must be the 64 hex digits of HMAC-SHA256"))
        sig = ""
    push = Push(push_id, version, text, sig)
    if errors:
        raise Refused(errors, push)
    return push


def check_signature(push: Push, key: bytes) -> None:
    if not verify(key, push.version, push.yaml, push.sig):
        raise Refused([_envelope_error("sig", "the signature does not match (wrong key?)")], push)


def _issue_text(issue: ConfigIssue) -> str:
    if issue.file == PUSHED:
        return f"{issue.line}:{issue.col}: {issue.path}: {issue.message}"
    return str(issue)  # a profile file of the gateway's, named


def check_sections(text: str, allow: list[str]) -> Document:
    """The pushed text parsed; ``Refused`` when it is not YAML or carries a section ``allow``
    does not list."""
    try:
        document = parse_yaml(text, PUSHED)
    except ConfigErrors as exc:
        raise Refused([_issue_text(i) for i in exc.issues]) from None
    if not isinstance(document.data, dict):
        mark = document.positions.value(())
        raise Refused([f"{mark.line}:{mark.col}: (root): must be a mapping of sections"])
    errors = []
    for key in document.data:
        if key not in allow:
            mark = document.positions.key((key,))
            errors.append(
                f"{mark.line}:{mark.col}: {key}: this section cannot be pushed "
                f"(fleet.allow: {', '.join(allow)})"
            )
    if errors:
        raise Refused(errors)
    return document


def local_sections(path: Path, pushed: Mapping[str, Any]) -> dict[str, Any]:
    """The gateway's own file, less the sections the push carries: what the push sits on."""
    document = parse_yaml(path.read_text(encoding="utf-8-sig"), str(path))
    data = document.data if isinstance(document.data, dict) else {}
    return {k: v for k, v in data.items() if k not in pushed}


def build_config(
    text: str,
    local: Path,
    drivers: Mapping[str, type[Driver]],
    allow: list[str],
    *,
    resolve_secrets: bool = True,
) -> Config:
    """The config the gateway would run with this pushed text, checked as ``edge-agent
    validate`` checks a file; ``Refused`` with every problem."""
    document = check_sections(text, allow)
    underlay = local_sections(local, document.data)
    try:
        return load_config(
            Path(PUSHED),
            drivers,
            resolve_secrets=resolve_secrets,
            text=text,
            underlay=underlay,
            base_dir=local.parent,
        )
    except ConfigErrors as exc:
        raise Refused([_issue_text(i) for i in exc.issues]) from None


def writable_tags(config: Config) -> set[tuple[str, str]]:
    """(device, tag) of every tag the config lets the cloud write."""
    return {
        (d.name, t.name) for d in config.devices for t in d.tags if getattr(t, "writable", False)
    }


def check_writes(new: Config, running: Config, text: str) -> None:
    """A push may not let the cloud write a tag the running config does not let write (unless
    ``fleet.allow_writes``): the write permission stays the local file's decision."""
    gained = sorted(writable_tags(new) - writable_tags(running))
    if not gained:
        return
    document = parse_yaml(text, PUSHED)
    errors = []
    for device, tag in gained:
        line, col, path = _find_tag(document, device, tag)
        errors.append(
            f"{line}:{col}: {path}: a push cannot make {device}.{tag} writable "
            "(the gateway's fleet.allow_writes is false)"
        )
    raise Refused(errors)


def _find_tag(document: Document, device: str, tag: str) -> tuple[int, int, str]:
    """Where the pushed text makes the tag writable: in the device's own tags, else its
    profile's, else at the device."""
    data = document.data
    devices = data.get("devices") if isinstance(data, dict) else None
    for i, entry in enumerate(devices if isinstance(devices, list) else []):
        if not (isinstance(entry, dict) and entry.get("name") == device):
            continue
        candidates: list[tuple[str | int, ...]] = []
        for j, t in enumerate(entry.get("tags") or []):
            if isinstance(t, dict) and t.get("name") == tag:
                candidates.append(("devices", i, "tags", j, "writable"))
        profile = entry.get("profile")
        profiles = data.get("profiles") if isinstance(data, dict) else None
        if isinstance(profile, str) and isinstance(profiles, dict):
            for j, t in enumerate((profiles.get(profile) or {}).get("tags") or []):
                if isinstance(t, dict) and t.get("name") == tag:
                    candidates.append(("profiles", profile, "tags", j, "writable"))
        candidates.append(("devices", i))
        path = candidates[0]
        mark = document.positions.key(path)
        return mark.line, mark.col, ".".join(str(p) for p in path)
    return 1, 1, "devices"


def pushable_text(local: Path, allow: list[str]) -> str:
    """The local file's sections a push may carry, as YAML text (``config/current`` while
    the file is in force)."""
    document = parse_yaml(local.read_text(encoding="utf-8-sig"), str(local))
    data = document.data if isinstance(document.data, dict) else {}
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump({k: v for k, v in data.items() if k in allow}, out)
    return out.getvalue()
