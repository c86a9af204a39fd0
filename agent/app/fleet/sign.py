"""The fleet signature: HMAC-SHA256 with the shared key over ``str(version) + "\\n" + yaml``.

The version is inside the signed bytes, so a captured push cannot be replayed under a higher
version; the key never travels, only the signature does.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

#: The operator's default: the key in this environment variable (INTERFACES.md, "Fleet").
DEFAULT_KEY_ENV = "EDGE_AGENT_FLEET_KEY"


class FleetKeyError(OSError):
    """The key cannot be read (the variable is unset or empty, the file unreadable)."""


def signature(key: bytes, version: int, yaml: str) -> str:
    """Hex HMAC-SHA256 of the push."""
    message = f"{version}\n{yaml}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def verify(key: bytes, version: int, yaml: str, sig: str) -> bool:
    """Whether ``sig`` signs this version and text; compared in constant time."""
    return hmac.compare_digest(signature(key, version, yaml).encode(), sig.lower().encode())


def read_key(key_env: str | None, key_file: Path | None) -> bytes:
    """The key from its variable or file (one trailing newline of a file is ignored). The
    message names where it was looked for, never what was found."""
    if key_file is not None:
        try:
            raw = key_file.read_bytes()
        except OSError as exc:
            raise FleetKeyError(
                f"cannot read the fleet key file {key_file}: {exc.strerror}"
            ) from None
        key = raw[:-1] if raw.endswith(b"\n") else raw
        if not key:
            raise FleetKeyError(f"the fleet key file {key_file} is empty")
        return key
    name = key_env or DEFAULT_KEY_ENV
    value = os.environ.get(name, "")
    if not value:
        raise FleetKeyError(f"the fleet key variable {name} is not set")
    return value.encode()
