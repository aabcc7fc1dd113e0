"""The chart's alerts (charts/kubenurse/templates/prometheusrule.yaml), their runbooks
(docs/alerts.md) and the plain rules file rendered from them (alerts/kubenurse.rules.yaml),
checked by Prometheus itself: `promtool check rules` parses every expression and annotation
template, `promtool test rules` evaluates the scenarios of tests/chart/alerts/*.test.yaml
(series that must fire each alert and series that must not) against the rules the chart renders.

alerts/kubenurse.rules.yaml is the chart's rule groups from the default values, for a
Prometheus without the operator (and the end-to-end tests). After changing the chart:

    bash scripts/test-chart.sh -k alerts --update-alerts
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from conftest import CHART_DIR, HERE, NAMESPACE, RELEASE, REPO, deep_merge

RULES_FILE = REPO / "alerts" / "kubenurse.rules.yaml"
ALERTS_DOC = REPO / "docs" / "alerts.md"
UNIT_TESTS = sorted((HERE / "alerts").glob("*.test.yaml"))
ENABLED = {"prometheusRule": {"enabled": True}}
# The plain rules file is rendered as release "kubenurse" in namespace "kubenurse": its series
# selectors are job="kubenurse" / job="kubenurse-aggregator", namespace="kubenurse", which the
# unit tests' series carry.
PLAIN_RELEASE = "kubenurse"
PLAIN_NAMESPACE = "kubenurse"
REGENERATE = "bash scripts/test-chart.sh -k alerts --update-alerts"

AGENT_ALERTS = [
    "KubenurseAgentDown",
    "KubenurseApiServerChecksFailing",
    "KubenursePathErrorsHigh",
    "KubenursePathLatencyHigh",
    "KubenurseNeighbourhoodDiscoveryFailing",
]
AGGREGATOR_ALERTS = [
    "KubenurseAggregatorDown",
    "KubenurseNetworkSuspect",
    "KubenurseCoverageBelowLimit",
    "KubenurseAgentsNotStreaming",
    "KubenurseIngestRejections",
    "KubenurseAuthFailures",
]
ALL_ALERTS = AGENT_ALERTS + AGGREGATOR_ALERTS

# Metrics a rule reads that the code does not export yet (name → what it must be). When the
# code exports one, test_pending_metrics_are_not_exported_yet says to drop it from here.
PENDING_METRICS: dict[str, str] = {}
# Labels every scraped series has (Prometheus, prometheus-operator), and those the agents' get
# from their ServiceMonitor's relabelings (the aggregator's get none).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
AGENT_TARGET_LABELS = TARGET_LABELS | {"node", "zone"}
METRICS_RS = {"agent": REPO / "agent" / "src" / "metrics.rs", "aggregator": REPO / "aggregator" / "src" / "metrics.rs"}
DOC_PARTS = ["What it means", "How to confirm", "Likely causes", "What to do"]


# --- helpers ---------------------------------------------------------------------------------


def rule_object(render, values: dict[str, Any] | None = None, **kw) -> dict[str, Any]:
    return render(deep_merge(ENABLED, values or {}), **kw).one("PrometheusRule")


def groups_of(render, values: dict[str, Any] | None = None, **kw) -> list[dict[str, Any]]:
    return rule_object(render, values, **kw)["spec"]["groups"]


def plain_groups(render) -> list[dict[str, Any]]:
    return groups_of(render, name=PLAIN_RELEASE, namespace=PLAIN_NAMESPACE)


def rules_by_alert(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for g in groups:
        for r in g["rules"]:
            assert r["alert"] not in out, f"duplicate alert {r['alert']}"
            out[r["alert"]] = r
    return out



class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the expressions) as literal blocks, nothing wrapped, lists indented."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


_Dumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))

HEADER = f"""\
# Prometheus alerting rules of kubenurse-rs: the rule groups of the chart's PrometheusRule
# (charts/kubenurse/templates/prometheusrule.yaml) with the default values, rendered for release
# "{PLAIN_RELEASE}" in namespace "{PLAIN_NAMESPACE}" (series selected by job="kubenurse" and
# job="kubenurse-aggregator", namespace="kubenurse": label your scrape targets so, or use the chart
# with prometheusRule.agentSelector / aggregatorSelector). Runbooks: docs/alerts.md.
# Generated: do not edit. After changing the chart run `{REGENERATE}`
# (tests/chart/test_alerts.py fails while this file differs from the chart).
"""


def rules_file_text(groups: list[dict[str, Any]]) -> str:
    body = yaml.dump({"groups": groups}, Dumper=_Dumper, sort_keys=False, width=1 << 20, allow_unicode=True)
    return HEADER + body


def write_rules(tmp_path: Path, groups: list[dict[str, Any]], name: str = "kubenurse.rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(rules_file_text(groups), encoding="utf-8")
    return path


def promtool_run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=300, check=False)


def unit_tests_against(tmp_path: Path, rules: Path, tests: list[Path] = UNIT_TESTS) -> list[Path]:
    """Copies of the unit-test files that load `rules` instead of the checked-in rules file."""
    out = []
    for t in tests:
        doc = yaml.safe_load(t.read_text(encoding="utf-8"))
        assert doc["rule_files"] == ["../../../alerts/kubenurse.rules.yaml"], t.name
        doc["rule_files"] = [str(rules)]
        copy_path = tmp_path / t.name
        copy_path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        out.append(copy_path)
    return out


def run_unit_tests(promtool: str, tmp_path: Path, groups: list[dict[str, Any]],
                   tests: list[Path] = UNIT_TESTS) -> subprocess.CompletedProcess:
    rules = write_rules(tmp_path, groups)
    return promtool_run(promtool, "test", "rules", *unit_tests_against(tmp_path, rules, tests))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def doc_sections(text: str) -> dict[str, str]:
    """anchor of every `## ` heading → the section's text."""
    out: dict[str, str] = {}
    parts = re.split(r"^## +(.+)$", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2]):
        out[github_anchor(heading)] = body
    return out


def runbook_problems(groups: list[dict[str, Any]], doc: str) -> list[str]:
    """What is wrong with the alerts' annotations and their runbook sections."""
    problems = []
    sections = doc_sections(doc)
    for name, rule in rules_by_alert(groups).items():
        ann = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                problems.append(f"{name}: no {key}")
        if not re.search(r"\$value|\$labels\.", ann.get("description", "")):
            problems.append(f"{name}: the description cites no evidence ($value, $labels)")
        url = ann.get("runbook_url", "")
        anchor = url.rpartition("#")[2]
        if anchor != name.lower():
            problems.append(f"{name}: runbook_url {url} does not end in #{name.lower()}")
        if anchor not in sections:
            problems.append(f"{name}: no section #{anchor} in docs/alerts.md")
            continue
        for part in DOC_PARTS:
            if f"**{part}**" not in sections[anchor]:
                problems.append(f"{name}: its section in docs/alerts.md has no **{part}**")
    return problems


SERIES = re.compile(r"\b(kubenurse_[a-z0-9_]+|up)\b(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def exported_metric_labels() -> dict[str, set[str]]:
    """Every kubenurse_ family the code registers → its label names (from metrics.rs), plus the
    target labels its tier's series carry."""
    out: dict[str, set[str]] = {}
    for tier, path in METRICS_RS.items():
        text = path.read_text(encoding="utf-8")
        target = AGENT_TARGET_LABELS if tier == "agent" else TARGET_LABELS
        # Families made by a local closure (`let cell_gauge = |name, help| GaugeVec::new(…, &["src", "dst"])`).
        closures = dict(re.findall(r"let (\w+) = \|[^|]*\|[^;]*?&\[([^\]]*)\]", text))
        for m in re.finditer(r'(?:(\w+)\(\s*)?"(kubenurse_[a-z0-9_]+)"', text):
            # The family's definition runs to the end of its statement (`)?;`).
            rest = text[m.end():]
            stmt = rest[: rest.find("?;") if "?;" in rest else len(rest)]
            labels = re.search(r"&\[([^\]]*)\]", stmt)
            label_list = closures.get(m.group(1)) or (labels.group(1) if labels else "")
            # The first mention is the definition (tests further down mention names too).
            own = set(re.findall(r'"([a-z_]+)"', label_list))
            out.setdefault(m.group(2), own | target)
    return out


def labels_of(metric: str, exported: dict[str, set[str]]) -> set[str] | None:
    if metric == "up":
        return AGENT_TARGET_LABELS
    if metric in PENDING_METRICS:
        return TARGET_LABELS  # an aggregator gauge without labels of its own
    if metric in exported:
        return exported[metric]
    family = re.sub(r"_(bucket|sum|count)$", "", metric)
    if family in exported:
        return exported[family] | ({"le"} if metric.endswith("_bucket") else set())
    return None


def metric_problems(expr: str, exported: dict[str, set[str]], where: str) -> list[str]:
    problems = []
    known_anywhere = AGENT_TARGET_LABELS | {"le"} | set().union(*exported.values())
    for m in SERIES.finditer(expr):
        metric, body = m.group(1), m.group(2) or ""
        labels = labels_of(metric, exported)
        if labels is None:
            problems.append(f"{where}: {metric} is not exported by the code")
            continue
        for label in MATCHER.findall(body):
            if label != "__name__" and label not in labels:
                problems.append(f"{where}: {metric} has no label {label}")
    for grouping in GROUPING.findall(expr):
        for label in filter(None, (x.strip() for x in grouping.split(","))):
            if label not in known_anywhere:
                problems.append(f"{where}: no metric has the label {label} it groups by")
    return problems


# --- rendering -------------------------------------------------------------------------------


def test_disabled_by_default_renders_nothing(render):
    assert render().all("PrometheusRule") == []
    assert render({"prometheusRule": {"enabled": "false"}, "serviceMonitor": {"enabled": True}}).all(
        "PrometheusRule") == []
    assert len(render({"prometheusRule": {"enabled": "true"}}).all("PrometheusRule")) == 1


def test_the_prometheus_rule_object(render):
    r = render(deep_merge(ENABLED, {"prometheusRule": {"labels": {"release": "prom"}}}))
    obj = r.one("PrometheusRule")
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["metadata"]["name"] == f"{RELEASE}-kubenurse"
    assert obj["metadata"]["namespace"] == NAMESPACE
    labels = obj["metadata"]["labels"]
    assert labels["release"] == "prom"
    assert labels["app.kubernetes.io/instance"] == RELEASE and labels["app.kubernetes.io/part-of"] == "kubenurse"
    assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert [g["name"] for g in obj["spec"]["groups"]] == ["kubenurse-agents", "kubenurse-aggregator"]
    assert [r["alert"] for r in obj["spec"]["groups"][0]["rules"]] == AGENT_ALERTS
    assert [r["alert"] for r in obj["spec"]["groups"][1]["rules"]] == AGGREGATOR_ALERTS
    assert prometheus_rule_problems(obj) == []


# prometheus-operator's PrometheusRule CRD (monitoring.coreos.com/v1): kubernetes-validate has no
# schema for it (test_chart.py skips monitoring.coreos.com objects), so its fields are checked here.
CRD_DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
CRD_FIELDS = {
    "object": {"apiVersion", "kind", "metadata", "spec"},
    "metadata": {"name", "namespace", "labels", "annotations"},
    "spec": {"groups"},
    "group": {"name", "interval", "limit", "partial_response_strategy", "query_offset", "labels", "rules"},
    "rule": {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"},
}


def prometheus_rule_problems(obj: dict[str, Any]) -> list[str]:
    problems = []

    def fields(kind: str, d: Any, where: str) -> bool:
        if not isinstance(d, dict):
            problems.append(f"{where}: not an object")
            return False
        problems.extend(f"{where}: unknown field {k}" for k in sorted(set(d) - CRD_FIELDS[kind]))
        return True

    def string_map(d: Any, where: str) -> None:
        if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in d.items()):
            problems.append(f"{where}: not a map of strings")

    if not fields("object", obj, "PrometheusRule"):
        return problems
    if (obj.get("apiVersion"), obj.get("kind")) != ("monitoring.coreos.com/v1", "PrometheusRule"):
        problems.append("not a monitoring.coreos.com/v1 PrometheusRule")
    if fields("metadata", obj.get("metadata"), "metadata"):
        string_map(obj["metadata"].get("labels", {}), "metadata.labels")
    if not fields("spec", obj.get("spec"), "spec") or not isinstance(obj["spec"].get("groups"), list):
        return problems + ["spec.groups: not a list"]
    names = [g.get("name") for g in obj["spec"]["groups"] if isinstance(g, dict)]
    if len(names) != len(set(names)):
        problems.append(f"spec.groups: duplicate names {names}")
    for i, g in enumerate(obj["spec"]["groups"]):
        where = f"spec.groups[{i}]"
        if not fields("group", g, where):
            continue
        if not isinstance(g.get("name"), str) or not g["name"]:
            problems.append(f"{where}.name: missing")
        if "interval" in g and not CRD_DURATION.match(str(g["interval"])):
            problems.append(f"{where}.interval: {g['interval']!r} is not a duration")
        if not isinstance(g.get("rules"), list) or not g["rules"]:
            problems.append(f"{where}.rules: not a non-empty list")
            continue
        for j, rule in enumerate(g["rules"]):
            rw = f"{where}.rules[{j}]"
            if not fields("rule", rule, rw):
                continue
            if ("alert" in rule) == ("record" in rule):
                problems.append(f"{rw}: needs exactly one of alert and record")
            if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
                problems.append(f"{rw}.expr: missing")
            for key in ("for", "keep_firing_for"):
                if key in rule and not CRD_DURATION.match(str(rule[key])):
                    problems.append(f"{rw}.{key}: {rule[key]!r} is not a duration")
            for key in ("labels", "annotations"):
                if key in rule:
                    string_map(rule[key], f"{rw}.{key}")
    return problems


def test_the_crd_check_catches_mistakes(render):
    """Negative control: the structural check rejects what the operator's CRD would."""
    good = rule_object(render)
    assert prometheus_rule_problems(good) == []
    mutations = {
        "unknown field": lambda o: o["spec"]["groups"][0]["rules"][0].update(severity="warning"),
        "bad for": lambda o: o["spec"]["groups"][0]["rules"][0].update({"for": "5 minutes"}),
        "number label": lambda o: o["spec"]["groups"][1]["rules"][0]["labels"].update(tier=2),
        "no expr": lambda o: o["spec"]["groups"][0]["rules"][1].pop("expr"),
        "both kinds": lambda o: o["spec"]["groups"][0]["rules"][1].update(record="x:y"),
        "same group twice": lambda o: o["spec"]["groups"].append(copy.deepcopy(o["spec"]["groups"][0])),
        "empty group": lambda o: o["spec"]["groups"][0].update(rules=[]),
    }
    for what, mutate in mutations.items():
        bad = copy.deepcopy(good)
        mutate(bad)
        assert prometheus_rule_problems(bad), what


def test_values_reach_the_rules(render):
    values = {"prometheusRule": {
        "interval": "30s",
        "ruleLabels": {"team": "network", "severity": "ignored"},
        "runbookUrl": "https://wiki.example.com/kubenurse/alerts",
        "alerts": {
            "apiServerChecksFailing": {"for": "2m", "severity": "page", "window": "3m", "errorRatio": 0.35},
            "pathErrorsHigh": {"errorRatio": 0.75, "window": "15m"},
            "pathLatencyHigh": {"p99Seconds": 0.25, "share": 0.6},
            "coverageBelowLimit": {"underCoveredNodes": 4},
            "agentsNotStreaming": {"missingAgents": 2},
            "ingestRejections": {"rejections": 100, "window": "30m"},
            "authFailures": {"failures": 3},
            "networkSuspect": {"for": "1m", "severity": "critical"},
        },
    }}
    groups = groups_of(render, values)
    assert all(g["interval"] == "30s" for g in groups)
    rules = rules_by_alert(groups)
    for name, rule in rules.items():
        assert rule["labels"]["team"] == "network", name
        assert rule["annotations"]["runbook_url"] == f"https://wiki.example.com/kubenurse/alerts#{name.lower()}"
    api = rules["KubenurseApiServerChecksFailing"]
    assert api["for"] == "2m" and api["labels"]["severity"] == "page"
    assert api["expr"].rstrip().endswith("> 0.35") and "[3m]" in api["expr"] and "[5m]" not in api["expr"]
    assert "threshold 35%" in api["annotations"]["description"]
    assert "over the last 3m" in api["annotations"]["description"]
    assert rules["KubenursePathErrorsHigh"]["expr"].rstrip().endswith("> 0.75")
    assert "[15m]" in rules["KubenursePathErrorsHigh"]["expr"]
    latency = rules["KubenursePathLatencyHigh"]["expr"]
    assert ") > 0.25)" in latency and latency.rstrip().endswith("> 0.6")
    assert rules["KubenurseCoverageBelowLimit"]["expr"].rstrip().endswith("> 4")
    assert rules["KubenurseAgentsNotStreaming"]["expr"].rstrip().endswith("> 2")
    assert "[30m])) > 100" in rules["KubenurseIngestRejections"]["expr"]
    assert rules["KubenurseAuthFailures"]["expr"].rstrip().endswith("> 3")
    suspect = rules["KubenurseNetworkSuspect"]
    assert suspect["for"] == "1m" and suspect["labels"]["severity"] == "critical"
    # Defaults where nothing was set.
    assert rules["KubenurseAgentDown"]["for"] == "5m" and rules["KubenurseAgentDown"]["labels"]["severity"] == "warning"
    assert "interval" not in plain_groups(render)[0]


def test_selectors_follow_the_release_and_values(render):
    rules = rules_by_alert(groups_of(render))
    agent_sel = f'job="{RELEASE}-kubenurse", namespace="{NAMESPACE}"'
    agg_sel = f'job="{RELEASE}-kubenurse-aggregator", namespace="{NAMESPACE}"'
    for name in AGENT_ALERTS:
        assert agent_sel in rules[name]["expr"] and "aggregator" not in rules[name]["expr"], name
    for name in AGGREGATOR_ALERTS:
        assert agg_sel in rules[name]["expr"], name
    # The selectors match the ServiceMonitors' targets: job is the Service's name.
    r = render(deep_merge(ENABLED, {"serviceMonitor": {"enabled": True}}))
    services = {s["metadata"]["name"] for s in r.all("Service")}
    assert {f"{RELEASE}-kubenurse", f"{RELEASE}-kubenurse-aggregator"} <= services
    custom = rules_by_alert(groups_of(render, {"prometheusRule": {
        "agentSelector": 'job="nurse-agents"', "aggregatorSelector": 'job=~"nurse-agg.*"'}}))
    assert 'up{job="nurse-agents"}' in custom["KubenurseAgentDown"]["expr"]
    assert 'kubenurse_aggregator_suspects{job=~"nurse-agg.*"}' in custom["KubenurseNetworkSuspect"]["expr"]
    assert 'count(up{job="nurse-agents"} == 1)' in custom["KubenurseAgentsNotStreaming"]["expr"]


def test_alerts_follow_the_chart(render):
    # Without the aggregator: no aggregator group (its metrics do not exist).
    groups = groups_of(render, {"aggregator": {"enabled": False}})
    assert [g["name"] for g in groups] == ["kubenurse-agents"]
    # A check switched off takes its alert's series with it.
    rules = rules_by_alert(groups_of(render, {"check_api_server_dns": False}))
    assert 'type=~"api_server_direct"' in rules["KubenurseApiServerChecksFailing"]["expr"]
    assert "api_server_dns" not in rules["KubenurseApiServerChecksFailing"]["expr"]
    rules = rules_by_alert(groups_of(render, {"check_api_server_dns": "false", "check_api_server_direct": False}))
    assert "KubenurseApiServerChecksFailing" not in rules
    rules = rules_by_alert(groups_of(render, {"check_neighbourhood": False}))
    assert set(rules) == set(ALL_ALERTS) - {"KubenursePathErrorsHigh", "KubenursePathLatencyHigh",
                                            "KubenurseNeighbourhoodDiscoveryFailing"}
    # Alerts switched off one by one; a group without alerts is left out.
    off = {"prometheusRule": {"alerts": {"coverageBelowLimit": {"enabled": False}, "agentDown": {"enabled": "false"}}}}
    assert set(rules_by_alert(groups_of(render, off))) == set(ALL_ALERTS) - {"KubenurseCoverageBelowLimit",
                                                                               "KubenurseAgentDown"}
    all_agent_off = {"prometheusRule": {"alerts": {k: {"enabled": False} for k in (
        "agentDown", "apiServerChecksFailing", "pathErrorsHigh", "pathLatencyHigh", "neighbourhoodDiscoveryFailing")}}}
    assert [g["name"] for g in groups_of(render, all_agent_off)] == ["kubenurse-aggregator"]
    nothing = deep_merge(all_agent_off, {"aggregator": {"enabled": False}})
    assert rule_object(render, nothing)["spec"]["groups"] == []


@pytest.mark.parametrize("values,key", [
    ({"prometheusRule": {"enabled": "yes"}}, "enabled"),
    ({"prometheusRule": {"interval": "1.5m"}}, "interval"),
    ({"prometheusRule": {"labels": {"release": 1}}}, "labels"),
    ({"prometheusRule": {"ruleLabels": {"bad-name": "x"}}}, "ruleLabels"),
    ({"prometheusRule": {"runbookUrl": "docs/alerts.md"}}, "runbookUrl"),
    ({"prometheusRule": {"runbookUrl": "https://x.example.com/alerts.md#top"}}, "runbookUrl"),
    ({"prometheusRule": {"selector": "job=x"}}, "selector"),
    ({"prometheusRule": {"alerts": {"pathErrors": {}}}}, "pathErrors"),
    ({"prometheusRule": {"alerts": {"pathErrorsHigh": {"errorRatio": 1.5}}}}, "errorRatio"),
    ({"prometheusRule": {"alerts": {"pathErrorsHigh": {"errorRatio": "0.5"}}}}, "errorRatio"),
    ({"prometheusRule": {"alerts": {"pathErrorsHigh": {"window": "0m"}}}}, "window"),
    ({"prometheusRule": {"alerts": {"pathLatencyHigh": {"p99Seconds": 0}}}}, "p99Seconds"),
    ({"prometheusRule": {"alerts": {"agentDown": {"for": "5 minutes"}}}}, "for"),
    ({"prometheusRule": {"alerts": {"agentDown": {"window": "5m"}}}}, "window"),
    ({"prometheusRule": {"alerts": {"agentDown": {"severity": ""}}}}, "severity"),
    ({"prometheusRule": {"alerts": {"authFailures": {"failures": -1}}}}, "failures"),
])
def test_schema_rejects(chart, values, key):
    with pytest.raises(helm.HelmValuesError) as e:
        chart.validate_schema(values)
    assert key in str(e.value), str(e.value)


# --- promtool: the parser ---------------------------------------------------------------------


@pytest.mark.parametrize("values", [
    {},
    {"aggregator": {"enabled": False}},
    {"check_api_server_direct": False, "check_neighbourhood": False},
    {"prometheusRule": {"interval": "30s", "ruleLabels": {"team": "net"},
                        "agentSelector": 'job=~"kubenurse|nurse", cluster="c1"',
                        "alerts": {"pathLatencyHigh": {"p99Seconds": 0.000001, "window": "1h"},
                                   "ingestRejections": {"rejections": 1000000}}}},
], ids=["default", "aggregator-off", "checks-off", "custom"])
def test_promtool_check_rules_passes(render, promtool, tmp_path, values):
    groups = groups_of(render, values)
    count = sum(len(g["rules"]) for g in groups)
    result = promtool_run(promtool, "check", "rules", write_rules(tmp_path, groups))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {count} rules found" in result.stdout


@pytest.mark.parametrize("where,broken", [
    ("expr", lambda e: e.replace(")", "", 1)),                 # unbalanced
    ("expr", lambda e: f"nosuchfunction({e})"),
    ("expr", lambda e: e + " > on"),
    ("description", lambda d: d.replace("}}", "", 1)),        # an unclosed template action
    ("summary", lambda s: s + " {{ $labels.node | nosuchfunction }}"),
], ids=["unbalanced", "unknown-function", "dangling-operator", "unclosed-template", "unknown-template-function"])
def test_a_broken_rule_fails_promtool_check(render, promtool, tmp_path, where, broken):
    """Negative control: every alert, broken, makes promtool check rules fail."""
    good = groups_of(render)
    for name in ALL_ALERTS:
        groups = copy.deepcopy(good)
        rule = rules_by_alert(groups)[name]
        target = rule if where == "expr" else rule["annotations"]
        before = target[where]
        target[where] = broken(before)
        assert target[where] != before, name
        result = promtool_run(promtool, "check", "rules", write_rules(tmp_path, groups))
        assert result.returncode != 0, f"{name}: broken {where} passed promtool check rules"


# --- promtool: the engine on the scenarios ----------------------------------------------------


@pytest.mark.parametrize("test_file", UNIT_TESTS, ids=lambda p: p.name.removesuffix(".test.yaml"))
def test_promtool_unit_tests_pass(render, promtool, tmp_path, test_file):
    result = run_unit_tests(promtool, tmp_path, plain_groups(render), [test_file])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def unit_test_cases() -> list[tuple[str, str, dict[str, Any]]]:
    """(file, test name, alert_rule_test) of every alert test case."""
    out = []
    for path in UNIT_TESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for t in doc["tests"]:
            for case in t.get("alert_rule_test", []):
                out.append((path.name, t.get("name", ""), case))
    return out


def test_every_alert_has_scenarios_that_fire_it_and_that_must_not():
    cases = unit_test_cases()
    assert len(UNIT_TESTS) >= 10
    for name in ALL_ALERTS:
        fire = [c for c in cases if c[2]["alertname"] == name and c[2].get("exp_alerts")]
        quiet = [c for c in cases if c[2]["alertname"] == name and not c[2].get("exp_alerts")
                 and c[0] != "cluster.test.yaml"]
        assert fire, f"{name}: no scenario fires it"
        assert quiet, f"{name}: no scenario of its own that must not fire it"
        for _, _, case in fire:
            for alert in case["exp_alerts"]:
                assert set(alert.get("exp_annotations", {})) == {"summary", "description", "runbook_url"}, name
    # The whole-cluster scenarios (healthy, a single bad link) assert every alert stays quiet.
    cluster = yaml.safe_load((HERE / "alerts" / "cluster.test.yaml").read_text(encoding="utf-8"))
    assert [t["name"] for t in cluster["tests"]] == ["a healthy cluster fires nothing", "a single bad link fires nothing"]
    for t in cluster["tests"]:
        quiet = {c["alertname"] for c in t["alert_rule_test"] if c["exp_alerts"] == []}
        assert quiet == set(ALL_ALERTS), t["name"]


@pytest.mark.parametrize("mutation", ["never fires", "always fires"])
def test_a_broken_alert_fails_the_unit_tests(render, promtool, tmp_path, mutation):
    """Negative control: an alert that never fires (or always does) fails its own scenarios, by name."""
    good = plain_groups(render)
    cases = unit_test_cases()
    for name in ALL_ALERTS:
        groups = copy.deepcopy(good)
        rules_by_alert(groups)[name]["expr"] = "absent(vector(1))" if mutation == "never fires" else "vector(1)"
        own = sorted({f for f, _, c in cases if c["alertname"] == name and f != "cluster.test.yaml"})
        result = run_unit_tests(promtool, tmp_path, groups, [HERE / "alerts" / f for f in own])
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"{name} {mutation}: every unit test still passes"
        assert f"alertname: {name}," in output, f"{name} {mutation}: not named in\n{output[-2000:]}"


@pytest.mark.parametrize("values,test_file,scenario", [
    # 1 bad link of 3 is 33 %: above a 30 % threshold the single-link scenario fires.
    ({"prometheusRule": {"alerts": {"pathErrorsHigh": {"errorRatio": 0.3}}}}, "path-errors", "a single bad link"),
    # A 4-minute outage held for 3 minutes fires.
    ({"prometheusRule": {"alerts": {"agentDown": {"for": "3m"}}}}, "agent-down", "a flapping scrape"),
    # Checks at up to 0.45 s are above a 0.25 s threshold.
    ({"prometheusRule": {"alerts": {"pathLatencyHigh": {"p99Seconds": 0.25}}}}, "path-latency", "below the threshold"),
    # 8 % failed attempts are above 5 %.
    ({"prometheusRule": {"alerts": {"apiServerChecksFailing": {"errorRatio": 0.05}}}}, "api-server-checks", "flapping"),
    # A burst of 20 rejections is above 10.
    ({"prometheusRule": {"alerts": {"ingestRejections": {"rejections": 10}}}}, "ingest-auth", "a burst"),
])
def test_thresholds_from_values_change_what_fires(render, promtool, tmp_path, values, test_file, scenario):
    """The values are the thresholds the engine applies: lowered, a quiet scenario fires."""
    path = HERE / "alerts" / f"{test_file}.test.yaml"
    assert run_unit_tests(promtool, tmp_path, plain_groups(render), [path]).returncode == 0
    groups = groups_of(render, values, name=PLAIN_RELEASE, namespace=PLAIN_NAMESPACE)
    result = run_unit_tests(promtool, tmp_path, groups, [path])
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert scenario in output, output


# --- annotations and runbooks ------------------------------------------------------------------


def test_every_alert_has_annotations_and_a_runbook_section(render):
    groups = groups_of(render)
    assert set(rules_by_alert(groups)) == set(ALL_ALERTS)
    doc = ALERTS_DOC.read_text(encoding="utf-8")
    assert runbook_problems(groups, doc) == []
    for name, rule in rules_by_alert(groups).items():
        assert rule["annotations"]["runbook_url"] == (
            f"https://github.com/kubenurse-rs/kubenurse-rs/blob/main/docs/alerts.md#{name.lower()}")
        assert rule["labels"]["severity"] in {"warning", "critical"}
    # One section per alert, nothing else at that level but the introduction's.
    alert_sections = {a for a in doc_sections(doc) if a.startswith("kubenurse")}
    assert alert_sections == {n.lower() for n in ALL_ALERTS}


def test_a_missing_runbook_section_is_caught(render):
    """Negative control: a section removed, renamed or incomplete, an annotation dropped."""
    groups = groups_of(render)
    doc = ALERTS_DOC.read_text(encoding="utf-8")
    removed = re.sub(r"^## KubenurseAuthFailures$.*?(?=^## |\Z)", "", doc, flags=re.M | re.S)
    assert removed != doc
    assert runbook_problems(groups, removed) == ["KubenurseAuthFailures: no section #kubenurseauthfailures in docs/alerts.md"]
    renamed = doc.replace("## KubenurseAgentDown", "## Kubenurse agent down")
    assert "KubenurseAgentDown: no section #kubenurseagentdown in docs/alerts.md" in runbook_problems(groups, renamed)
    incomplete = doc.replace("**How to confirm**", "**Confirm**", 1)
    assert len(runbook_problems(groups, incomplete)) == 1
    bare = copy.deepcopy(groups)
    del rules_by_alert(bare)["KubenurseNetworkSuspect"]["annotations"]["summary"]
    rules_by_alert(bare)["KubenursePathErrorsHigh"]["annotations"]["description"] = "Path checks fail."
    rules_by_alert(bare)["KubenurseAgentDown"]["annotations"]["runbook_url"] = "https://example.com/#kubenurseagent"
    assert sorted(runbook_problems(bare, doc)) == [
        "KubenurseAgentDown: no section #kubenurseagent in docs/alerts.md",
        "KubenurseAgentDown: runbook_url https://example.com/#kubenurseagent does not end in #kubenurseagentdown",
        "KubenurseNetworkSuspect: no summary",
        "KubenursePathErrorsHigh: the description cites no evidence ($value, $labels)",
    ]


def test_github_anchors():
    assert github_anchor("KubenurseAgentDown") == "kubenurseagentdown"
    assert github_anchor("What the alerts see ") == "what-the-alerts-see"
    assert github_anchor("Labels, severities & values") == "labels-severities--values"


# --- metric names and labels --------------------------------------------------------------------


def test_rules_use_only_metrics_and_labels_the_code_exports(render):
    exported = exported_metric_labels()
    assert exported["kubenurse_aggregator_suspects"] == {"kind", "cause"} | TARGET_LABELS
    assert exported["kubenurse_httpclient_requests_total"] == {"type", "code"} | AGENT_TARGET_LABELS
    assert exported["kubenurse_aggregator_connected_agents"] == TARGET_LABELS
    assert exported["kubenurse_aggregator_connected"] == AGENT_TARGET_LABELS  # the agents' stream gauge
    problems = []
    for name, rule in rules_by_alert(groups_of(render)).items():
        problems += metric_problems(rule["expr"], exported, name)
    assert problems == []


def test_unit_tests_feed_only_series_the_code_exports():
    exported = exported_metric_labels()
    problems = []
    for path in UNIT_TESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for t in doc["tests"]:
            for s in t["input_series"]:
                problems += metric_problems(s["series"], exported, f"{path.name} / {t['name']}")
    assert problems == []


def test_the_metric_check_catches_mistakes():
    """Negative control: an unknown metric, a label it does not have, a grouping nobody has."""
    exported = exported_metric_labels()
    assert metric_problems('kubenurse_aggregator_suspects{node="a"} > 0', exported, "x") == [
        "x: kubenurse_aggregator_suspects has no label node"]
    assert metric_problems("kubenurse_aggregator_coverage_ratio < 1", exported, "x") == [
        "x: kubenurse_aggregator_coverage_ratio is not exported by the code"]
    assert exported["kubenurse_matrix_p99_seconds"] == {"src", "dst"} | TARGET_LABELS
    assert metric_problems('max by (dst) (kubenurse_matrix_error_ratio{src="a"})', exported, "x") == []
    assert metric_problems("sum by (peer) (rate(kubenurse_errors_total[5m]))", exported, "x") == [
        "x: no metric has the label peer it groups by"]
    assert metric_problems('kubenurse_httpclient_request_duration_seconds_bucket{le="1", type="a"}', exported, "x") == []


def test_pending_metrics_are_not_exported_yet():
    exported = exported_metric_labels()
    for metric, meaning in PENDING_METRICS.items():
        assert metric not in exported, (
            f"{metric} is exported now: drop it from PENDING_METRICS in {Path(__file__).name} ({meaning})")


# --- the plain rules file ------------------------------------------------------------------------


def test_checked_in_rules_file_is_the_chart(render, request):
    groups = plain_groups(render)
    expected = rules_file_text(groups)
    if request.config.getoption("--update-alerts"):
        RULES_FILE.parent.mkdir(exist_ok=True)
        RULES_FILE.write_text(expected, encoding="utf-8")
    assert RULES_FILE.exists(), f"{RULES_FILE.relative_to(REPO)} is missing: run {REGENERATE}"
    text = RULES_FILE.read_text(encoding="utf-8")
    assert yaml.safe_load(text) == {"groups": groups}, (
        f"{RULES_FILE.relative_to(REPO)} differs from the chart's rules: run {REGENERATE}")
    assert text == expected, f"{RULES_FILE.relative_to(REPO)} is not formatted as generated: run {REGENERATE}"


def test_checked_in_rules_file_passes_promtool(promtool):
    result = promtool_run(promtool, "check", "rules", RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALL_ALERTS)} rules found" in result.stdout
    # The unit tests load it as they are checked in (promtool test rules tests/chart/alerts/*.test.yaml).
    result = promtool_run(promtool, "test", "rules", *UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_stale_rules_file_is_caught(render):
    """Negative control: a changed threshold in the chart no longer matches the checked-in file."""
    text = RULES_FILE.read_text(encoding="utf-8")
    changed = groups_of(render, {"prometheusRule": {"alerts": {"pathErrorsHigh": {"errorRatio": 0.6}}}},
                        name=PLAIN_RELEASE, namespace=PLAIN_NAMESPACE)
    assert yaml.safe_load(text) != {"groups": changed}
    assert yaml.safe_load(text) != {"groups": groups_of(render)}  # another release's selectors
