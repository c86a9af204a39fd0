"""Configuration: one YAML file, validated against the agent's sections and the installed drivers.

Every problem comes back at once as ``ConfigErrors``, each issue printed as
``FILE:LINE:COL: dotted.key.path: message`` (the contract of ``edge-agent validate``).
"""

from __future__ import annotations

from agent.app.config.errors import ConfigErrors, ConfigIssue
from agent.app.config.loader import config_schema, load_config
from agent.app.config.models import (
    AgentSection,
    BufferSection,
    Config,
    MetricsSection,
    MqttSection,
    TlsSection,
    build_config_model,
)

__all__ = [
    "AgentSection",
    "BufferSection",
    "Config",
    "ConfigErrors",
    "ConfigIssue",
    "MetricsSection",
    "MqttSection",
    "TlsSection",
    "build_config_model",
    "config_schema",
    "load_config",
]
