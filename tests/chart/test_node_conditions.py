"""aggregator.nodeConditions: the aggregator's Node conditions and Events (off by default).

mode dry-run: the aggregator lists the Nodes, plans, logs and counts; no Lease, no writes.
mode on: it also patches nodes/status, holds the Lease kubenurse-aggregator-node-conditions in
the release namespace and writes events.k8s.io Events, the Nodes' in namespace default and the
Lease's in the release namespace. The chart gives it exactly that, only while the mode is not off.
"""

from __future__ import annotations

import json
import re
import shutil
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from conftest import CHART_DIR, NAMESPACE, RELEASE, REPO, env_map
from test_chart import AGGREGATOR_GRANTS, KUBE_VERSIONS, NODE_CONDITIONS_DRY_RUN_VALUES, \
    NODE_CONDITIONS_ON_VALUES, deep_merge, grants

LEASE = "kubenurse-aggregator-node-conditions"
ENV = ("KUBENURSE_AGGREGATOR_NODE_CONDITIONS", "KUBENURSE_AGGREGATOR_NODE_CONDITIONS_MAX_SHARE",
       "KUBENURSE_AGGREGATOR_NODE_CONDITIONS_MIN_HOLD")
RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
ON = {"aggregator": {"nodeConditions": {"mode": "on"}}}


def nc(**values: Any) -> dict[str, Any]:
    return {"aggregator": {"nodeConditions": values}}


def aggregator_sa(r) -> str:
    return r.aggregator()["spec"]["template"]["spec"]["serviceAccountName"]


def node_conditions_objects(r) -> list[tuple[str, str, str | None]]:
    """(kind, name, namespace) of the node-condition RBAC objects."""
    return sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in r.objects
                  if o["kind"] in RBAC_KINDS and "node-conditions" in o["metadata"]["name"])


def role_of(r, binding: dict[str, Any]) -> dict[str, Any]:
    """The Role (in the binding's namespace) or ClusterRole a binding refers to."""
    ref = binding["roleRef"]
    assert ref["apiGroup"] == "rbac.authorization.k8s.io"
    found = [o for o in r.all(ref["kind"]) if o["metadata"]["name"] == ref["name"]
             and (ref["kind"] == "ClusterRole" or o["metadata"]["namespace"] == binding["metadata"]["namespace"])]
    assert len(found) == 1, (binding["metadata"], found)
    return found[0]


def rules(r, sa: str, namespace: str = NAMESPACE) -> set[tuple[str, str, str, str, str | None]]:
    """Every (scope, apiGroup, resource, verb, resourceName or None) the release's RBAC gives
    ServiceAccount `sa` of `namespace`: scope is the RoleBinding's namespace, "cluster" for a
    ClusterRoleBinding. Unlike test_chart.grants, resourceNames are allowed (and kept)."""
    out = set()
    for b in r.all("RoleBinding") + r.all("ClusterRoleBinding"):
        if {"kind": "ServiceAccount", "name": sa, "namespace": namespace} not in b["subjects"]:
            continue
        scope = b["metadata"]["namespace"] if b["kind"] == "RoleBinding" else "cluster"
        for rule in role_of(r, b)["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
            names = rule.get("resourceNames") or [None]
            out |= {(scope, g, res, v, n) for g in rule["apiGroups"] for res in rule["resources"]
                    for v in rule["verbs"] for n in names}
    return out


def unnamed(grant_set: set[tuple[str, str, str, str]]) -> set[tuple[str, str, str, str, None]]:
    return {(*g, None) for g in grant_set}


# What the node conditions add to the aggregator's default grants (TokenReview, pushed discovery).
DRY_RUN_RULES = {("cluster", "", "nodes", "list", None)}


def on_rules(namespace: str) -> set[tuple[str, str, str, str, str | None]]:
    out = DRY_RUN_RULES | {
        ("cluster", "", "nodes/status", "patch", None),
        (namespace, "coordination.k8s.io", "leases", "create", None),
        (namespace, "coordination.k8s.io", "leases", "get", LEASE),
        (namespace, "coordination.k8s.io", "leases", "update", LEASE),
        (namespace, "events.k8s.io", "events", "create", None),
        (namespace, "events.k8s.io", "events", "patch", None),
    }
    return out | {("default", "events.k8s.io", "events", v, None) for v in ("create", "patch")}


def validate(objects: list[dict[str, Any]]) -> None:
    for version in KUBE_VERSIONS:
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{version} {obj['kind']}/{obj['metadata']['name']}: {e.message} at {list(e.path)}")


# --- off (the default) -----------------------------------------------------------------------


@pytest.mark.parametrize("values", [
    nc(mode="off"),
    nc(mode="off", maxShare=0.5, minHold="1h"),
    {"aggregator": {"nodeConditions": None}},
    {"aggregator": {"enabled": False, "nodeConditions": {"mode": "on"}}},
], ids=["explicit-off", "off-with-settings", "null", "aggregator-off"])
def test_off_renders_nothing(render, values):
    default = render() if values["aggregator"].get("enabled", True) else render({"aggregator": {"enabled": False}})
    r = render(values)
    # The same manifests as without the values: no variables, no RBAC, no rollout on upgrade.
    assert r.manifests == default.manifests
    assert node_conditions_objects(r) == []
    if r.all("Deployment"):
        assert not set(ENV) & set(env_map(r.aggregator_container()))
        sa = aggregator_sa(r)
        assert not {g for g in rules(r, sa) if g[2] in ("nodes/status", "leases", "events")}
    assert "Node conditions" not in r.notes


def test_default_has_no_node_condition_env_or_rbac(render):
    r = render()
    assert not set(ENV) & set(env_map(r.aggregator_container()))
    assert node_conditions_objects(r) == []
    assert rules(r, aggregator_sa(r)) == unnamed(AGGREGATOR_GRANTS)


# --- on ----------------------------------------------------------------------------------------


def test_on_sets_the_variables(render):
    env = env_map(render(NODE_CONDITIONS_ON_VALUES).aggregator_container())
    assert [env[n] for n in ENV] == ["on", "0.25", "10m"]
    # The defaults, the aggregator's own (test_defaults_match_the_aggregator).
    env = env_map(render(ON).aggregator_container())
    assert [env[n] for n in ENV] == ["on", "0.1", "5m"]
    env = env_map(render(nc(mode="on", maxShare=1, minHold="1h30m")).aggregator_container())
    assert [env[n] for n in ENV] == ["on", "1", "1h30m"]


def test_set_flag_values_reach_the_aggregator(chart, render):
    """`--set` leaves a decimal a string: the schema takes it, the variable gets it as given."""
    values = helm.parse_set_string("aggregator.nodeConditions.mode=on,aggregator.nodeConditions.maxShare=0.05,"
                                   "aggregator.nodeConditions.minHold=90s")
    assert values["aggregator"]["nodeConditions"]["maxShare"] == "0.05"
    chart.validate_schema(values)
    env = env_map(render(values).aggregator_container())
    assert [env[n] for n in ENV] == ["on", "0.05", "90s"]


@pytest.mark.parametrize("name,namespace", [(RELEASE, NAMESPACE), ("kubenurse", "kube-system")])
def test_on_grants_exactly_what_the_aggregator_writes(render, name, namespace):
    r = render(ON, name=name, namespace=namespace)
    full = f"{name}-kubenurse-aggregator" if name != "kubenurse" else "kubenurse-aggregator"
    in_default = f"{namespace}-{full}-node-conditions"  # cluster-scoped and in default: namespace in the name
    assert node_conditions_objects(r) == sorted([
        ("ClusterRole", in_default, None),
        ("ClusterRoleBinding", in_default, None),
        ("Role", f"{full}-node-conditions", namespace),
        ("Role", in_default, "default"),
        ("RoleBinding", f"{full}-node-conditions", namespace),
        ("RoleBinding", in_default, "default"),
    ])
    sa = aggregator_sa(r)
    default_grants = {(namespace if s == NAMESPACE else s, g, res, v) for s, g, res, v in AGGREGATOR_GRANTS}
    assert rules(r, sa, namespace) == unnamed(default_grants) | on_rules(namespace)
    # The rules as written: the Lease by name for get/update, create unnamed (it cannot be named).
    role = r.one("Role", f"{full}-node-conditions")
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [LEASE],
         "verbs": ["get", "update"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    assert r.one("Role", in_default)["rules"] == [
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}]
    assert r.one("ClusterRole", in_default)["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
    ]
    # Every binding names the aggregator's service account, and only it.
    for kind, obj_name, _ in node_conditions_objects(r):
        if kind.endswith("Binding"):
            for b in r.all(kind):
                if b["metadata"]["name"] == obj_name:
                    assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]
    # The agents get nothing of it.
    agent_sa = r.agent()["spec"]["template"]["spec"]["serviceAccountName"]
    assert not {g for g in rules(r, agent_sa, namespace) if g[2] in ("nodes/status", "leases", "events")}
    validate([o for o in r.objects if o["kind"] in RBAC_KINDS])


@pytest.mark.parametrize("values", [ON, NODE_CONDITIONS_ON_VALUES, NODE_CONDITIONS_DRY_RUN_VALUES,
                                    deep_merge(ON, {"aggregator": {"auth": {"mode": "none"}}})],
                         ids=["on", "on-settings", "dry-run", "on-auth-none"])
def test_least_privilege(render, values):
    r = render(values)
    everything = rules(r, aggregator_sa(r))
    # Events only per namespace (never cluster-wide), only create and patch, in the release
    # namespace and default only.
    events = {(s, v) for s, g, res, v, _ in everything if res == "events"}
    assert all(s in (NAMESPACE, "default") for s, _ in events), events
    assert {v for _, v in events} <= {"create", "patch"}
    for cr in r.all("ClusterRole"):
        for rule in cr["rules"]:
            assert "events" not in rule["resources"], cr["metadata"]["name"]
    # nodes/status: patch only; the Nodes themselves are only read.
    assert {v for _, _, res, v, _ in everything if res == "nodes/status"} <= {"patch"}
    assert {v for _, _, res, v, _ in everything if res == "nodes"} <= {"get", "list", "watch"}
    # Leases only in the release namespace; get and update only on the aggregator's Lease.
    for s, g, res, v, n in everything:
        if res == "leases":
            assert (s, g) == (NAMESPACE, "coordination.k8s.io")
            assert (v, n) in {("create", None), ("get", LEASE), ("update", LEASE)}
    # No wildcard, no other group or resource than the aggregator's.
    for s, g, res, v, n in everything:
        assert "*" not in (g, res, v), (s, g, res, v)
    assert {(g, res) for _, g, res, _, _ in everything} <= {
        ("authentication.k8s.io", "tokenreviews"), ("", "pods"), ("", "nodes"), ("", "nodes/status"),
        ("coordination.k8s.io", "leases"), ("events.k8s.io", "events")}


def test_on_in_namespace_default_needs_one_role(render):
    """Release namespace default: its Role already covers the Nodes' Events."""
    r = render(ON, namespace="default")
    assert node_conditions_objects(r) == sorted([
        ("ClusterRole", f"default-{RELEASE}-kubenurse-aggregator-node-conditions", None),
        ("ClusterRoleBinding", f"default-{RELEASE}-kubenurse-aggregator-node-conditions", None),
        ("Role", f"{RELEASE}-kubenurse-aggregator-node-conditions", "default"),
        ("RoleBinding", f"{RELEASE}-kubenurse-aggregator-node-conditions", "default"),
    ])
    default_grants = {("default" if s == NAMESPACE else s, g, res, v) for s, g, res, v in AGGREGATOR_GRANTS}
    assert rules(r, aggregator_sa(r), "default") == unnamed(default_grants) | on_rules("default")
    assert r.one("Role", f"{RELEASE}-kubenurse-aggregator-node-conditions")["rules"][-1] == {
        "apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}
    validate([o for o in r.objects if o["kind"] in RBAC_KINDS])


def test_existing_service_account_is_the_subject(render):
    r = render(deep_merge(ON, {"serviceAccount": {"create": False, "name": "existing"}}))
    assert aggregator_sa(r) == "default"
    assert rules(r, "default") == unnamed(AGGREGATOR_GRANTS) | on_rules(NAMESPACE)
    assert not {g for g in rules(r, "existing") if g[2] in ("nodes/status", "leases", "events")}


def test_node_conditions_alone_give_the_aggregator_its_token(render):
    """Without TokenReview and pushed discovery the node conditions are its only API use: a
    token, and their RBAC only (aggregator-rbac.yaml is left out, not rendered empty)."""
    base = {"aggregator": {"auth": {"mode": "none"}, "discovery": {"enabled": False}}}
    off = render(base)
    assert off.aggregator()["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    for mode, expected in (("on", on_rules(NAMESPACE)), ("dry-run", DRY_RUN_RULES)):
        r = render(deep_merge(base, nc(mode=mode)))
        sa = aggregator_sa(r)
        assert r.aggregator()["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
        assert r.one("ServiceAccount", sa)["automountServiceAccountToken"] is True
        assert rules(r, sa) == expected
        assert [o for o in r.objects if o["kind"] in RBAC_KINDS
                and o["metadata"]["labels"]["app.kubernetes.io/component"] == "aggregator"
                and "node-conditions" not in o["metadata"]["name"]] == []
        validate(r.objects)


def test_notes_show_how_to_see_them(render):
    notes = render(ON).notes
    assert "Node conditions: the replica holding the Lease kubenurse-aggregator-node-conditions" in notes
    assert ("kubectl get nodes -o custom-columns='NAME:.metadata.name,"
            "NETWORK:.status.conditions[?(@.type==\"KubenurseNetworkProblem\")].status,"
            "REASON:.status.conditions[?(@.type==\"KubenurseNetworkProblem\")].reason'") in notes
    assert "kubectl get events.events.k8s.io -n default --field-selector reportingController=kubenurse-aggregator" in notes
    assert "at most 0.25 of the nodes at once, each held at least 10m" in render(NODE_CONDITIONS_ON_VALUES).notes
    dry = render(NODE_CONDITIONS_DRY_RUN_VALUES).notes
    assert "Node conditions (dry-run): nothing is written" in dry and "custom-columns" not in dry


# --- dry-run ---------------------------------------------------------------------------------


def test_dry_run_only_lists_nodes(render):
    r = render(NODE_CONDITIONS_DRY_RUN_VALUES)
    env = env_map(r.aggregator_container())
    assert [env[n] for n in ENV] == ["dry-run", "0.1", "5m"]
    name = f"{NAMESPACE}-{RELEASE}-kubenurse-aggregator-node-conditions"
    assert node_conditions_objects(r) == [("ClusterRole", name, None), ("ClusterRoleBinding", name, None)]
    assert r.one("ClusterRole", name)["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]
    assert r.one("ClusterRoleBinding", name)["subjects"] == [
        {"kind": "ServiceAccount", "name": aggregator_sa(r), "namespace": NAMESPACE}]
    assert rules(r, aggregator_sa(r)) == unnamed(AGGREGATOR_GRANTS) | DRY_RUN_RULES
    # No Lease, no writes, nothing outside the release namespace.
    assert not [o for o in r.objects if o["metadata"].get("namespace") == "default"]
    validate([o for o in r.objects if o["kind"] in RBAC_KINDS])


# --- values.schema.json ----------------------------------------------------------------------


@pytest.mark.parametrize("values,key", [
    (nc(mode="maybe"), "mode"),
    (nc(mode=""), "mode"),
    (nc(mode="On"), "mode"),
    (nc(mode="dryrun"), "mode"),
    (nc(mode=True), "mode"),    # a bare `mode: on` in a values file
    (nc(mode=False), "mode"),   # a bare `mode: off`
    (nc(maxShare=0), "maxShare"),
    (nc(maxShare=0.0), "maxShare"),
    (nc(maxShare=-0.1), "maxShare"),
    (nc(maxShare=1.5), "maxShare"),
    (nc(maxShare=2), "maxShare"),
    (nc(maxShare="0"), "maxShare"),
    (nc(maxShare="0.0"), "maxShare"),
    (nc(maxShare="1.5"), "maxShare"),
    (nc(maxShare="10%"), "maxShare"),
    (nc(maxShare="ten"), "maxShare"),
    (nc(maxShare=True), "maxShare"),
    (nc(minHold="5 minutes"), "minHold"),
    (nc(minHold="5"), "minHold"),
    (nc(minHold=300), "minHold"),
    (nc(minHold="0s"), "minHold"),   # the aggregator wants a duration above zero
    (nc(minHold="0"), "minHold"),
    (nc(minHold=""), "minHold"),
    (nc(max_share=0.2), "max_share"),
    ({"aggregator": {"nodeConditions": "on"}}, "nodeConditions"),
])
def test_schema_rejects(chart, values, key):
    with pytest.raises(helm.HelmValuesError) as e:
        chart.validate_schema(values)
    assert "/aggregator/nodeConditions" in str(e.value) and key in str(e.value), str(e.value)
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("values", [
    nc(mode="off"), nc(mode="dry-run"), nc(mode="on"),
    nc(maxShare=1), nc(maxShare=1.0), nc(maxShare=0.001), nc(maxShare="0.25"), nc(maxShare=".5"), nc(maxShare="1"),
    nc(minHold="90s"), nc(minHold="1h30m"), nc(minHold="1.5m"), nc(minHold="500ms"),
    helm.values_from_yaml('aggregator:\n  nodeConditions:\n    mode: "on"\n    maxShare: 0.3\n    minHold: 2m\n'),
])
def test_schema_accepts(chart, values):
    chart.validate_schema(values)


@pytest.mark.parametrize("mode", [True, False, "maybe"])
def test_template_rejects_a_bad_mode(tmp_path, mode):
    """The same check in the template, for renders that skip values.schema.json: a bare on/off
    (a YAML boolean) is neither silently on nor silently off."""
    copy_dir = tmp_path / "kubenurse"
    shutil.copytree(CHART_DIR, copy_dir)
    (copy_dir / "values.schema.json").unlink()
    with helm.Chart.load(copy_dir) as c:
        with pytest.raises(helm.HelmError) as e:
            c.render(nc(mode=mode), name=RELEASE, namespace=NAMESPACE)
        assert "aggregator.nodeConditions.mode must be" in str(e.value), str(e.value)
        assert f"not {str(mode).lower()}" in str(e.value), str(e.value)
        c.render(nc(mode="on"), name=RELEASE, namespace=NAMESPACE)  # the check itself passes good values


# --- the chart and the aggregator agree --------------------------------------------------------


def rust(path: str) -> str:
    return (REPO / path).read_text(encoding="utf-8")


def test_defaults_match_the_aggregator():
    """Names and defaults the chart repeats are the aggregator's own (aggregator/src)."""
    config = rust("aggregator/src/config.rs")
    flags = dict(re.findall(r'env = "(KUBENURSE_AGGREGATOR_NODE_CONDITIONS[A-Z_]*)"[^)]*?default_value(?:_t)? = ([^,)]+)',
                            config))
    assert set(flags) == set(ENV), flags
    assert flags["KUBENURSE_AGGREGATOR_NODE_CONDITIONS"] == "NodeConditionsMode::Off"
    values = helm.values_from_yaml((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))["aggregator"]["nodeConditions"]
    assert values == {"mode": "off", "maxShare": 0.1, "minHold": "5m"}
    assert flags["KUBENURSE_AGGREGATOR_NODE_CONDITIONS_MAX_SHARE"] == f'"{values["maxShare"]}"'
    assert flags["KUBENURSE_AGGREGATOR_NODE_CONDITIONS_MIN_HOLD"] == f'"{values["minHold"]}"'
    # The modes the schema allows are the aggregator's (clap's value names).
    conditions = rust("aggregator/src/conditions/mod.rs")
    modes = re.findall(r'Self::\w+ => "([a-z-]+)"', conditions)
    schema = chart_schema()["properties"]["aggregator"]["properties"]["nodeConditions"]["properties"]
    assert sorted(modes) == sorted(schema["mode"]["enum"]) == ["dry-run", "off", "on"]
    # The Lease the Role names, and the reportingController NOTES filters on.
    assert re.search(rf'pub const LEASE_NAME: &str = "{LEASE}";', rust("aggregator/src/conditions/lease.rs"))
    assert re.search(r'pub const CONTROLLER: &str = "kubenurse-aggregator";', conditions)
    assert re.search(r'pub const CONDITION_TYPE: &str = "KubenurseNetworkProblem";', rust_all_conditions())


def chart_schema() -> dict[str, Any]:
    return json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))


def rust_all_conditions() -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "aggregator/src/conditions").glob("*.rs")))
