"""What the commands share: exit codes, and loading the config for a command with its
problems printed the way an editor or CI reads them."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from agent.app.config import ConfigErrors, load_config
from agent.app.config.models import Config
from drivers.base import Driver

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def load_or_exit(
    file: str, drivers: Mapping[str, type[Driver]], *, resolve_secrets: bool
) -> Config | int:
    """The config, or the exit code after printing why not. Issues in the config are printed
    with FILE as the user typed it, so the lines match what their editor or CI has open; issues
    inside a profile file it uses name that file."""
    path = Path(file)
    try:
        return load_config(path, drivers, resolve_secrets=resolve_secrets)
    except ConfigErrors as exc:
        for i in exc.issues:
            shown = file if i.file == str(path) else i.file
            print(f"{shown}:{i.line}:{i.col}: {i.path}: {i.message}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"edge-agent: cannot read {file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:
        # Not the file's fault (a driver's validator raising something other than ValueError,
        # say): one clear line and the runtime-failure code, not a traceback posing as a verdict.
        print(
            f"edge-agent: internal error while checking {file}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
