"""charts/kubenurse rendered and linted by the real Helm engine, every object validated
against the Kubernetes schemas, and the facts the agents and the aggregator rely on."""

from __future__ import annotations

import copy
import posixpath
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import CHART_DIR, NAMESPACE, RELEASE, container, env_map, selects, values_file

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

EVERYTHING_VALUES = {
    **TLS_VALUES,
    "serviceMonitor": {"enabled": True, "serviceDiscoveryRole": "EndpointSlice", "scrapeTimeout": "10s"},
    "networkPolicy": {"enabled": True},
    "ingress": {"enabled": True, "url": "nurse.example.com"},
    "allow_unschedulable": True,
    "aggregator": {"replicas": 3, "extraEnvs": [{"name": "RUST_LOG", "value": "info"}],
                   "tls": {"enabled": True, "secretName": "aggregator-tls", "caSecretName": "trust",
                           "caKey": "bundle.pem"}},
}

SCENARIOS: dict[str, Any] = {
    "default": {},
    "upstream": "upstream-values.yaml",
    "aggregator-off": {"aggregator": {"enabled": False}},
    "tls": TLS_VALUES,
    "aggregator-tls": AGGREGATOR_TLS_VALUES,
    "servicemonitor": {"serviceMonitor": {"enabled": True}},
    "everything": EVERYTHING_VALUES,
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


def test_every_object_is_namespaced_to_the_release(scenario):
    _, r = scenario
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for obj in r.objects:
        if obj["kind"] in cluster_scoped or obj["metadata"]["name"].endswith("corporate-ca"):
            continue
        assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]


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
        ("ClusterRoleBinding", f"{NAMESPACE}-{RELEASE}-kubenurse"),
        ("DaemonSet", f"{RELEASE}-kubenurse"),
        ("Deployment", f"{RELEASE}-kubenurse-aggregator"),
        ("PodDisruptionBudget", f"{RELEASE}-kubenurse-aggregator"),
        ("Role", f"{RELEASE}-kubenurse"),
        ("RoleBinding", f"{RELEASE}-kubenurse"),
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
    r = render({"aggregator": {"window": "10m", "hysteresis": 3, "goneAfter": "2m", "slowFloor": "5ms",
                               "service": {"grpcPort": 9000, "httpPort": 9001}}})
    env = env_map(r.aggregator_container())
    assert env["KUBENURSE_AGGREGATOR_WINDOW"] == "10m"
    assert env["KUBENURSE_AGGREGATOR_HYSTERESIS"] == "3"
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
    assert ports == {"http": 8080}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http", "scheme": "HTTP"}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/alwayshappy", "port": "http", "scheme": "HTTP"}
    agg = r.aggregator_container()
    assert {p["name"]: p["containerPort"] for p in agg["ports"]} == {"grpc": 50051, "http": 8080}
    assert agg["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http", "scheme": "HTTP"}
    assert agg["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}
    assert agent["readinessProbe"]["periodSeconds"] == 3


def test_security_contexts(scenario):
    name, r = scenario
    for workload in r.all("DaemonSet") + r.all("Deployment"):
        pod = workload["spec"]["template"]["spec"].get("securityContext", {})
        c = container(workload)["securityContext"]
        assert pod.get("runAsNonRoot") is True or c.get("runAsNonRoot") is True
        assert c["readOnlyRootFilesystem"] is True
        assert c["allowPrivilegeEscalation"] is False
        assert c["capabilities"]["drop"] == ["ALL"] and "add" not in c["capabilities"]
        seccomp = c.get("seccompProfile") or pod.get("seccompProfile")
        assert seccomp == {"type": "RuntimeDefault"}
        assert workload["spec"]["template"]["spec"].get("hostNetwork") is not True


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
                                           "protocol": "TCP"}]


def test_user_labels_cannot_break_selection(render):
    r = render({"daemonset": {"podLabels": {"app.kubernetes.io/name": "other", "team": "net"}}})
    labels = r.agent()["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "kubenurse" and labels["team"] == "net"


# --- RBAC ------------------------------------------------------------------------------------


def bound_subjects(r, kind: str) -> list[dict[str, Any]]:
    return [s for b in r.all(kind) for s in b["subjects"]]


@pytest.mark.parametrize("allow_unschedulable", [False, True, "true"])
def test_rbac_is_what_the_agent_reads(render, allow_unschedulable):
    r = render({"allow_unschedulable": allow_unschedulable})
    agent_sa = r.agent()["spec"]["template"]["spec"]["serviceAccountName"]
    role = r.one("Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = r.one("RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": agent_sa, "namespace": NAMESPACE}]
    watches_nodes = allow_unschedulable is False
    assert r.agent_env()["KUBENURSE_ALLOW_UNSCHEDULABLE"] == ("false" if watches_nodes else "true")
    if watches_nodes:
        cr = r.one("ClusterRole")
        assert cr["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
        crb = r.one("ClusterRoleBinding")
        assert crb["roleRef"]["name"] == cr["metadata"]["name"]
        assert crb["subjects"] == [{"kind": "ServiceAccount", "name": agent_sa, "namespace": NAMESPACE}]
    else:
        assert r.all("ClusterRole") == [] and r.all("ClusterRoleBinding") == []
    # The aggregator needs no RBAC and gets no token.
    agg_sa = r.aggregator()["spec"]["template"]["spec"]["serviceAccountName"]
    assert agg_sa != agent_sa
    assert all(s["name"] != agg_sa for s in bound_subjects(r, "RoleBinding") + bound_subjects(r, "ClusterRoleBinding"))
    assert r.aggregator()["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert r.one("ServiceAccount", agg_sa)["automountServiceAccountToken"] is False


def test_existing_service_account(render):
    r = render({"serviceAccount": {"create": False, "name": "existing"}})
    assert r.all("ServiceAccount") == []
    assert r.agent()["spec"]["template"]["spec"]["serviceAccountName"] == "existing"
    assert r.one("RoleBinding")["subjects"][0]["name"] == "existing"


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
    assert "Aggregator" not in r.notes


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
    assert pod["spec"]["volumes"] == [{"name": "corporate-ca", "configMap": {"name": "corporate-ca"}}]
    assert pod["spec"]["serviceAccountName"] == "kubenurse-sa"
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
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "https": 8443}
    env = r.agent_env()
    assert env["KUBENURSE_USE_TLS"] == "true"
    assert env["KUBENURSE_CERT_FILE"] == "/etc/kubenurse/tls/tls.crt"
    assert env["KUBENURSE_CERT_KEY"] == "/etc/kubenurse/tls/tls.key"
    assert c["volumeMounts"] == [{"name": "tls", "mountPath": "/etc/kubenurse/tls", "readOnly": True}]
    svc = r.one("Service", f"{RELEASE}-kubenurse")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "8080-8080": (8080, "http"), "https": (8443, "https")}
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
    assert [v["name"] for v in pod["volumes"]] == ["tls", "aggregator-ca"]
    assert [m["mountPath"] for m in r.agent_container()["volumeMounts"]] == [
        "/etc/kubenurse/tls", "/etc/kubenurse/aggregator-ca"]
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
    for workload in (r.agent(), r.aggregator()):
        assert "volumes" not in workload["spec"]["template"]["spec"]
        assert "volumeMounts" not in container(workload)
    # Without the aggregator there is no stream to protect: nothing to mount, nothing required.
    r = render({"aggregator": {"enabled": False, "tls": {"enabled": True}}})
    assert not {"KUBENURSE_AGGREGATOR_URL", "KUBENURSE_AGGREGATOR_CA"} & set(r.agent_env())
    assert "volumes" not in r.agent()["spec"]["template"]["spec"]


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
    assert agent["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
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
    ({"aggregator": {"window": "forever"}}, "window"),
    ({"aggregator": {"replica": 3}}, "replica"),
    ({"daemonset": {"containerImagePullPolicy": "Sometimes"}}, "containerImagePullPolicy"),
    ({"aggregator": {"tls": {"enabled": "yes"}}}, "enabled"),
    ({"aggregator": {"tls": {"secretName": "My_Secret"}}}, "secretName"),
    ({"aggregator": {"tls": {"caSecretName": 7}}}, "caSecretName"),
    ({"aggregator": {"tls": {"caKey": ""}}}, "caKey"),
    ({"aggregator": {"tls": {"secret": "x"}}}, "secret"),
])
def test_schema_rejects(chart, values, key):
    with pytest.raises(helm.HelmValuesError) as e:
        chart.validate_schema(values)
    assert key in str(e.value), str(e.value)


def test_defaults_and_upstream_file_pass_the_schema(chart):
    chart.validate_schema({})
    chart.validate_schema(values_file("upstream-values.yaml"))


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
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == render().kinds()
    assert release["chart_name"] == "kubenurse" and release["namespace"] == NAMESPACE
