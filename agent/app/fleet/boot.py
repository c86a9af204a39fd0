"""Which config a gateway starts with: the precedence rule (docs/fleet.md).

The local file is the truth at boot, unless a pushed version was applied after the file last
changed: then that version (over the file's own sections) is. So an engineer who edits the file
on the box wins, and a reboot does not undo the fleet's last push. An apply that was under way
when the agent died (SIGKILL, a power cut) never counts: the gateway comes back on the last good
version and says so in its ``config/state``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.app.config.models import Config
from agent.app.fleet.health import InForce
from agent.app.fleet.push import Refused, build_config, yaml_hash
from agent.app.fleet.sign import read_key
from agent.app.fleet.store import FleetStore, StoreState
from drivers.base import Driver

log = logging.getLogger(__name__)


@dataclass
class Boot:
    """What the gateway starts with, and what to tell the operator about it."""

    config: Config
    in_force: InForce
    store: FleetStore
    state: StoreState
    key: bytes
    #: A ``config/state`` to publish once connected (an apply the agent did not live through).
    announce: dict[str, object] | None = None


def file_in_force(path: Path) -> InForce:
    return InForce(0, yaml_hash(path.read_text(encoding="utf-8-sig")), "file")


def boot_config(local: Config, path: Path, drivers: Mapping[str, type[Driver]]) -> Boot:
    """Apply the precedence rule; ``OSError`` when the key or the store cannot be read."""
    fleet = local.fleet
    key = read_key(fleet.key_env, fleet.key_file)
    store = FleetStore(Path(local.agent.data_dir), fleet.keep)
    state = store.load()
    announce: dict[str, object] | None = None
    if state.pending is not None:
        pending = state.pending
        back = state.current.version if state.current is not None else 0
        reason = (
            f"the agent stopped during the apply of version {pending.version} (killed or power "
            f"lost); back on version {back}" + (" (the local file)" if back == 0 else "")
        )
        log.warning("fleet apply interrupted", extra={"reason": reason})
        state.record(pending.version, pending.hash, "rolled_back", reason)
        state.pending = None
        store.save(state)
        announce = {
            "id": pending.id,
            "version": pending.version,
            "hash": pending.hash,
            "result": "rolled_back",
            "errors": [reason],
        }
    chosen: Config = local
    in_force = file_in_force(path)
    current = state.current
    if current is not None and current.ts > path.stat().st_mtime:
        try:
            text = store.read_version(current.version)
            chosen = build_config(text, path, drivers, list(fleet.allow))
            in_force = InForce(current.version, current.hash, "fleet")
        except (OSError, Refused) as exc:
            # The file's sections changed under the version, or the text is gone: the file runs.
            log.error(
                "the pushed version in force cannot be used; running the local file",
                extra={"version": current.version, "error": str(exc)},
            )
    log.info(
        "fleet: config in force",
        extra={"source": in_force.source, "version": in_force.version},
    )
    return Boot(chosen, in_force, store, state, key, announce)
