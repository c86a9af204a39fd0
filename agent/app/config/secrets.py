"""Filling in the MQTT password and checking the TLS files, at start-up only.

``validate`` must work on a laptop without the production secrets, so this runs only when the
agent is about to use them (``load_config(resolve_secrets=True)``). Messages name the variable or
file, never the content: they end up in terminals and journals.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import SecretStr

from agent.app.config.errors import ConfigIssue
from agent.app.config.locate import Locator
from agent.app.config.models import MqttSection


def _read_password(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    # Editors and `echo` add one newline; it is never part of the password.
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def _why(exc: OSError | UnicodeError) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return "not UTF-8 text"


_Section = TypeVar("_Section", bound=MqttSection)


def resolve_secrets(
    mqtt: _Section, loc: Locator, at: tuple[str | int, ...] = ("mqtt",)
) -> tuple[_Section, list[ConfigIssue]]:
    """The section (the ``mqtt`` one, or the ``outputs`` entry at ``at``) with ``password`` set
    from its source, and the problems found on the way."""
    issues: list[ConfigIssue] = []
    password: str | None = None
    if mqtt.password_env is not None:
        password = os.environ.get(mqtt.password_env)
        if password is None:
            issues.append(
                loc.at_value(
                    (*at, "password_env"),
                    f"environment variable {mqtt.password_env} is not set",
                )
            )
        elif password == "":
            issues.append(
                loc.at_value(
                    (*at, "password_env"), f"environment variable {mqtt.password_env} is empty"
                )
            )
    elif mqtt.password_file is not None:
        try:
            password = _read_password(mqtt.password_file)
        except (OSError, UnicodeError) as exc:
            issues.append(
                loc.at_value(
                    (*at, "password_file"),
                    f"cannot read {mqtt.password_file}: {_why(exc)}",
                )
            )
    if mqtt.tls is not None:
        for key in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(mqtt.tls, key)
            if path is None:
                continue
            try:
                with path.open("rb") as f:
                    f.read(1)
            except OSError as exc:
                issues.append(loc.at_value((*at, "tls", key), f"cannot read {path}: {_why(exc)}"))
    if password is None or issues:
        return mqtt, issues
    return mqtt.model_copy(update={"password": SecretStr(password)}), issues
