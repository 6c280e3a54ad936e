"""deploy/grafana/stanch-dashboard.json loads as a Grafana dashboard whose every panel reads the
Prometheus picked by its `datasource` variable; every PromQL expression in it and in Stanch's own
alerting rules parses in the real Prometheus (Debian's `promtool`); and every metric they read is
one Stanch or the Temporal SDK exports — so renaming a metric breaks this test, not a dashboard
nobody looks at until the night it is needed."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import temporalio
import yaml
from prometheus_client import CollectorRegistry

from stanch.api.metrics import IntakeMetrics
from stanch.gateway.metrics import GatewayMetrics
from tests.unit.test_prometheus_rules import tool

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "stanch-dashboard.json"
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))

# The metric names the worker (through the Temporal SDK's meter, which adds `_total` to counters and
# `_seconds` to durations) and the API's visibility reader export: the contract the dashboard and
# the rules are written against. Each one must still be named in Stanch's source (below).
CONTRACT = {
    "stanch_incident_time_to_acknowledge_seconds": "histogram",
    "stanch_incident_time_to_contain_seconds": "histogram",
    "stanch_incident_time_to_restore_seconds": "histogram",
    "stanch_incident_time_to_close_seconds": "histogram",
    "stanch_incident_containment_objective_total": "counter",
    "stanch_incident_ack_sla_breaches_total": "counter",
    "stanch_notifications_total": "counter",
    "stanch_actions_total": "counter",
    "stanch_incidents_open": "gauge",
    "stanch_approvals_waiting": "gauge",
    "stanch_approval_oldest_wait_seconds": "gauge",
    "stanch_incidents_unacknowledged_past_sla": "gauge",
    "stanch_incidents_unchecked": "gauge",
    "stanch_visibility_up": "gauge",
}
# The API's gauges read from Temporal, with their labels: every API replica serves the same
# numbers, so summed across instances each incident counts once per replica.
SAME_ON_EVERY_REPLICA = {
    "stanch_incidents_open": {"runbook", "severity", "status"},
    "stanch_approvals_waiting": {"runbook", "severity"},
    "stanch_approval_oldest_wait_seconds": {"runbook", "severity"},
    "stanch_incidents_unacknowledged_past_sla": {"runbook", "severity"},
    "stanch_incidents_unchecked": {"reason"},
}
# Prometheus's own: whether a target answered its scrape.
PROMETHEUS_OWN = {"up"}
# Grafana's variables, given a value Prometheus parses.
VARIABLES = {"$__rate_interval": "5m", "$window": "7d", "$runbook": ".*"}
# PromQL words that are not metric names.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "inf", "nan"}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(within: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in within:
        yield panel
        yield from panels(panel.get("panels", []))  # a collapsed row holds its panels


def dashboard_expressions() -> list[tuple[str, str]]:
    found = []
    for panel in panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((\w+), *\w+\)", query["query"])
            assert inner, f"variable {variable['name']}: a label_values(metric, label) query"
            found.append((f"variable {variable['name']}", inner.group(1)))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    return [
        (f"{path.name} {rule.get('alert') or rule.get('record')}", rule["expr"])
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def with_values(expression: str) -> str:
    for variable, value in VARIABLES.items():
        expression = expression.replace(variable, value)
    assert "$" not in re.sub(r'"[^"]*"', "", expression), f"a Grafana variable this test does not know: {expression}"
    return expression


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers,
    ranges, grouping clauses, function calls, numbers and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, called = match.group(1), match.group(2)
        if not called and name.lower() not in KEYWORDS:
            names.add(name)
    return names


def exported_by(registry: CollectorRegistry) -> set[str]:
    """The series names a prometheus_client registry exposes (labelled metrics included)."""
    names = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in HISTOGRAM_SERIES}
        else:
            names.add(family.name)
    return names


def stanch_source() -> str:
    return "\n".join(path.read_text() for folder in ("stanch", "workflows", "activities") for path in (ROOT / folder).rglob("*.py"))


def temporal_sdk_metric_names() -> set[str]:
    """Every metric the Temporal SDK's core defines, from the Rust sources its wheel ships."""
    crates = Path(temporalio.__file__).parent / "bridge" / "sdk-core" / "crates"
    sources = [crates / "sdk-core/src/telemetry/metrics.rs", crates / "common/src/telemetry/metrics.rs", crates / "client/src/metrics.rs"]
    names = set()
    for source in sources:
        assert source.is_file(), f"the temporalio wheel no longer ships {source}: find where its metric names are defined"
        names |= set(re.findall(r'"([a-z][a-z0-9_]*)"', source.read_text()))
    assert {"workflow_task_execution_latency", "sticky_cache_size", "num_pollers"} <= names
    return names


def known_metrics() -> set[str]:
    known = exported_by(IntakeMetrics().registry) | exported_by(GatewayMetrics().registry) | PROMETHEUS_OWN
    for name, kind in CONTRACT.items():
        known |= {name + suffix for suffix in HISTOGRAM_SERIES} if kind == "histogram" else {name}
    return known


def is_temporal_sdk_metric(name: str, sdk: set[str]) -> bool:
    if not name.startswith("temporal_"):
        return False
    stem = re.sub(r"(_seconds)?(_bucket|_sum|_count)?$|_total$", "", name.removeprefix("temporal_"))
    return stem in sdk


# --- the dashboard ---------------------------------------------------------------------------


def test_the_dashboard_loads_and_every_panel_has_its_own_id_and_reads_the_chosen_prometheus() -> None:
    board = dashboard()
    assert board["uid"] == "stanch" and board["title"] and board["schemaVersion"] >= 39
    [datasource] = [variable for variable in board["templating"]["list"] if variable["name"] == "datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(board["panels"])]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(i for i in ids if ids.count(i) > 1)}"
    for panel in panels(board["panels"]):
        if panel["type"] == "row":
            continue
        where = f"panel {panel['id']} {panel['title']!r}"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"] and panel.get("description"), where
        for target in panel["targets"]:
            assert target["expr"].strip() and target.get("datasource", panel["datasource"]) == panel["datasource"], where
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, f"{where} is wider than the dashboard"


def test_the_dashboard_has_the_rows_an_operator_looks_for() -> None:
    rows = [panel["title"] for panel in dashboard()["panels"] if panel["type"] == "row"]
    assert rows == ["Incidents", "Humans", "Actions & notifications", "Intake", "Gateway", "Worker (Temporal SDK)"]


def test_every_metric_of_the_contract_is_on_the_dashboard() -> None:
    read = set().union(*(metric_names(with_values(expression)) for _, expression in dashboard_expressions()))
    for name, kind in CONTRACT.items():
        series = {name + suffix for suffix in HISTOGRAM_SERIES} if kind == "histogram" else {name}
        assert series & read, f"{name} is exported but no panel shows it"


# --- every expression, the dashboard's and the rules' ------------------------------------------


def test_every_expression_parses_in_prometheus(tmp_path: Path) -> None:
    # promtool parses and type-checks each expression as a recording rule; one call for all of them.
    expressions = dashboard_expressions() + rule_expressions()
    rules = [
        {"record": f"check:expression_{number}", "expr": with_values(expression)} for number, (_, expression) in enumerate(expressions)
    ]
    path = tmp_path / "expressions.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-and-rules", "rules": rules}]}))
    done = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        numbered = "\n".join(f"  check:expression_{number}: {where}" for number, (where, _) in enumerate(expressions))
        raise AssertionError(f"promtool refused an expression:\n{done.stdout}{done.stderr}\nwhich is which:\n{numbered}")


def test_every_metric_read_is_one_stanch_or_the_temporal_sdk_exports() -> None:
    known, sdk = known_metrics(), temporal_sdk_metric_names()
    unknown = [
        f"{where}: {name}"
        for where, expression in dashboard_expressions() + rule_expressions()
        for name in sorted(metric_names(with_values(expression)))
        if name not in known and not is_temporal_sdk_metric(name, sdk)
    ]
    assert not unknown, "metrics nobody exports (renamed?):\n" + "\n".join(unknown)


def test_every_contract_metric_is_still_named_in_stanchs_source() -> None:
    # The worker's metrics are created by name at run time (workflow.metric_meter()), so the names
    # are checked in the source: the runtime adds `_total` to counters and `_seconds` to durations.
    source = stanch_source()
    missing = []
    for name, kind in CONTRACT.items():
        created_as = {name, re.sub(r"_total$", "", name), re.sub(r"_seconds$", "", name)} if kind != "gauge" else {name}
        if not any(re.search(rf"[\"']{re.escape(stem)}[\"']", source) for stem in created_as):
            missing.append(name)
    assert not missing, f"no longer created anywhere in stanch/, workflows/, activities/: {missing}"


def test_the_name_check_catches_a_renamed_metric() -> None:
    # The parser this test relies on: metric names out, labels, functions and keywords not.
    names = metric_names(
        'histogram_quantile(0.95, sum by (le, runbook) (rate(stanch_incident_time_to_contain_seconds_bucket{runbook=~"a|b"}[5m])))'
        ' / ignoring (x) group_left (y) stanch_incidents_open offset 5m > bool 0 or absent(up{job="stanch-worker"} == 1)'
    )
    assert names == {"stanch_incident_time_to_contain_seconds_bucket", "stanch_incidents_open", "up"}
    known, sdk = known_metrics(), temporal_sdk_metric_names()
    assert "stanch_incident_time_to_contain_seconds_bucket" in known and "stanch_incident_time_to_containment_seconds_bucket" not in known
    assert is_temporal_sdk_metric("temporal_workflow_task_execution_latency_seconds_bucket", sdk)
    assert is_temporal_sdk_metric("temporal_sticky_cache_hit_total", sdk)
    assert not is_temporal_sdk_metric("temporal_workflow_task_latency_seconds_bucket", sdk)


def replica_reads_not_merged(expression: str) -> list[str]:
    """Each read of a gauge every API replica serves alike that is not the direct argument of a
    `max` (by none, or some, of its own labels: never `instance`), so it could be summed per replica."""
    found = []
    for name, own_labels in SAME_ON_EVERY_REPLICA.items():
        for read in re.finditer(rf"(?<![\w:]){name}(?![\w:])", expression):
            merged = re.search(r"\bmax\s*(?:by\s*\(([^)]*)\))?\s*\(\s*$", expression[: read.start()])
            kept = {label.strip() for label in (merged.group(1) or "").split(",") if label.strip()} if merged else set()
            if merged is None or not kept <= own_labels:
                found.append(name)
    return found


def test_gauges_every_api_replica_serves_are_merged_with_max_before_any_sum() -> None:
    unmerged = [
        f"{where}: {name}"
        for where, expression in dashboard_expressions() + rule_expressions()
        for name in replica_reads_not_merged(expression)
    ]
    assert not unmerged, "read without `max by (<its labels>)` first: with two API replicas this shows double:\n" + "\n".join(unmerged)


def test_the_replica_check_catches_a_sum_across_instances() -> None:
    assert replica_reads_not_merged('sum by (status) (stanch_incidents_open{runbook=~"a"})') == ["stanch_incidents_open"]
    assert replica_reads_not_merged("sum(stanch_approvals_waiting) + max by (instance) (stanch_incidents_unchecked)") == [
        "stanch_approvals_waiting",
        "stanch_incidents_unchecked",
    ]
    assert replica_reads_not_merged("sum by (status) (max by (runbook, severity, status) (stanch_incidents_open))") == []
    assert replica_reads_not_merged('max by (runbook,severity) (stanch_incidents_open{status="triage"}) > 0') == []


# --- provisioning ----------------------------------------------------------------------------


def test_grafana_provisioning_loads_the_dashboard_from_a_folder_and_names_a_prometheus() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "stanch.yaml").read_text())
    assert [source["type"] for source in datasources["datasources"]] == ["prometheus"]
    dashboards = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "stanch.yaml").read_text())
    [provider] = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
