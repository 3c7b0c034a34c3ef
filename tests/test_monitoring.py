"""The Prometheus alert rules and the Grafana dashboard in deploy/: well-formed, naming only
metrics that clerk-sync exports, and (where promtool is installed) checked and unit-tested by
Prometheus's own tool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from clerk_sync import metrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "clerk-sync-rules.yml"
RULES_TESTS = DEPLOY / "prometheus" / "clerk-sync-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "clerk-sync.json"
# Series Prometheus makes itself, not clerk-sync.
PROMETHEUS_OWN = {"up"}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def exported_names() -> set[str]:
    """Every series name /metrics can carry: what the registry renders (a labelled counter
    with no sample yet has only its `# TYPE` line), with a histogram's series."""
    text = metrics.render()[0].decode()
    names = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        name, kind = match.groups()
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SERIES)
    return names


def metric_names(expr: str) -> set[str]:
    """The series an expression reads: identifiers that are neither functions, keywords, nor
    label names or values."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "", without_strings)
    without_grouping = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_matchers)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_grouping)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?", without_ranges):
        if not match.group(1) and match.group(0) not in ("and", "or", "unless", "bool"):
            names.add(match.group(0))
    return names


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_metric_names_are_read_from_expressions() -> None:
    expr = (
        'sum by (reason) (rate(clerk_sync_x_total{reason=~"a|b"}[5m])) / '
        "histogram_quantile(0.99, sum by (le) (rate(clerk_sync_y_bucket[5m]))) and up == 0"
    )
    assert metric_names(expr) == {"clerk_sync_x_total", "clerk_sync_y_bucket", "up"}


def test_the_alert_rules_are_well_formed_and_name_only_exported_metrics() -> None:
    exported = exported_names()
    seen = set()
    for rule in rules():
        assert rule["alert"].startswith("ClerkSync"), rule
        assert rule["labels"]["severity"] in ("critical", "warning"), rule
        assert rule["annotations"]["summary"], rule
        used = metric_names(rule["expr"])
        assert used, rule
        unknown = used - exported - PROMETHEUS_OWN
        assert not unknown, f"{rule['alert']} reads metrics clerk-sync does not export: {unknown}"
        seen |= used
    # What the README promises alerts for: 503s, verification failures, dead letters, and the
    # age of the last applied event.
    for name in (
        "clerk_sync_database_errors_total",
        "clerk_sync_deliveries_total",
        "clerk_sync_verification_failures_total",
        "clerk_sync_dead_letters_total",
        "clerk_sync_last_applied_timestamp_seconds",
    ):
        assert name in seen, name


def test_the_dashboard_is_well_formed_and_names_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exported = exported_names()
    seen = set()
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            used = metric_names(target["expr"])
            assert used and not used - exported, (panel["title"], used - exported)
            seen |= used
    assert {m for m in exported if m.startswith("clerk_sync_") and not m.endswith("_created")} - {
        "clerk_sync_delivery_duration_seconds",
        "clerk_sync_delivery_duration_seconds_sum",
        "clerk_sync_delivery_duration_seconds_count",
    } <= seen, "a metric clerk-sync exports has no panel"


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool is not installed")
def test_promtool_checks_and_tests_the_rules() -> None:
    for command in (["check", "rules", RULES.name], ["test", "rules", RULES_TESTS.name]):
        result = subprocess.run(
            ["promtool", *command],
            cwd=RULES.parent,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
