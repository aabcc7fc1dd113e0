"""charts/kubenurse rendered and linted by the real Helm engine, every object validated
against the Kubernetes schemas, and the facts the agents and the aggregator rely on."""

from __future__ import annotations

import copy
import posixpath
import shutil
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import CHART_DIR, NAMESPACE, RELEASE, container, deep_merge, env_map, selects, values_file

# Kubernetes versions whose schemas every object must satisfy (strict: no unknown fields):
# the oldest kubernetes-validate ships at or above the chart's kubeVersion floor worth
# supporting, and the newest it ships.
KUBE_VERSIONS = ["1.31.0", "1.37.0"]

TLS_VALUES = {
    "use_tls": True,
    "cert_file": "/etc/kubenurse/tls/tls.crt",
    "cert_key": "/etc/kubenurse/tls/tls.key",
    "daemonset": {
        "volumes": [{"name": "tls", "secret": {"secretName": "kubenurse-tls"}}],
        "volumeMounts": [{"name": "tls", "mountPath": "/etc/kubenurse/tls", "readOnly": True}],
    },
}

AGGREGATOR_TLS_VALUES = {"aggregator": {"tls": {"enabled": True, "secretName": "aggregator-tls"}}}

# aggregator.auth: tokenreview is the default; mtls needs aggregator.tls, a client CA and a volume
# with each agent's client certificate (here the shape of a cert-manager csi-driver volume).
AGENT_CERT_VOLUME = {"csi": {"driver": "csi.cert-manager.io", "readOnly": True,
                             "volumeAttributes": {"csi.cert-manager.io/issuer-name": "kubenurse-agents",
                                                  "csi.cert-manager.io/fs-group": "65532"}}}
MTLS_VALUES = {"aggregator": {"tls": {"enabled": True, "secretName": "aggregator-tls"},
                              "auth": {"mode": "mtls", "mtls": {"clientCaSecretName": "agents-ca",
                                                                "agentCertVolume": AGENT_CERT_VOLUME}}}}
AUTH_NONE_VALUES = {"aggregator": {"auth": {"mode": "none"}}}

# Pushed discovery: on by default (agents in discovery.mode auto); off, the agents discover locally.
DISCOVERY_OFF_VALUES = {"aggregator": {"discovery": {"enabled": False}}}
PUSHED_ONLY_VALUES = {"discovery": {"mode": "aggregator"}}

# Node conditions (aggregator.nodeConditions, off by default): dry-run only lists Nodes; on writes.
NODE_CONDITIONS_DRY_RUN_VALUES = {"aggregator": {"nodeConditions": {"mode": "dry-run"}}}
NODE_CONDITIONS_ON_VALUES = {"aggregator": {"nodeConditions": {"mode": "on", "maxShare": 0.25, "minHold": "10m"}}}

EVERYTHING_VALUES = {
    **TLS_VALUES,
    "serviceMonitor": {"enabled": True, "serviceDiscoveryRole": "EndpointSlice", "scrapeTimeout": "10s"},
    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}, "interval": "30s"},
    "networkPolicy": {"enabled": True},
    "ingress": {"enabled": True, "url": "nurse.example.com"},
    "allow_unschedulable": True,
    "neighbour_limit": 7,
    "neighbour_filter": "app.kubernetes.io/name=kubenurse,team=net",
    "discovery": {"mode": "auto", "fallbackAfter": "2m30s"},
    "udp": {"port": 9081, "packets": 20},
    "aggregator": {"replicas": 3, "extraEnvs": [{"name": "RUST_LOG", "value": "info"}],
                   "nodeConditions": {"mode": "on", "maxShare": 0.2, "minHold": "15m"},
                   "tls": {"enabled": True, "secretName": "aggregator-tls", "caSecretName": "trust",
                           "caKey": "bundle.pem"},
                   "auth": {"audience": "https://nurse.example.com/aggregator", "tokenExpirationSeconds": 7200}},
}

SCENARIOS: dict[str, Any] = {
    "default": {},
    "upstream": "upstream-values.yaml",
    "aggregator-off": {"aggregator": {"enabled": False}},
    "tls": TLS_VALUES,
    "aggregator-tls": AGGREGATOR_TLS_VALUES,
    "auth-none": AUTH_NONE_VALUES,
    "mtls": MTLS_VALUES,
    "discovery-off": DISCOVERY_OFF_VALUES,
    "pushed-only": PUSHED_ONLY_VALUES,
    "node-conditions-dry-run": NODE_CONDITIONS_DRY_RUN_VALUES,
    "node-conditions-on": NODE_CONDITIONS_ON_VALUES,
    # The aggregator's only API use: node conditions (no TokenReview, no pushed discovery).
    "node-conditions-only": {"aggregator": {"nodeConditions": {"mode": "on"}, "auth": {"mode": "none"},
                                            "discovery": {"enabled": False}}},
    "servicemonitor": {"serviceMonitor": {"enabled": True}},
    "prometheusrule": {"prometheusRule": {"enabled": True}},
    "everything": EVERYTHING_VALUES,
    # The UDP probe off: the echo port stays on the pods, the Service and NetworkPolicy drop it (test_udp.py).
    "udp-off": {"udp": {"enabled": False}, "networkPolicy": {"enabled": True}},
    "helm-test": {"helmTest": {"wait": "30s", "expectNodes": 5, "deletePolicy": "before-hook-creation",
                               "podLabels": {"team": "net"}, "nodeSelector": {"kubernetes.io/os": "linux"},
                               "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]},
                  "networkPolicy": {"enabled": True}},
}


def scenario_values(name: str) -> dict[str, Any]:
    v = SCENARIOS[name]
    return values_file(v) if isinstance(v, str) else v



@pytest.fixture(params=sorted(SCENARIOS))
def scenario(request, render):
    return request.param, render(scenario_values(request.param))


# --- lint and schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_lint_is_clean(name):
    report = helm.lint(CHART_DIR, scenario_values(name), strict=True, namespace=NAMESPACE,
                       kube_version="v1.31.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["total_charts_linted"] == 1
    assert not problems and not report["errors"], problems or report["errors"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(scenario, kube_version):
    _, r = scenario
    checked = 0
    for obj in r.objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema in kubernetes-validate; asserted structurally below
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {e.message} at {list(e.path)}")
        checked += 1
    assert checked >= 7  # aggregator off: DaemonSet, Service, ServiceAccount, Role(Binding), ClusterRole(Binding)


# The one pair of objects outside the release namespace: with aggregator.nodeConditions.mode on,
# the Role and RoleBinding for the Nodes' Events, which kube-runtime's Recorder writes into
# namespace default (test_node_conditions.py).
NODE_EVENTS_RBAC = {("Role", f"{NAMESPACE}-{RELEASE}-kubenurse-aggregator-node-conditions"),
                    ("RoleBinding", f"{NAMESPACE}-{RELEASE}-kubenurse-aggregator-node-conditions")}


def test_every_object_is_namespaced_to_the_release(scenario):
    name, r = scenario
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    in_default = set()
    for obj in r.objects:
        if obj["kind"] in cluster_scoped or obj["metadata"]["name"].endswith("corporate-ca"):
            continue
        if (obj["kind"], obj["metadata"]["name"]) in NODE_EVENTS_RBAC:
            assert obj["metadata"]["namespace"] == "default", obj["metadata"]
            in_default.add((obj["kind"], obj["metadata"]["name"]))
            continue
        assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]
    node_conditions_on = name in ("node-conditions-on", "node-conditions-only", "everything")
    assert in_default == (NODE_EVENTS_RBAC if node_conditions_on else set())


def test_env_values_are_strings(scenario):
    _, r = scenario
    for workload in r.all("DaemonSet") + r.all("Deployment"):
        for e in container(workload).get("env", []):
            assert ("value" in e) != ("valueFrom" in e), e
            if "value" in e:
                assert isinstance(e["value"], str), f"{e['name']}: {e['value']!r} is not a string"


# --- the default release ---------------------------------------------------------------------


def test_default_objects(render):
    r = render()
    assert r.kinds() == sorted([
        ("ClusterRole", f"{NAMESPACE}-{RELEASE}-kubenurse"),
        ("ClusterRole", f"{NAMESPACE}-{RELEASE}-kubenurse-aggregator"),
        ("ClusterRoleBinding", f"{NAMESPACE}-{RELEASE}-kubenurse"),
        ("ClusterRoleBinding", f"{NAMESPACE}-{RELEASE}-kubenurse-aggregator"),
        ("DaemonSet", f"{RELEASE}-kubenurse"),
        ("Deployment", f"{RELEASE}-kubenurse-aggregator"),
        ("Pod", f"{RELEASE}-kubenurse-aggregator-check"),  # the `helm test` hook (test_helm_test.py)
        ("PodDisruptionBudget", f"{RELEASE}-kubenurse-aggregator"),
        ("Role", f"{RELEASE}-kubenurse"),
        ("Role", f"{RELEASE}-kubenurse-aggregator"),
        ("RoleBinding", f"{RELEASE}-kubenurse"),
        ("RoleBinding", f"{RELEASE}-kubenurse-aggregator"),
        ("Service", f"{RELEASE}-kubenurse"),
        ("Service", f"{RELEASE}-kubenurse-aggregator"),
        ("Service", f"{RELEASE}-kubenurse-aggregator-grpc"),
        ("ServiceAccount", f"{RELEASE}-kubenurse"),
        ("ServiceAccount", f"{RELEASE}-kubenurse-aggregator"),
    ])
    assert "port-forward" in r.notes


def test_images_default_to_the_app_version(chart, render):
    r = render()
    app = chart.metadata["appVersion"]
    assert r.agent_container()["image"] == f"ghcr.io/kubenurse-rs/kubenurse-agent:{app}"
    assert r.aggregator_container()["image"] == f"ghcr.io/kubenurse-rs/kubenurse-aggregator:{app}"
    r = render({"daemonset": {"image": {"tag": "1.2"}}, "aggregator": {"image": {"tag": "x"}}})
    assert r.agent_container()["image"].endswith(":1.2")
    assert r.aggregator_container()["image"].endswith(":x")


def test_agent_identity_from_the_downward_api(render):
    env = render().agent_env()
    assert env["KUBENURSE_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["KUBENURSE_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["KUBENURSE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_agent_defaults_are_upstreams_except_insecure(render):
    env = render().agent_env()
    assert env["KUBENURSE_INSECURE"] == "false"
    assert env["KUBENURSE_NEIGHBOUR_LIMIT"] == "10"
    assert env["KUBENURSE_NEIGHBOUR_FILTER"] == "app.kubernetes.io/name=kubenurse"
    assert env["KUBENURSE_ALLOW_UNSCHEDULABLE"] == "false"
    assert env["KUBENURSE_CHECK_INTERVAL"] == "5s"
    assert env["KUBENURSE_CHECK_TIMEOUT"] == "6s"
    assert env["KUBENURSE_SHUTDOWN_DURATION"] == "5s"
    assert env["KUBENURSE_USE_TLS"] == "false"
    assert env["KUBENURSE_SERVICE_URL"] == f"http://{RELEASE}-kubenurse.{NAMESPACE}.svc.cluster.local:8080"
    for check in ("API_SERVER_DIRECT", "API_SERVER_DNS", "ME_SERVICE", "NEIGHBOURHOOD"):
        assert env[f"KUBENURSE_CHECK_{check}"] == "true"
    assert "KUBENURSE_EXTRA_CA" not in env and "KUBENURSE_HISTOGRAM_BUCKETS" not in env


def test_service_links_are_off(render):
    # A Service named "kubenurse" would otherwise inject KUBENURSE_SERVICE_HOST, KUBENURSE_PORT…
    r = render()
    assert r.agent()["spec"]["template"]["spec"]["enableServiceLinks"] is False
    assert r.aggregator()["spec"]["template"]["spec"]["enableServiceLinks"] is False


@pytest.mark.parametrize("name,namespace", [(RELEASE, NAMESPACE), ("kubenurse", "kube-system")])
def test_aggregator_url_points_at_the_headless_service(render, name, namespace):
    r = render(name=name, namespace=namespace)
    headless = [s for s in r.all("Service") if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1
    svc = headless[0]
    pod_labels = r.aggregator()["spec"]["template"]["metadata"]["labels"]
    assert selects(svc["spec"]["selector"], pod_labels)
    (port,) = svc["spec"]["ports"]
    grpc = next(p for p in r.aggregator_container()["ports"] if p["name"] == port["targetPort"])
    assert grpc["containerPort"] == port["port"] == 50051
    expected = f"http://{svc['metadata']['name']}.{namespace}.svc.cluster.local:{port['port']}"
    assert r.agent_env()["KUBENURSE_AGGREGATOR_URL"] == expected
    aggregator_env = env_map(r.aggregator_container())
    assert aggregator_env["KUBENURSE_AGGREGATOR_GRPC_ADDRESS"] == "0.0.0.0:50051"
    assert aggregator_env["KUBENURSE_AGGREGATOR_HTTP_ADDRESS"] == "0.0.0.0:8080"


def test_aggregator_settings(render):
    assert env_map(render().aggregator_container())["KUBENURSE_AGGREGATOR_CELL_METRICS"] == "none"
    assert env_map(render().aggregator_container())["KUBENURSE_AGGREGATOR_LOSS_THRESHOLD"] == "2%"
    r = render({"aggregator": {"window": "10m", "hysteresis": 3, "goneAfter": "2m", "slowFloor": "5ms", "lossThreshold": "0.5%",
                               "cellMetrics": "all", "service": {"grpcPort": 9000, "httpPort": 9001}}})
    env = env_map(r.aggregator_container())
    assert env["KUBENURSE_AGGREGATOR_CELL_METRICS"] == "all"
    assert env["KUBENURSE_AGGREGATOR_WINDOW"] == "10m"
    assert env["KUBENURSE_AGGREGATOR_HYSTERESIS"] == "3"
    assert env["KUBENURSE_AGGREGATOR_LOSS_THRESHOLD"] == "0.5%"
    unquoted = env_map(render({"aggregator": {"lossThreshold": 0.02}}).aggregator_container())
    assert unquoted["KUBENURSE_AGGREGATOR_LOSS_THRESHOLD"] == "0.02"
    assert env["KUBENURSE_AGGREGATOR_GONE_AFTER"] == "2m"
    assert env["KUBENURSE_AGGREGATOR_SLOW_FLOOR"] == "5ms"
    assert env["KUBENURSE_AGGREGATOR_GRPC_ADDRESS"] == "0.0.0.0:9000"
    assert r.agent_env()["KUBENURSE_AGGREGATOR_URL"].endswith(".svc.cluster.local:9000")
    probe = r.aggregator_container()["readinessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in r.aggregator_container()["ports"]}
    assert ports == {"grpc": 9000, "http": 9001} and probe["port"] == "http"


def test_probes(render):
    r = render()
    agent = r.agent_container()
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert ports == {"http": 8080, "udp-echo": 8081}  # the UDP echo: test_udp.py
    assert agent["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http", "scheme": "HTTP"}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/alwayshappy", "port": "http", "scheme": "HTTP"}
    agg = r.aggregator_container()
    assert {p["name"]: p["containerPort"] for p in agg["ports"]} == {"grpc": 50051, "http": 8080}
    assert agg["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http", "scheme": "HTTP"}
    assert agg["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}
    assert agent["readinessProbe"]["periodSeconds"] == 3


def test_security_contexts(scenario):
    name, r = scenario
    # The two workloads' pod templates and the `helm test` Pod.
    specs = [w["spec"]["template"]["spec"] for w in r.all("DaemonSet") + r.all("Deployment")]
    specs += [p["spec"] for p in r.all("Pod")]
    for spec in specs:
        pod = spec.get("securityContext", {})
        (c,) = spec["containers"]
        c = c["securityContext"]
        assert pod.get("runAsNonRoot") is True or c.get("runAsNonRoot") is True
        assert c["readOnlyRootFilesystem"] is True
        assert c["allowPrivilegeEscalation"] is False
        assert c["capabilities"]["drop"] == ["ALL"] and "add" not in c["capabilities"]
        seccomp = c.get("seccompProfile") or pod.get("seccompProfile")
        assert seccomp == {"type": "RuntimeDefault"}
        assert spec.get("hostNetwork") is not True


def test_resources(render):
    r = render()
    assert r.agent_container()["resources"] == {
        "requests": {"cpu": "10m", "memory": "32Mi"},
        "limits": {"memory": "64Mi"},
    }
    assert r.aggregator_container()["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "1Gi"},
    }


def test_agent_tolerations_are_upstreams(render):
    tolerations = render().agent()["spec"]["template"]["spec"]["tolerations"]
    assert tolerations == [
        {"effect": "NoSchedule", "key": "node-role.kubernetes.io/master", "operator": "Equal"},
        {"effect": "NoSchedule", "key": "node-role.kubernetes.io/control-plane", "operator": "Equal"},
    ]


# --- selection: who is whose neighbour, who serves what ---------------------------------------


def parse_equality_selector(selector: str) -> dict[str, str]:
    out = {}
    for part in selector.split(","):
        key, value = part.split("=", 1)
        out[key.strip()] = value.strip()
    return out


@pytest.mark.parametrize("name", ["kubenurse", "nurse"])
def test_neighbour_filter_selects_the_agents_and_nothing_else(render, name):
    r = render(name=name)
    selector = parse_equality_selector(r.agent_env()["KUBENURSE_NEIGHBOUR_FILTER"])
    assert selects(selector, r.agent()["spec"]["template"]["metadata"]["labels"])
    assert not selects(selector, r.aggregator()["spec"]["template"]["metadata"]["labels"])


def test_services_select_their_own_tier(render):
    r = render()
    agent_pods = r.agent()["spec"]["template"]["metadata"]["labels"]
    aggregator_pods = r.aggregator()["spec"]["template"]["metadata"]["labels"]
    for tier, labels in ((r.agent(), agent_pods), (r.aggregator(), aggregator_pods)):
        assert selects(tier["spec"]["selector"]["matchLabels"], labels)
    agent_svc = r.one("Service", f"{RELEASE}-kubenurse")
    assert selects(agent_svc["spec"]["selector"], agent_pods)
    assert not selects(agent_svc["spec"]["selector"], aggregator_pods)
    for svc in (r.one("Service", f"{RELEASE}-kubenurse-aggregator"),
                r.one("Service", f"{RELEASE}-kubenurse-aggregator-grpc")):
        assert selects(svc["spec"]["selector"], aggregator_pods)
        assert not selects(svc["spec"]["selector"], agent_pods)
    assert agent_svc["spec"]["ports"] == [{"name": "8080-8080", "port": 8080, "targetPort": "http",
                                           "protocol": "TCP"},
                                          {"name": "udp-echo", "port": 8081, "targetPort": "udp-echo",
                                           "protocol": "UDP"}]


def test_user_labels_cannot_break_selection(render):
    r = render({"daemonset": {"podLabels": {"app.kubernetes.io/name": "other", "team": "net"}}})
    labels = r.agent()["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "kubenurse" and labels["team"] == "net"


# --- RBAC ------------------------------------------------------------------------------------


def grants(r, sa: str, namespace: str = NAMESPACE) -> set[tuple[str, str, str, str]]:
    """Every (scope, apiGroup, resource, verb) the release's RBAC gives ServiceAccount `sa` of
    `namespace`, following each binding to its role: scope is the RoleBinding's namespace, or
    "cluster" for a ClusterRoleBinding."""
    out = set()
    for b in r.all("RoleBinding") + r.all("ClusterRoleBinding"):
        if {"kind": "ServiceAccount", "name": sa, "namespace": namespace} not in b["subjects"]:
            continue
        assert b["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"
        role = r.one(b["roleRef"]["kind"], b["roleRef"]["name"])
        scope = b["metadata"]["namespace"] if b["kind"] == "RoleBinding" else "cluster"
        for rule in role["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, no wildcards elsewhere
            out |= {(scope, g, res, v) for g in rule["apiGroups"] for res in rule["resources"] for v in rule["verbs"]}
    return out


def agent_sa_name(r) -> str:
    return r.agent()["spec"]["template"]["spec"]["serviceAccountName"]


def aggregator_sa_name(r) -> str:
    return r.aggregator()["spec"]["template"]["spec"]["serviceAccountName"]


# What the aggregator may do with aggregator.auth.mode tokenreview: check tokens, read pods;
# with pushed discovery (aggregator.discovery.enabled): watch the agents' pods and all nodes.
TOKENREVIEW_GRANTS = {("cluster", "authentication.k8s.io", "tokenreviews", "create"), (NAMESPACE, "", "pods", "get")}
DISCOVERY_GRANTS = {(NAMESPACE, "", "pods", "list"), (NAMESPACE, "", "pods", "watch"),
                    ("cluster", "", "nodes", "get"), ("cluster", "", "nodes", "list"), ("cluster", "", "nodes", "watch")}
AGGREGATOR_GRANTS = TOKENREVIEW_GRANTS | DISCOVERY_GRANTS


@pytest.mark.parametrize("allow_unschedulable", [False, True, "true"])
def test_rbac_is_what_the_agent_reads(render, allow_unschedulable):
    r = render({"allow_unschedulable": allow_unschedulable})
    agent_sa = agent_sa_name(r)
    role = r.one("Role", f"{RELEASE}-kubenurse")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = r.one("RoleBinding", f"{RELEASE}-kubenurse")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": agent_sa, "namespace": NAMESPACE}]
    watches_nodes = allow_unschedulable is False
    assert r.agent_env()["KUBENURSE_ALLOW_UNSCHEDULABLE"] == ("false" if watches_nodes else "true")
    reads = {(NAMESPACE, "", "pods", v) for v in ("get", "list", "watch")}
    if watches_nodes:
        cr = r.one("ClusterRole", f"{NAMESPACE}-{RELEASE}-kubenurse")
        assert cr["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
        crb = r.one("ClusterRoleBinding", f"{NAMESPACE}-{RELEASE}-kubenurse")
        assert crb["roleRef"]["name"] == cr["metadata"]["name"]
        assert crb["subjects"] == [{"kind": "ServiceAccount", "name": agent_sa, "namespace": NAMESPACE}]
        reads |= {("cluster", "", "nodes", v) for v in ("get", "list", "watch")}
    else:
        # Only the aggregator's role (TokenReview, and Nodes for pushed discovery) is left cluster-wide.
        assert [o["metadata"]["name"] for o in r.all("ClusterRole") + r.all("ClusterRoleBinding")] == [
            f"{NAMESPACE}-{RELEASE}-kubenurse-aggregator"] * 2
    # Nothing else: the agent cannot review tokens; the aggregator gets only its own, smaller set.
    assert grants(r, agent_sa) == reads
    agg_sa = aggregator_sa_name(r)
    assert agg_sa != agent_sa
    assert grants(r, agg_sa) == AGGREGATOR_GRANTS


def test_existing_service_account(render):
    r = render({"serviceAccount": {"create": False, "name": "existing"}})
    assert r.all("ServiceAccount") == []
    assert agent_sa_name(r) == "existing"
    assert r.one("RoleBinding", f"{RELEASE}-kubenurse")["subjects"][0]["name"] == "existing"
    # The aggregator runs as the namespace's default account, which then gets its RBAC; the
    # agents' tokens are those of the existing account.
    assert aggregator_sa_name(r) == "default"
    assert grants(r, "default") == AGGREGATOR_GRANTS
    assert env_map(r.aggregator_container())["KUBENURSE_AGGREGATOR_AUTH_SERVICE_ACCOUNT"] == f"{NAMESPACE}:existing"


# --- aggregator on / off, PDB ----------------------------------------------------------------


def test_pdb_with_several_replicas(render):
    r = render()
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == r.aggregator()["spec"]["selector"]["matchLabels"]
    assert r.aggregator()["spec"]["replicas"] == 2
    assert render({"aggregator": {"replicas": 1}}).all("PodDisruptionBudget") == []
    assert render({"aggregator": {"podDisruptionBudget": {"enabled": False}}}).all("PodDisruptionBudget") == []


def test_aggregator_off(render):
    r = render({"aggregator": {"enabled": False}})
    assert r.all("Deployment") == [] and r.all("PodDisruptionBudget") == []
    assert [s["metadata"]["name"] for s in r.all("Service")] == [f"{RELEASE}-kubenurse"]
    assert [s["metadata"]["name"] for s in r.all("ServiceAccount")] == [f"{RELEASE}-kubenurse"]
    assert "KUBENURSE_AGGREGATOR_URL" not in r.agent_env()
    assert "Aggregator" not in r.notes and "Neighbours" not in r.notes
    # The agent is upstream's: it discovers for itself, KUBENURSE_DISCOVERY* stay unset.
    assert not [name for name in r.agent_env() if name.startswith("KUBENURSE_DISCOVERY")]
    # No stream, no credential for it: no token volume, no aggregator RBAC.
    assert "KUBENURSE_AGGREGATOR_TOKEN_FILE" not in r.agent_env()
    assert "volumes" not in r.agent()["spec"]["template"]["spec"]
    assert [o["metadata"]["name"] for o in r.all("Role") + r.all("RoleBinding")] == [f"{RELEASE}-kubenurse"] * 2
    assert "authentication.k8s.io" not in {g for _, g, _, _ in grants(r, f"{RELEASE}-kubenurse")}


# --- pushed discovery -------------------------------------------------------------------------

# The variables both tiers read to agree on who checks whom (kubenurse-neighbours' shared vars).
SHARED_NEIGHBOUR_ENV = ("KUBENURSE_NAMESPACE", "KUBENURSE_NEIGHBOUR_FILTER", "KUBENURSE_NEIGHBOUR_LIMIT",
                        "KUBENURSE_ALLOW_UNSCHEDULABLE")
DISCOVERY_ENV = ("KUBENURSE_DISCOVERY", "KUBENURSE_DISCOVERY_FALLBACK_AFTER")


def env_entries(c: dict[str, Any], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The container's env entries (as rendered, value or valueFrom) for `names`, in that order."""
    by_name = {e["name"]: e for e in c.get("env", [])}
    return [by_name[n] for n in names if n in by_name]


@pytest.mark.parametrize("values", [
    {},
    {"neighbour_limit": 7, "neighbour_filter": "app.kubernetes.io/name=kubenurse,team=net"},
    {"neighbour_limit": "0", "neighbour_filter": "", "allow_unschedulable": "true"},
    values_file("upstream-values.yaml"),
], ids=["default", "limit-7-filter", "strings", "upstream"])
@pytest.mark.parametrize("name,namespace", [(RELEASE, NAMESPACE), ("kubenurse", "kube-system")])
def test_aggregator_reads_the_agents_neighbour_variables(render, values, name, namespace):
    r = render(values, name=name, namespace=namespace)
    agent = env_entries(r.agent_container(), SHARED_NEIGHBOUR_ENV)
    aggregator = env_entries(r.aggregator_container(), SHARED_NEIGHBOUR_ENV)
    assert len(agent) == len(SHARED_NEIGHBOUR_ENV)
    assert aggregator == agent  # the same entries, from the same values
    env = env_map(r.aggregator_container())
    assert env["KUBENURSE_AGGREGATOR_DISCOVERY"] == "true"
    # The downward API gives both tiers the release namespace, where the agents' pods run.
    assert env["KUBENURSE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert r.aggregator()["metadata"]["namespace"] == r.agent()["metadata"]["namespace"] == namespace
    if "neighbour_limit" in values:
        assert env["KUBENURSE_NEIGHBOUR_LIMIT"] == str(values["neighbour_limit"])
        assert env["KUBENURSE_NEIGHBOUR_FILTER"] == values["neighbour_filter"]
    # The aggregator's pods are never neighbours of the agents (also with the shared filter).
    if env["KUBENURSE_NEIGHBOUR_FILTER"]:
        selector = parse_equality_selector(env["KUBENURSE_NEIGHBOUR_FILTER"])
        assert not selects(selector, r.aggregator()["spec"]["template"]["metadata"]["labels"])


def test_pushed_discovery_is_the_default(render):
    r = render()
    env = r.agent_env()
    assert env["KUBENURSE_DISCOVERY"] == "auto"
    assert env["KUBENURSE_DISCOVERY_FALLBACK_AFTER"] == "60s"
    assert env_map(r.aggregator_container())["KUBENURSE_AGGREGATOR_DISCOVERY"] == "true"
    # The aggregator watches the agents' pods in their namespace (a Role, as the agents' own) and
    # all nodes (a ClusterRole); it can change nothing.
    agg_sa = aggregator_sa_name(r)
    assert DISCOVERY_GRANTS <= grants(r, agg_sa)
    assert {v for _, _, _, v in grants(r, agg_sa)} == {"create", "get", "list", "watch"}
    pods = {(scope, v) for scope, _, res, v in grants(r, agg_sa) if res == "pods"}
    assert {scope for scope, _ in pods} == {NAMESPACE}
    assert r.aggregator()["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    # The agents keep their own RBAC: pods for the fallback, their own Node by field selector.
    reads = {(NAMESPACE, "", "pods", v) for v in ("get", "list", "watch")}
    reads |= {("cluster", "", "nodes", v) for v in ("get", "list", "watch")}
    assert grants(r, agent_sa_name(r)) == reads
    assert "Neighbours: the aggregator watches" in r.notes and "after 60s" in r.notes


@pytest.mark.parametrize("mode", ["auto", "local", "aggregator"])
def test_discovery_mode_reaches_the_agents(render, mode):
    r = render({"discovery": {"mode": mode, "fallbackAfter": "2m30s"}})
    env = r.agent_env()
    assert env["KUBENURSE_DISCOVERY"] == mode
    # The fallback time means something in auto mode only.
    assert env.get("KUBENURSE_DISCOVERY_FALLBACK_AFTER") == ("2m30s" if mode == "auto" else None)
    assert [e["name"] for e in r.agent_container()["env"]].count("KUBENURSE_DISCOVERY") == 1
    # The aggregator pushes whatever the agents do with it, and reads the same variables.
    assert env_map(r.aggregator_container())["KUBENURSE_AGGREGATOR_DISCOVERY"] == "true"
    assert env_entries(r.aggregator_container(), SHARED_NEIGHBOUR_ENV) == env_entries(
        r.agent_container(), SHARED_NEIGHBOUR_ENV)
    # Pushed only: the agents list and watch no pods; their own Node is still watched.
    pod_verbs = {"get"} if mode == "aggregator" else {"get", "list", "watch"}
    reads = {(NAMESPACE, "", "pods", v) for v in pod_verbs}
    reads |= {("cluster", "", "nodes", v) for v in ("get", "list", "watch")}
    assert grants(r, agent_sa_name(r)) == reads
    assert f"discovery.mode {mode}" in r.notes


def test_pushed_only_without_watching_nodes(render):
    r = render({"discovery": {"mode": "aggregator"}, "allow_unschedulable": True})
    # No own-Node watch either: the agent reads nothing but its own pod.
    assert grants(r, agent_sa_name(r)) == {(NAMESPACE, "", "pods", "get")}
    # The aggregator still watches Nodes (zones) and reads the same allow_unschedulable.
    assert DISCOVERY_GRANTS <= grants(r, aggregator_sa_name(r))
    assert env_map(r.aggregator_container())["KUBENURSE_ALLOW_UNSCHEDULABLE"] == "true"


@pytest.mark.parametrize("enabled", [False, "false"])
@pytest.mark.parametrize("mode", [None, "auto", "local"])
def test_discovery_off_agents_discover_locally(render, enabled, mode):
    values = {"aggregator": {"discovery": {"enabled": enabled}}}
    if mode:
        values["discovery"] = {"mode": mode}
    r = render(values)
    # Nothing pushes targets: the agents watch for themselves, whatever discovery.mode says.
    env = r.agent_env()
    assert env["KUBENURSE_DISCOVERY"] == "local"
    assert "KUBENURSE_DISCOVERY_FALLBACK_AFTER" not in env
    assert env["KUBENURSE_AGGREGATOR_URL"]  # still streaming results
    agg_env = env_map(r.aggregator_container())
    assert agg_env["KUBENURSE_AGGREGATOR_DISCOVERY"] == "false"
    assert not set(SHARED_NEIGHBOUR_ENV) & set(agg_env)
    # No discovery RBAC for the aggregator: TokenReview's only.
    agg_sa = aggregator_sa_name(r)
    assert grants(r, agg_sa) == TOKENREVIEW_GRANTS
    assert r.one("ClusterRole", f"{NAMESPACE}-{RELEASE}-kubenurse-aggregator")["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]
    assert r.one("Role", aggregator_role(r))["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    # The agents keep upstream's RBAC.
    assert {v for _, _, res, v in grants(r, agent_sa_name(r)) if res == "pods"} == {"get", "list", "watch"}
    assert "Neighbours" not in r.notes


def test_aggregator_off_ignores_the_discovery_values(render):
    off = {"aggregator": {"enabled": False}}
    plain = render(off)
    for discovery in ({"mode": "aggregator", "fallbackAfter": "5m"}, {"mode": "local"}):
        r = render({**off, "discovery": discovery})
        assert r.manifests == plain.manifests  # the agent is upstream's, unchanged
        assert not set(DISCOVERY_ENV) & set(r.agent_env())
    # Also with aggregator.discovery.enabled false: no aggregator, nothing to check against.
    r = render({"aggregator": {"enabled": False, "discovery": {"enabled": False}}, **PUSHED_ONLY_VALUES})
    assert r.manifests == plain.manifests


@pytest.mark.parametrize("enabled", [False, "false", "0"])
def test_schema_rejects_pushed_only_without_pushed_discovery(chart, enabled):
    values = {"discovery": {"mode": "aggregator"}, "aggregator": {"discovery": {"enabled": enabled}}}
    with pytest.raises(helm.HelmValuesError) as e:
        chart.validate_schema(values)
    message = str(e.value)
    assert "/discovery/mode" in message and "'auto', 'local'" in message, message
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    # Fine once something pushes, or when there is no aggregator at all.
    chart.validate_schema({"discovery": {"mode": "aggregator"}, "aggregator": {"discovery": {"enabled": True}}})
    chart.validate_schema({"discovery": {"mode": "aggregator"},
                           "aggregator": {"enabled": False, "discovery": {"enabled": enabled}}})
    chart.validate_schema({"discovery": {"mode": "local"}, "aggregator": {"discovery": {"enabled": enabled}}})


def test_template_rejects_pushed_only_without_pushed_discovery(tmp_path):
    """The same check in the template, for renders that skip values.schema.json."""
    copy_dir = tmp_path / "kubenurse"
    shutil.copytree(CHART_DIR, copy_dir)
    (copy_dir / "values.schema.json").unlink()
    values = {"discovery": {"mode": "aggregator"}, "aggregator": {"discovery": {"enabled": False}}}
    with helm.Chart.load(copy_dir) as c:
        with pytest.raises(helm.HelmError) as e:
            c.render(values, name=RELEASE, namespace=NAMESPACE)
        assert "discovery.mode: aggregator needs aggregator.discovery.enabled: true" in str(e.value), str(e.value)
        c.render({**values, "discovery": {"mode": "auto"}}, name=RELEASE, namespace=NAMESPACE)


# --- ingress and me_ingress ------------------------------------------------------------------


def test_me_ingress_is_off_without_an_ingress(render):
    r = render()
    env = r.agent_env()
    assert env["KUBENURSE_CHECK_ME_INGRESS"] == "false"
    assert "KUBENURSE_INGRESS_URL" not in env
    assert r.all("Ingress") == []
    # Also when an upstream values file asks for the check but switches the ingress off.
    env = render({"ingress": {"enabled": False}, "check_me_ingress": True}).agent_env()
    assert env["KUBENURSE_CHECK_ME_INGRESS"] == "false"


def test_ingress_on(render):
    r = render({"ingress": {"enabled": True, "url": "nurse.example.com", "className": "traefik"}})
    env = r.agent_env()
    assert env["KUBENURSE_CHECK_ME_INGRESS"] == "true"
    assert env["KUBENURSE_INGRESS_URL"] == "https://nurse.example.com"
    ing = r.one("Ingress")
    assert ing["spec"]["ingressClassName"] == "traefik"
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "nurse.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{RELEASE}-kubenurse", "port": {"number": 8080}}
    assert ing["spec"]["tls"] == [{"hosts": ["nurse.example.com"]}]
    off = render({"ingress": {"enabled": True}, "check_me_ingress": False}).agent_env()
    assert off["KUBENURSE_CHECK_ME_INGRESS"] == "false"


# --- upstream values file --------------------------------------------------------------------


def test_upstream_values_file(render):
    r = render(values_file("upstream-values.yaml"))
    env = r.agent_env()
    assert env["KUBENURSE_INSECURE"] == "true"
    assert env["KUBENURSE_NEIGHBOUR_LIMIT"] == "5"
    assert env["KUBENURSE_CHECK_INTERVAL"] == "10s"
    assert env["KUBENURSE_SHUTDOWN_DURATION"] == "10s"
    assert env["KUBENURSE_REUSE_CONNECTIONS"] == "true"
    assert env["KUBENURSE_CHECK_API_SERVER_DNS"] == "false"
    assert env["KUBENURSE_CHECK_ME_INGRESS"] == "true"
    assert env["KUBENURSE_INGRESS_URL"] == "https://kubenurse.example.com"
    assert env["KUBENURSE_EXTRA_CA"] == "/etc/kubenurse/ca/ca.crt"
    assert env["KUBENURSE_HISTOGRAM_BUCKETS"] == ".0005,.001,.0025,.005,.01,.025,.05,0.1,0.25,0.5,1"
    assert env["KUBENURSE_EXTRA_CHECKS"] == "google:https://www.google.com"
    assert env["KUBERNETES_SERVICE_DNS"] == "kubernetes.default.svc.cluster.local"
    ds = r.agent()
    pod = ds["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "network"
    assert pod["metadata"]["annotations"]["example.com/owner"] == "network-team"
    assert pod["spec"]["securityContext"]["fsGroup"] == 65532
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True  # safe defaults kept
    assert pod["spec"]["priorityClassName"] == "system-node-critical"
    assert pod["spec"]["tolerations"] == [{"operator": "Exists"}]
    assert pod["spec"]["dnsConfig"] == {"options": [{"name": "ndots", "value": "1"}]}
    assert pod["spec"]["volumes"][0] == {"name": "corporate-ca", "configMap": {"name": "corporate-ca"}}
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["corporate-ca", "aggregator-token"]
    assert pod["spec"]["serviceAccountName"] == "kubenurse-sa"
    assert env_map(r.aggregator_container())["KUBENURSE_AGGREGATOR_AUTH_SERVICE_ACCOUNT"] == f"{NAMESPACE}:kubenurse-sa"
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": "10%"}
    c = r.agent_container()
    assert c["image"] == "ghcr.io/kubenurse-rs/kubenurse-agent:v1.14.2"
    assert c["imagePullPolicy"] == "Always"
    assert c["volumeMounts"][0]["mountPath"] == "/etc/kubenurse/ca"
    assert c["resources"]["requests"] == {"cpu": "20m", "memory": "48Mi"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    svc = r.one("Service", f"{RELEASE}-kubenurse")
    assert svc["metadata"]["labels"]["monitoring"] == "true"
    sa = r.one("ServiceAccount", "kubenurse-sa")
    assert sa["imagePullSecrets"] == [{"name": "my-registry-secret"}]
    ing = r.one("Ingress")
    assert ing["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/ssl-redirect": "true"}
    assert ing["spec"]["tls"] == [{"hosts": ["kubenurse.example.com"], "secretName": "kubenurse-tls"}]
    cm = r.one("ConfigMap")
    assert cm["metadata"]["name"] == f"{RELEASE}-corporate-ca" and cm["data"]["note"] == "deployed with kubenurse"
    assert len(r.all("ServiceMonitor")) == 2


def test_upstream_spellings_are_accepted(render):
    # Upstream's template quoted whatever it was given: strings for booleans and numbers worked.
    env = render({"insecure": "true", "check_me_service": "false", "neighbour_limit": "0",
                  "reuse_connections": "True", "check_interval": "1m30s"}).agent_env()
    assert env["KUBENURSE_INSECURE"] == "true"
    assert env["KUBENURSE_CHECK_ME_SERVICE"] == "false"
    assert env["KUBENURSE_NEIGHBOUR_LIMIT"] == "0"
    assert env["KUBENURSE_REUSE_CONNECTIONS"] == "true"
    assert env["KUBENURSE_CHECK_INTERVAL"] == "1m30s"
    # An older upstream chart spelled two checks check_api_me_*.
    env = render({"check_api_me_service": False}).agent_env()
    assert env["KUBENURSE_CHECK_ME_SERVICE"] == "false"


# --- TLS -------------------------------------------------------------------------------------


def test_tls(render):
    r = render(TLS_VALUES)
    c = r.agent_container()
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "https": 8443, "udp-echo": 8081}
    env = r.agent_env()
    assert env["KUBENURSE_USE_TLS"] == "true"
    assert env["KUBENURSE_CERT_FILE"] == "/etc/kubenurse/tls/tls.crt"
    assert env["KUBENURSE_CERT_KEY"] == "/etc/kubenurse/tls/tls.key"
    assert c["volumeMounts"][0] == {"name": "tls", "mountPath": "/etc/kubenurse/tls", "readOnly": True}
    assert [m["name"] for m in c["volumeMounts"]] == ["tls", "aggregator-token"]  # and aggregator.auth's token
    svc = r.one("Service", f"{RELEASE}-kubenurse")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "8080-8080": (8080, "http"), "https": (8443, "https"), "udp-echo": (8081, "udp-echo")}
    # Probes stay on plain HTTP, which the agent serves with TLS on too.
    assert c["readinessProbe"]["httpGet"]["port"] == "http"


def test_tls_without_certificate_fails(chart):
    with pytest.raises(helm.HelmError) as e:
        chart.render({"use_tls": True}, name=RELEASE, namespace=NAMESPACE)
    assert "use_tls: true needs cert_file and cert_key" in str(e.value)


# --- TLS of the agents' stream to the aggregator ---------------------------------------------

AGENT_CA = "/etc/kubenurse/aggregator-ca/ca.crt"
AGGREGATOR_CERT = "/etc/kubenurse/tls/tls.crt"
AGGREGATOR_KEY = "/etc/kubenurse/tls/tls.key"
AGGREGATOR_TLS_ENV = ("KUBENURSE_AGGREGATOR_TLS_CERT", "KUBENURSE_AGGREGATOR_TLS_KEY")


def secret_file(workload: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret, key) the workload's container reads at `path`, through a read-only mount."""
    c = container(workload)
    directory, name = posixpath.split(path)
    (mount,) = [m for m in c.get("volumeMounts", []) if m["mountPath"].rstrip("/") == directory]
    assert mount.get("readOnly") is True and "subPath" not in mount, mount
    (volume,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    (key,) = [i["key"] for i in secret["items"] if i["path"] == name]
    return secret["secretName"], key


def secret_keys(workload: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (Secret, key) a workload mounts; a Secret mounted whole is (Secret, "*")."""
    out = set()
    for v in workload["spec"]["template"]["spec"].get("volumes", []):
        if "secret" in v:
            name = v["secret"]["secretName"]
            out |= {(name, i["key"]) for i in v["secret"].get("items", [{"key": "*"}])}
    return out


def headless_service(r) -> dict[str, Any]:
    (svc,) = [s for s in r.all("Service") if s["spec"].get("clusterIP") == "None"]
    return svc


@pytest.mark.parametrize("name,namespace", [(RELEASE, NAMESPACE), ("kubenurse", "kube-system")])
def test_aggregator_tls(render, name, namespace):
    r = render(AGGREGATOR_TLS_VALUES, name=name, namespace=namespace)
    svc = headless_service(r)
    (port,) = svc["spec"]["ports"]
    env = r.agent_env()
    assert env["KUBENURSE_AGGREGATOR_URL"] == (
        f"https://{svc['metadata']['name']}.{namespace}.svc.cluster.local:{port['port']}")
    assert f"through {env['KUBENURSE_AGGREGATOR_URL']}." in r.notes
    # The agents trust the CA from the Secret's ca.crt (cert-manager's), and see nothing else of it:
    # the Secret also holds the aggregator's private key.
    assert env["KUBENURSE_AGGREGATOR_CA"] == AGENT_CA
    assert secret_file(r.agent(), AGENT_CA) == ("aggregator-tls", "ca.crt")
    assert secret_keys(r.agent()) == {("aggregator-tls", "ca.crt")}
    # The aggregator serves the Secret's certificate and key.
    agg_env = env_map(r.aggregator_container())
    assert agg_env["KUBENURSE_AGGREGATOR_TLS_CERT"] == AGGREGATOR_CERT
    assert agg_env["KUBENURSE_AGGREGATOR_TLS_KEY"] == AGGREGATOR_KEY
    assert secret_file(r.aggregator(), AGGREGATOR_CERT) == ("aggregator-tls", "tls.crt")
    assert secret_file(r.aggregator(), AGGREGATOR_KEY) == ("aggregator-tls", "tls.key")
    assert secret_keys(r.aggregator()) == {("aggregator-tls", "tls.crt"), ("aggregator-tls", "tls.key")}
    assert "KUBENURSE_AGGREGATOR_CA" not in agg_env
    assert not set(AGGREGATOR_TLS_ENV) & set(env)
    # Mounts only: the root filesystems stay read-only, probes stay on plain HTTP.
    for c in (r.agent_container(), r.aggregator_container()):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    for workload in (r.agent(), r.aggregator()):
        for kube_version in KUBE_VERSIONS:
            kubernetes_validate.validate(workload, kube_version, strict=True)


def test_aggregator_tls_with_a_separate_ca(render):
    r = render({"aggregator": {"tls": {"enabled": "true", "secretName": "aggregator-tls",
                                       "caSecretName": "trust-bundle", "caKey": "root.pem"}}})
    assert r.agent_env()["KUBENURSE_AGGREGATOR_CA"] == AGENT_CA
    assert secret_keys(r.agent()) == {("trust-bundle", "root.pem")}
    assert secret_file(r.agent(), AGENT_CA) == ("trust-bundle", "root.pem")
    assert secret_file(r.aggregator(), AGGREGATOR_KEY) == ("aggregator-tls", "tls.key")


def test_aggregator_tls_keeps_the_agents_own_volumes(render):
    r = render({**TLS_VALUES, **AGGREGATOR_TLS_VALUES})
    env = r.agent_env()
    assert env["KUBENURSE_CERT_FILE"] == "/etc/kubenurse/tls/tls.crt"  # the agent's own, from daemonset.volumes
    assert secret_keys(r.agent()) == {("kubenurse-tls", "*"), ("aggregator-tls", "ca.crt")}
    pod = r.agent()["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["tls", "aggregator-ca", "aggregator-token"]
    assert [m["mountPath"] for m in r.agent_container()["volumeMounts"]] == [
        "/etc/kubenurse/tls", "/etc/kubenurse/aggregator-ca", "/var/run/secrets/kubenurse/aggregator-token"]
    assert secret_file(r.agent(), env["KUBENURSE_AGGREGATOR_CA"]) == ("aggregator-tls", "ca.crt")
    assert env["KUBENURSE_AGGREGATOR_URL"].startswith("https://")


def test_aggregator_tls_without_secret_fails(chart):
    with pytest.raises(helm.HelmError) as e:
        chart.render({"aggregator": {"tls": {"enabled": True}}}, name=RELEASE, namespace=NAMESPACE)
    message = str(e.value)
    assert "aggregator.tls.enabled: true needs aggregator.tls.secretName" in message, message
    assert f"{RELEASE}-kubenurse-aggregator-grpc.{NAMESPACE}.svc.cluster.local" in message, message


def test_aggregator_tls_is_off_by_default(render):
    r = render()
    env = r.agent_env()
    assert env["KUBENURSE_AGGREGATOR_URL"].startswith("http://")
    assert "KUBENURSE_AGGREGATOR_CA" not in env
    assert not set(AGGREGATOR_TLS_ENV) & set(env_map(r.aggregator_container()))
    # The agents mount only their token (aggregator.auth), the aggregator nothing.
    assert [v["name"] for v in r.agent()["spec"]["template"]["spec"]["volumes"]] == ["aggregator-token"]
    assert "volumes" not in r.aggregator()["spec"]["template"]["spec"]
    assert "volumeMounts" not in r.aggregator_container()
    # Without the aggregator there is no stream to protect: nothing to mount, nothing required.
    for off in ({"enabled": False, "tls": {"enabled": True}}, {"enabled": False, "auth": {"mode": "mtls"}}):
        r = render({"aggregator": off})
        assert not {"KUBENURSE_AGGREGATOR_URL", "KUBENURSE_AGGREGATOR_CA"} & set(r.agent_env())
        assert "volumes" not in r.agent()["spec"]["template"]["spec"]


# --- authentication of the agents' stream (aggregator.auth) ------------------------------------

TOKEN_FILE = "/var/run/secrets/kubenurse/aggregator-token/token"
AGENT_CERT = "/etc/kubenurse/aggregator-client/tls.crt"
AGENT_KEY = "/etc/kubenurse/aggregator-client/tls.key"
CLIENT_CA = "/etc/kubenurse/client-ca/ca.crt"
TOKEN_ENV = ("KUBENURSE_AGGREGATOR_AUTH_AUDIENCE", "KUBENURSE_AGGREGATOR_AUTH_SERVICE_ACCOUNT")
MTLS_AGENT_ENV = ("KUBENURSE_AGGREGATOR_CERT", "KUBENURSE_AGGREGATOR_KEY")


def mounted_volume(workload: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume the workload's container reads `path` from, through a read-only mount of its directory."""
    c = container(workload)
    directory = posixpath.dirname(path)
    (mount,) = [m for m in c.get("volumeMounts", []) if m["mountPath"].rstrip("/") == directory]
    assert mount.get("readOnly") is True and "subPath" not in mount, mount
    (volume,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    return volume


def projected_token(workload: dict[str, Any], path: str) -> dict[str, Any]:
    """The serviceAccountToken projection the workload's container reads at `path`."""
    (source,) = mounted_volume(workload, path)["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["path"] == posixpath.basename(path)
    return token


def aggregator_rbac(r) -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in r.objects
            if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
            and o["metadata"]["labels"]["app.kubernetes.io/component"] == "aggregator"]


def aggregator_role(r) -> str:
    (name,) = [n for kind, n in aggregator_rbac(r) if kind == "Role"]
    return name


def token_mounted(workload: dict[str, Any]) -> bool:
    return workload["spec"]["template"]["spec"].get("automountServiceAccountToken") is not False


@pytest.mark.parametrize("name,namespace", [(RELEASE, NAMESPACE), ("kubenurse", "kube-system")])
def test_tokenreview_is_the_default(render, name, namespace):
    r = render(name=name, namespace=namespace)
    agent_sa, agg_sa = agent_sa_name(r), aggregator_sa_name(r)
    agg = r.aggregator()["metadata"]["name"]
    # The agents send a projected token for the aggregator's audience, renewed by the kubelet.
    env = r.agent_env()
    assert env["KUBENURSE_AGGREGATOR_TOKEN_FILE"] == TOKEN_FILE
    assert projected_token(r.agent(), TOKEN_FILE) == {
        "audience": "kubenurse-aggregator", "expirationSeconds": 3600, "path": "token"}
    assert mounted_volume(r.agent(), TOKEN_FILE)["name"] == "aggregator-token"
    assert not set(MTLS_AGENT_ENV) & set(env)
    assert token_mounted(r.agent())  # the agent's own API token (pods, nodes) stays
    # The aggregator checks it: right audience, the agents' service account only.
    agg_env = env_map(r.aggregator_container())
    assert agg_env["KUBENURSE_AGGREGATOR_AUTH"] == "tokenreview"
    assert agg_env["KUBENURSE_AGGREGATOR_AUTH_AUDIENCE"] == "kubenurse-aggregator"
    assert agg_env["KUBENURSE_AGGREGATOR_AUTH_SERVICE_ACCOUNT"] == f"{namespace}:{agent_sa}"
    assert r.one("ServiceAccount", agent_sa)["metadata"]["namespace"] == namespace
    assert "KUBENURSE_AGGREGATOR_CLIENT_CA" not in agg_env
    # ...with its in-cluster client: a token, and RBAC for exactly that.
    assert r.aggregator()["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert r.one("ServiceAccount", agg_sa)["automountServiceAccountToken"] is True
    assert sorted(aggregator_rbac(r)) == sorted([
        ("ClusterRole", f"{namespace}-{agg}"), ("ClusterRoleBinding", f"{namespace}-{agg}"),
        ("Role", agg), ("RoleBinding", agg)])
    assert r.one("ClusterRole", f"{namespace}-{agg}")["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]  # pushed discovery
    assert r.one("Role", agg)["rules"] == [{"apiGroups": [""], "resources": ["pods"],
                                            "verbs": ["get", "list", "watch"]}]  # get: tokenreview
    assert r.one("Role", agg)["metadata"]["namespace"] == namespace
    subject = [{"kind": "ServiceAccount", "name": agg_sa, "namespace": namespace}]
    for kind, role_kind, role_name in (("ClusterRoleBinding", "ClusterRole", f"{namespace}-{agg}"),
                                       ("RoleBinding", "Role", agg)):
        binding = r.one(kind, role_name)
        assert binding["subjects"] == subject
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name}
    expected = {(namespace if scope != "cluster" else scope, g, res, v) for scope, g, res, v in AGGREGATOR_GRANTS}
    assert grants(r, agg_sa, namespace) == expected
    assert not {g for _, g, _, _ in grants(r, agent_sa, namespace)} & {"authentication.k8s.io"}
    assert "TokenReview" in r.notes and "WARNING" not in r.notes
    assert "unencrypted" in r.notes  # plain gRPC: say so
    for workload in (r.agent(), r.aggregator()):
        for kube_version in KUBE_VERSIONS:
            kubernetes_validate.validate(workload, kube_version, strict=True)


def test_tokenreview_audience_and_lifetime_reach_both_sides(render):
    r = render({"aggregator": {"auth": {"audience": "https://nurse.example.com/aggregator",
                                        "tokenExpirationSeconds": 86400}}})
    assert projected_token(r.agent(), TOKEN_FILE) == {
        "audience": "https://nurse.example.com/aggregator", "expirationSeconds": 86400, "path": "token"}
    assert env_map(r.aggregator_container())["KUBENURSE_AGGREGATOR_AUTH_AUDIENCE"] == (
        "https://nurse.example.com/aggregator")
    assert 'audience "https://nurse.example.com/aggregator"' in r.notes


def test_tokenreview_follows_the_agents_service_account(render):
    r = render({"serviceAccount": {"name": "nurse-agents"}})
    assert agent_sa_name(r) == "nurse-agents"
    assert env_map(r.aggregator_container())["KUBENURSE_AGGREGATOR_AUTH_SERVICE_ACCOUNT"] == f"{NAMESPACE}:nurse-agents"
    assert f"{NAMESPACE}:nurse-agents" in r.notes


def test_tokenreview_keeps_the_agents_own_volumes(render):
    r = render(TLS_VALUES)
    pod = r.agent()["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["tls", "aggregator-token"]
    assert [m["mountPath"] for m in r.agent_container()["volumeMounts"]] == [
        "/etc/kubenurse/tls", posixpath.dirname(TOKEN_FILE)]
    assert r.agent_env()["KUBENURSE_CERT_FILE"] == "/etc/kubenurse/tls/tls.crt"
    assert projected_token(r.agent(), TOKEN_FILE)["audience"] == "kubenurse-aggregator"
    # Over TLS the tokens are protected: no hint.
    assert "unencrypted" not in render(AGGREGATOR_TLS_VALUES).notes


def test_auth_none(render):
    r = render(AUTH_NONE_VALUES)
    env = r.agent_env()
    assert not {"KUBENURSE_AGGREGATOR_TOKEN_FILE", *MTLS_AGENT_ENV} & set(env)
    assert "volumes" not in r.agent()["spec"]["template"]["spec"]
    assert "volumeMounts" not in r.agent_container()
    agg_env = env_map(r.aggregator_container())
    assert agg_env["KUBENURSE_AGGREGATOR_AUTH"] == "none"
    assert not {*TOKEN_ENV, "KUBENURSE_AGGREGATOR_CLIENT_CA"} & set(agg_env)
    # The aggregator reads the API server for pushed discovery only: its token, discovery's RBAC.
    agg_sa = aggregator_sa_name(r)
    assert r.aggregator()["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert grants(r, agg_sa) == DISCOVERY_GRANTS
    assert r.one("Role", aggregator_role(r))["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    # Without it the aggregator is back to talking to nobody: no token, no RBAC.
    off = render(deep_merge(AUTH_NONE_VALUES, DISCOVERY_OFF_VALUES))
    assert off.aggregator()["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert off.one("ServiceAccount", agg_sa)["automountServiceAccountToken"] is False
    assert aggregator_rbac(off) == [] and grants(off, agg_sa) == set()
    assert set(render().kinds()) - set(off.kinds()) == set(aggregator_rbac(render()))
    assert 'WARNING: aggregator.auth.mode is "none"' in r.notes
    assert "TokenReview" not in r.notes


@pytest.mark.parametrize("name,namespace", [(RELEASE, NAMESPACE), ("kubenurse", "kube-system")])
def test_mtls(render, name, namespace):
    r = render(MTLS_VALUES, name=name, namespace=namespace)
    # The agents present the certificate from their volume, and still verify the aggregator's.
    env = r.agent_env()
    assert env["KUBENURSE_AGGREGATOR_CERT"] == AGENT_CERT
    assert env["KUBENURSE_AGGREGATOR_KEY"] == AGENT_KEY
    assert mounted_volume(r.agent(), AGENT_CERT) == {"name": "aggregator-client", **AGENT_CERT_VOLUME}
    assert mounted_volume(r.agent(), AGENT_KEY)["name"] == "aggregator-client"
    assert env["KUBENURSE_AGGREGATOR_URL"].startswith("https://")
    assert secret_file(r.agent(), env["KUBENURSE_AGGREGATOR_CA"]) == ("aggregator-tls", "ca.crt")
    assert "KUBENURSE_AGGREGATOR_TOKEN_FILE" not in env
    assert [v["name"] for v in r.agent()["spec"]["template"]["spec"]["volumes"]] == [
        "aggregator-ca", "aggregator-client"]
    # The aggregator verifies them against the client CA (only its key mounted), next to its own certificate.
    agg_env = env_map(r.aggregator_container())
    assert agg_env["KUBENURSE_AGGREGATOR_AUTH"] == "mtls"
    assert agg_env["KUBENURSE_AGGREGATOR_CLIENT_CA"] == CLIENT_CA
    assert secret_file(r.aggregator(), CLIENT_CA) == ("agents-ca", "ca.crt")
    assert secret_keys(r.aggregator()) == {
        ("aggregator-tls", "tls.crt"), ("aggregator-tls", "tls.key"), ("agents-ca", "ca.crt")}
    assert agg_env["KUBENURSE_AGGREGATOR_TLS_CERT"] == AGGREGATOR_CERT
    assert not set(TOKEN_ENV) & set(agg_env)
    # The API server only for pushed discovery; without it, no access needed.
    agg_sa = aggregator_sa_name(r)
    assert r.one("ServiceAccount", agg_sa)["automountServiceAccountToken"] is True
    assert grants(r, agg_sa, namespace) == {
        (namespace if scope != "cluster" else scope, g, res, v) for scope, g, res, v in DISCOVERY_GRANTS}
    off = render(deep_merge(MTLS_VALUES, DISCOVERY_OFF_VALUES), name=name, namespace=namespace)
    assert off.aggregator()["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert off.one("ServiceAccount", agg_sa)["automountServiceAccountToken"] is False
    assert aggregator_rbac(off) == [] and grants(off, agg_sa, namespace) == set()
    assert "client certificates" in r.notes and '"agents-ca"' in r.notes and "WARNING" not in r.notes
    for workload in (r.agent(), r.aggregator()):
        for kube_version in KUBE_VERSIONS:
            kubernetes_validate.validate(workload, kube_version, strict=True)


def test_mtls_with_a_custom_ca_key_keeps_the_agents_own_volumes(render):
    r = render(deep_merge({**TLS_VALUES, **MTLS_VALUES}, {"aggregator": {"auth": {"mtls": {"clientCaKey": "root.pem"}}}}))
    assert secret_file(r.aggregator(), CLIENT_CA) == ("agents-ca", "root.pem")
    pod = r.agent()["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["tls", "aggregator-ca", "aggregator-client"]
    assert [m["mountPath"] for m in r.agent_container()["volumeMounts"]] == [
        "/etc/kubenurse/tls", "/etc/kubenurse/aggregator-ca", posixpath.dirname(AGENT_CERT)]
    assert r.agent_env()["KUBENURSE_CERT_FILE"] == "/etc/kubenurse/tls/tls.crt"


@pytest.mark.parametrize("override,message", [
    ({"aggregator": {"tls": {"enabled": False}}},
     "aggregator.auth.mode: mtls needs aggregator.tls.enabled: true"),
    ({"aggregator": {"auth": {"mtls": {"clientCaSecretName": ""}}}},
     "aggregator.auth.mode: mtls needs aggregator.auth.mtls.clientCaSecretName"),
    ({"aggregator": {"auth": {"mtls": {"agentCertVolume": None}}}},
     "aggregator.auth.mode: mtls needs aggregator.auth.mtls.agentCertVolume"),
    ({"aggregator": {"auth": {"mtls": {"agentCertVolume": {"name": "mine"}}}}},
     "aggregator.auth.mtls.agentCertVolume is a volume source without a name"),
])
def test_mtls_without_required_values_fails(chart, override, message):
    with pytest.raises(helm.HelmError) as e:
        chart.render(deep_merge(MTLS_VALUES, override), name=RELEASE, namespace=NAMESPACE)
    assert message in str(e.value), str(e.value)


# --- ServiceMonitor --------------------------------------------------------------------------


def test_service_monitors(render):
    r = render({"serviceMonitor": {"enabled": True, "labels": {"release": "prom"},
                                   "relabelings": [{"targetLabel": "cluster", "replacement": "c1"}]}})
    monitors = {m["metadata"]["name"]: m for m in r.all("ServiceMonitor")}
    assert sorted(monitors) == [f"{RELEASE}-kubenurse", f"{RELEASE}-kubenurse-aggregator"]
    services = {s["metadata"]["name"]: s for s in r.all("Service")}
    for name, m in monitors.items():
        assert m["apiVersion"] == "monitoring.coreos.com/v1"
        assert m["metadata"]["namespace"] == NAMESPACE
        assert m["metadata"]["labels"]["release"] == "prom"
        spec = m["spec"]
        assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        # The selector picks exactly the tier's Service (the headless one has no http port).
        picked = [s for s in services.values() if selects(spec["selector"]["matchLabels"], s["metadata"]["labels"])]
        port_names = {p["name"] for s in picked for p in s["spec"]["ports"]}
        (endpoint,) = spec["endpoints"]
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics" and endpoint["interval"] == "60s"
        assert endpoint["relabelings"][-1] == {"targetLabel": "cluster", "replacement": "c1"}
    agent = monitors[f"{RELEASE}-kubenurse"]["spec"]
    assert agent["endpoints"][0]["port"] == "8080-8080"
    # Agent metrics get the node (and zone) labels the per-node dashboard selects by.
    relabel = agent["endpoints"][0]["relabelings"]
    assert relabel[0] == {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "regex": "(.+)",
                          "targetLabel": "node", "replacement": "$1", "action": "replace"}
    assert relabel[1]["sourceLabels"] == ["__meta_kubernetes_endpointslice_endpoint_zone"]
    assert relabel[1]["targetLabel"] == "zone" and len(relabel) == 3
    assert selects(agent["selector"]["matchLabels"], services[f"{RELEASE}-kubenurse"]["metadata"]["labels"])
    agg = monitors[f"{RELEASE}-kubenurse-aggregator"]["spec"]
    assert agg["endpoints"][0]["port"] == "http"
    assert agg["endpoints"][0]["relabelings"] == [{"targetLabel": "cluster", "replacement": "c1"}]
    assert not selects(agg["selector"]["matchLabels"], services[f"{RELEASE}-kubenurse"]["metadata"]["labels"])
    assert [m["metadata"]["name"] for m in render({"serviceMonitor": {"enabled": True},
                                                   "aggregator": {"enabled": False}}).all("ServiceMonitor")] == [
        f"{RELEASE}-kubenurse"]


# --- NetworkPolicy ---------------------------------------------------------------------------


def test_network_policies(render):
    r = render({"networkPolicy": {"enabled": True}})
    policies = {p["metadata"]["name"]: p["spec"] for p in r.all("NetworkPolicy")}
    agent = policies[f"{RELEASE}-kubenurse"]
    assert agent["podSelector"]["matchLabels"] == r.agent()["spec"]["selector"]["matchLabels"]
    http_rule, udp_rule = agent["ingress"]
    assert http_rule == {"ports": [{"port": "http", "protocol": "TCP"}]}
    # The UDP echo only from the agents (test_udp.py).
    assert udp_rule == {"from": [{"podSelector": {"matchLabels": agent["podSelector"]["matchLabels"]}}],
                        "ports": [{"port": "udp-echo", "protocol": "UDP"}]}
    agg = policies[f"{RELEASE}-kubenurse-aggregator"]
    assert agg["podSelector"]["matchLabels"] == r.aggregator()["spec"]["selector"]["matchLabels"]
    grpc_rule, http_rule = agg["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    (peer,) = grpc_rule["from"]
    assert selects(peer["podSelector"]["matchLabels"], r.agent()["spec"]["template"]["metadata"]["labels"])
    assert http_rule == {"ports": [{"port": "http", "protocol": "TCP"}]}
    assert render().all("NetworkPolicy") == []


# --- values.schema.json ----------------------------------------------------------------------


def test_wrong_type_fails_with_a_clear_message(chart, tmp_path):
    bad = tmp_path / "bad-values.yaml"
    bad.write_text('neighbour_limit: "ten"\n')
    values = helm.values_from_yaml(bad.read_text())
    with pytest.raises(helm.HelmValuesError) as e:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    message = str(e.value)
    assert "neighbour_limit" in message and "ten" in message, message
    # `helm lint -f bad-values.yaml` reports it as an error too.
    report = helm.lint(CHART_DIR, values, strict=True)
    assert any(m["severity"] == 3 and "neighbour_limit" in m["error"] for m in report["messages"]), report


@pytest.mark.parametrize("values,key", [
    ({"neighbour_limit": -1}, "neighbour_limit"),
    ({"neighbour_limit": 2.5}, "neighbour_limit"),
    ({"insecure": "maybe"}, "insecure"),
    ({"check_interval": "5 seconds"}, "check_interval"),
    ({"check_timeout": 6}, "check_timeout"),
    ({"histogram_buckets": "fast,slow"}, "histogram_buckets"),
    ({"service": {"port": "http"}}, "port"),
    ({"ingress": {"enabled": "yes please"}}, "enabled"),
    ({"aggregator": {"replicas": "two"}}, "replicas"),
    ({"aggregator": {"hysteresis": 0}}, "hysteresis"),
    ({"aggregator": {"lossThreshold": "100%"}}, "lossThreshold"),
    ({"aggregator": {"lossThreshold": 1}}, "lossThreshold"),
    ({"aggregator": {"lossThreshold": "2 %"}}, "lossThreshold"),
    ({"aggregator": {"cellMetrics": "some"}}, "cellMetrics"),
    ({"aggregator": {"window": "forever"}}, "window"),
    ({"aggregator": {"replica": 3}}, "replica"),
    ({"daemonset": {"containerImagePullPolicy": "Sometimes"}}, "containerImagePullPolicy"),
    ({"aggregator": {"tls": {"enabled": "yes"}}}, "enabled"),
    ({"aggregator": {"tls": {"secretName": "My_Secret"}}}, "secretName"),
    ({"aggregator": {"tls": {"caSecretName": 7}}}, "caSecretName"),
    ({"aggregator": {"tls": {"caKey": ""}}}, "caKey"),
    ({"aggregator": {"tls": {"secret": "x"}}}, "secret"),
    ({"aggregator": {"auth": {"mode": "oidc"}}}, "mode"),
    ({"aggregator": {"auth": {"mode": ""}}}, "mode"),
    ({"aggregator": {"auth": {"mode": False}}}, "mode"),
    ({"aggregator": {"auth": {"audience": ""}}}, "audience"),
    ({"aggregator": {"auth": {"audience": "two words"}}}, "audience"),
    ({"aggregator": {"auth": {"tokenExpirationSeconds": 599}}}, "tokenExpirationSeconds"),
    ({"aggregator": {"auth": {"tokenExpirationSeconds": "3600"}}}, "tokenExpirationSeconds"),
    ({"aggregator": {"auth": {"tokenExpirationSeconds": 3600.5}}}, "tokenExpirationSeconds"),
    ({"aggregator": {"auth": {"tokenExpirationSeconds": 2 ** 32}}}, "tokenExpirationSeconds"),
    ({"aggregator": {"auth": {"audiences": ["x"]}}}, "audiences"),
    ({"aggregator": {"auth": {"mtls": {"clientCaSecretName": "Agents_CA"}}}}, "clientCaSecretName"),
    ({"aggregator": {"auth": {"mtls": {"clientCaKey": ""}}}}, "clientCaKey"),
    ({"aggregator": {"auth": {"mtls": {"agentCertVolume": "csi"}}}}, "agentCertVolume"),
    ({"aggregator": {"auth": {"mtls": {"caSecretName": "x"}}}}, "caSecretName"),
    ({"discovery": {"mode": "push"}}, "mode"),
    ({"discovery": {"mode": ""}}, "mode"),
    ({"discovery": {"mode": True}}, "mode"),
    ({"discovery": {"fallbackAfter": "soon"}}, "fallbackAfter"),
    ({"discovery": {"fallbackAfter": "0s"}}, "fallbackAfter"),
    ({"discovery": {"fallbackAfter": 60}}, "fallbackAfter"),
    ({"discovery": {"fallback_after": "1m"}}, "fallback_after"),
    ({"aggregator": {"discovery": {"enabled": "yes"}}}, "enabled"),
    ({"aggregator": {"discovery": {"enable": True}}}, "enable"),
])
def test_schema_rejects(chart, values, key):
    with pytest.raises(helm.HelmValuesError) as e:
        chart.validate_schema(values)
    assert key in str(e.value), str(e.value)


def test_defaults_and_upstream_file_pass_the_schema(chart):
    chart.validate_schema({})
    chart.validate_schema(values_file("upstream-values.yaml"))
    for values in (MTLS_VALUES, AUTH_NONE_VALUES, EVERYTHING_VALUES, DISCOVERY_OFF_VALUES, PUSHED_ONLY_VALUES,
                   NODE_CONDITIONS_DRY_RUN_VALUES, NODE_CONDITIONS_ON_VALUES):
        chart.validate_schema(values)


def test_kubernetes_validate_catches_mistakes(render):
    """Negative control: strict validation rejects an unknown field and a non-string env value."""
    good = render().agent()
    kubernetes_validate.validate(good, KUBE_VERSIONS[0], strict=True)
    unknown = copy.deepcopy(good)
    unknown["spec"]["template"]["spec"]["containers"][0]["bogus"] = 1
    number = copy.deepcopy(good)
    number["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X", "value": 10})
    for bad in (unknown, number):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBE_VERSIONS[0], strict=True)


# --- `helm install --dry-run=client`, the other way to render -------------------------------


def test_install_dry_run_renders_the_same_objects(render):
    config = helm.Config(namespace=NAMESPACE, storage_driver="memory")
    try:
        release = config.install(str(CHART_DIR), RELEASE, {}, dry_run="client", namespace=NAMESPACE)
    finally:
        config.close()
    objects = [o for o in yaml.safe_load_all(release["manifest"]) if o]
    # Helm keeps hooks out of the release's manifest: the `helm test` Pod is recognised as one.
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == render().kinds(hooks=False)
    assert [(h["kind"], h["metadata"]["name"]) for h in render().hooks()] == [
        ("Pod", f"{RELEASE}-kubenurse-aggregator-check")]
    assert release["chart_name"] == "kubenurse" and release["namespace"] == NAMESPACE
