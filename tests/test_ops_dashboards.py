"""The Grafana dashboard and the Prometheus rules speak about metrics the agent really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from ruamel.yaml import YAML

from agent.core.clock import DeviceStamps
from agent.ops.metrics import DriverErrors, Metrics
from agent.ops.processing_metrics import ProcessingCollector
from drivers.base import Driver

CONFIG = Path(__file__).resolve().parent.parent / "config"
METRIC = re.compile(r"\bedge_agent_[a-z_]+")


class _Counting(Driver):
    name = "counting"

    async def connect(self) -> None: ...

    async def poll(self) -> list[Any]:
        return []

    async def close(self) -> None: ...

    def error_counts(self) -> dict[str, int]:
        return {"timeout": 1}


def exported() -> set[str]:
    """Every sample name an agent exports, as Prometheus sees them (``_total``, ``_bucket``...)."""
    m = Metrics()
    for family in (m.reads, m.read_errors, m.poll_duration, m.poll_overruns, m.device_up):
        family.labels("d")
    m.config_reloads.labels("refused")
    m.info.labels("gw", "1").set(1)
    stamps = DeviceStamps()
    stamps.clamp("d", 2.0)
    stamps.clamp("d", 1.0)
    m.registry.register(stamps)
    m.registry.register(DriverErrors({"d": _Counting.__new__(_Counting)}))
    m.registry.register(ProcessingCollector(dict))
    text = generate_latest(m.registry).decode()
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    # Families by their own names too (a histogram is named without _bucket in docs; a
    # collector's family exists even before its first sample).
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    return samples | families


def expressions_in(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        found = [
            v for k, v in doc.items() if k in ("expr", "query", "definition") and isinstance(v, str)
        ]
        return found + [e for v in doc.values() for e in expressions_in(v)]
    if isinstance(doc, list):
        return [e for v in doc for e in expressions_in(v)]
    return []


def check(expressions: list[str]) -> None:
    names = exported()
    assert expressions
    for expr in expressions:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        for metric in METRIC.findall(expr):
            assert metric in names, f"{metric} is not exported (in {expr!r})"


def test_dashboard_queries_use_exported_metrics() -> None:
    dash = json.loads((CONFIG / "grafana/edge-agent-dashboard.json").read_text())
    check(expressions_in(dash))
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "instance", "device"}


def test_alert_rules_cover_the_issue_and_use_exported_metrics() -> None:
    rules = YAML(typ="safe").load((CONFIG / "prometheus/edge-agent-alerts.yml").read_text())
    listed = [r for g in rules["groups"] for r in g["rules"]]
    for rule in listed:
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]
    check([r["expr"] for r in listed if "edge_agent_" in r["expr"]])
    names = {r["alert"] for r in listed}
    # Device down, buffer filling, publish failing, clock unsynchronised (the issue's four).
    assert {
        "EdgeAgentDeviceDown",
        "EdgeAgentBufferFilling",
        "EdgeAgentPublishFailing",
        "EdgeAgentClockUnsynchronised",
    } <= names
    scrape = YAML(typ="safe").load((CONFIG / "prometheus/prometheus.yml").read_text())
    assert scrape["rule_files"] == ["edge-agent-alerts.yml"]
    assert scrape["scrape_configs"][0]["job_name"] == "edge-agent"
