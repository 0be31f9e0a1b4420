"""The shipped alert rules and Grafana dashboard query metrics the daemon really exports,
and promtool (Debian's prometheus package) accepts and unit-tests the rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aiowstunnel.metrics import register_metrics
from aiowstunnel.stats import MetricsSnapshot, ServerStats, TunnelStats

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "packaging" / "prometheus" / "aiowstunnel.rules.yml"
RULES_TEST = ROOT / "packaging" / "prometheus" / "aiowstunnel.rules.test.yml"
DASHBOARD = ROOT / "packaging" / "grafana" / "aiowstunnel-dashboard.json"
METRIC = re.compile(r"\b(aiowstunnel_[a-z_]+|process_[a-z_]+)\b")


def exported_names() -> set[str]:
    """Sample names of a real scrape with every label in use."""
    tunnel = TunnelStats(
        "t", up=True, connect_failures=Counter(connect=1), stream_open_failures=Counter(refused=1)
    )
    client = TunnelStats("c", sessions_active=1)
    server = ServerStats(rejected=Counter(bad_token=1))
    registry = CollectorRegistry()
    register_metrics(registry, lambda: MetricsSnapshot((tunnel,), (client,), server, True, 1.0))
    text = generate_latest(registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def queried_names(text: str) -> set[str]:
    return set(METRIC.findall(text))


def test_dashboard_queries_only_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    names = queried_names("\n".join(exprs) + dashboard["templating"]["list"][1]["query"])
    missing = names - exported_names()
    assert not missing, f"the dashboard queries metrics nobody exports: {missing}"
    assert "aiowstunnel_tunnel_up" in names


def test_alert_rules_query_only_exported_metrics():
    names = queried_names(RULES.read_text())
    assert {"aiowstunnel_tunnel_up", "aiowstunnel_config_last_reload_successful"} <= names
    missing = names - exported_names()
    assert not missing, f"the rules query metrics nobody exports: {missing}"


@pytest.mark.timeout(60)
def test_promtool_checks_and_unit_tests_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (scripts/apt-packages.txt installs prometheus)")
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 4 rules found" in check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", str(RULES_TEST)],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout + test.stderr
