"""The chart's `helm test` hook (templates/tests/check-pod.yaml): a Pod with the aggregator's image
running `kubenurse-aggregator check --url <aggregator HTTP Service> --wait <helmTest.wait>
[--expect-nodes N]` once, so `helm test RELEASE` answers "is this cluster's network healthy?"."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import NAMESPACE, RELEASE, admits, selector_matches, selects
from test_chart import KUBE_VERSIONS

CHECK_POD = f"{RELEASE}-kubenurse-aggregator-check"
AGGREGATOR_URL = f"http://{RELEASE}-kubenurse-aggregator.{NAMESPACE}.svc.cluster.local:8080"
DEFAULT_ARGS = ["check", "--url", AGGREGATOR_URL, "--wait", "2m"]


def check_pod(r) -> dict[str, Any]:
    """The release's one Pod (its name checked by test_default_release_has_the_check_pod)."""
    return r.one("Pod")


def check_container(r) -> dict[str, Any]:
    (c,) = check_pod(r)["spec"]["containers"]
    return c


def args(r) -> list[str]:
    return check_container(r)["args"]


# --- the default release --------------------------------------------------------------------


def test_default_release_has_the_check_pod(render):
    r = render()
    pod = check_pod(r)
    assert pod["metadata"]["name"] == CHECK_POD
    assert pod["apiVersion"] == "v1" and pod["metadata"]["namespace"] == NAMESPACE
    assert pod["metadata"]["annotations"] == {"helm.sh/hook": "test",
                                              "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    c = check_container(r)
    assert c["name"] == "check"
    assert c["args"] == DEFAULT_ARGS
    # The image's ENTRYPOINT is the aggregator binary: no command, only arguments; nothing else.
    assert "command" not in c
    assert not {"env", "envFrom", "volumeMounts", "ports"} & set(c), c
    assert "volumes" not in spec
    assert c["resources"] == {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}
    # It is the only hook, and the only Pod.
    assert [(h["kind"], h["metadata"]["name"]) for h in r.hooks()] == [("Pod", CHECK_POD)]


def test_check_pod_runs_the_aggregators_image_as_the_aggregator(render):
    for values in ({}, {"aggregator": {"image": {"repository": "registry.example.com/agg", "tag": "1.2.3",
                                                 "pullPolicy": "Always"}}}):
        r = render(values)
        c, agg = check_container(r), r.aggregator_container()
        assert c["image"] == agg["image"] and c["imagePullPolicy"] == agg["imagePullPolicy"]
        assert c["securityContext"] == agg["securityContext"]
        assert check_pod(r)["spec"]["securityContext"] == r.aggregator()["spec"]["template"]["spec"]["securityContext"]
    assert c["image"] == "registry.example.com/agg:1.2.3" and c["imagePullPolicy"] == "Always"


def test_check_pod_security(render):
    pod = check_pod(render())["spec"]
    c = check_container(render())["securityContext"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert c == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                 "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True


def test_check_pod_follows_the_aggregators_security_overrides(render):
    # e.g. OpenShift, where the platform assigns the user id.
    r = render({"aggregator": {"podSecurityContext": {"runAsUser": None, "runAsGroup": None}}})
    assert check_pod(r)["spec"]["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


@pytest.mark.parametrize("create,expected", [(True, f"{RELEASE}-kubenurse-aggregator"), (False, "default")])
def test_check_pod_uses_the_aggregators_account_without_a_token(render, create, expected):
    """The account gives the Pod the image pull secrets the aggregator pulls the same image with;
    its token (and so its RBAC) stays out of the Pod."""
    values = {"serviceAccount": {"create": create, "imagePullSecrets": [{"name": "regcred"}]}}
    r = render(values)
    spec = check_pod(r)["spec"]
    assert spec["serviceAccountName"] == expected == r.aggregator()["spec"]["template"]["spec"]["serviceAccountName"]
    assert spec["automountServiceAccountToken"] is False
    if create:
        sa = r.one("ServiceAccount", expected)
        assert sa["imagePullSecrets"] == [{"name": "regcred"}]
    # No projected token either.
    assert not any("projected" in v for v in spec.get("volumes", []))


# --- the URL: the aggregator's HTTP Service -------------------------------------------------


@pytest.mark.parametrize("values,name,namespace", [
    ({}, RELEASE, NAMESPACE),
    ({}, "kubenurse", "kube-system"),
    ({"aggregator": {"service": {"httpPort": 9001, "grpcPort": 9000}}, "clusterDomain": "corp.internal"},
     RELEASE, NAMESPACE),
    ({"fullnameOverride": "nurse-x", "aggregator": {"tls": {"enabled": True, "secretName": "agg-tls"}}},
     RELEASE, NAMESPACE),
], ids=["default", "release-kubenurse", "custom-port-domain", "fullname-tls"])
def test_url_is_the_aggregators_http_service(render, values, name, namespace):
    r = render(values, name=name, namespace=namespace)
    assert check_pod(r)["metadata"]["name"] == f"{r.aggregator()['metadata']['name']}-check"
    a = args(r)
    assert a[:2] == ["check", "--url"] and a[3] == "--wait"
    url = urlsplit(a[2])
    # Plain HTTP even with aggregator.tls (which covers the gRPC stream only): the probes agree.
    assert url.scheme == "http" and url.path == "" and url.port is not None
    assert r.aggregator_container()["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    svc_name, ns, svc, domain = url.hostname.split(".", 3)
    assert (ns, svc) == (namespace, "svc")
    assert domain == values.get("clusterDomain", "cluster.local")
    service = r.one("Service", svc_name)
    assert service["metadata"]["namespace"] == namespace
    assert service["spec"].get("clusterIP") != "None"
    # The URL's port is the Service's http port, which leads to the aggregator's http container port.
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    assert port["name"] == "http" and port["targetPort"] == "http"
    http = {p["name"]: p["containerPort"] for p in r.aggregator_container()["ports"]}["http"]
    assert http == url.port == values.get("aggregator", {}).get("service", {}).get("httpPort", 8080)
    assert selects(service["spec"]["selector"], r.aggregator()["spec"]["template"]["metadata"]["labels"])


def test_default_url(render):
    assert args(render())[2] == AGGREGATOR_URL


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("wait", ["30s", "0s", "0", "1m30s", "10m"])
def test_wait(render, wait):
    assert args(render({"helmTest": {"wait": wait}})) == ["check", "--url", AGGREGATOR_URL, "--wait", wait]


@pytest.mark.parametrize("expect_nodes,flag", [
    (0, []),
    (1, ["--expect-nodes", "1"]),
    (3, ["--expect-nodes", "3"]),
    (1000000, ["--expect-nodes", "1000000"]),  # not 1e+06
])
def test_expect_nodes_only_when_above_zero(render, expect_nodes, flag):
    r = render({"helmTest": {"expectNodes": expect_nodes}})
    assert args(r) == DEFAULT_ARGS + flag


def test_expect_nodes_and_wait_from_a_values_file(chart):
    """Numbers as `helm -f` reads them (Helm's YAML reader, not Python's)."""
    values = helm.values_from_yaml("helmTest:\n  expectNodes: 250\n  wait: 45s\n")
    r = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    pod = yaml.safe_load(r["kubenurse/templates/tests/check-pod.yaml"])
    assert pod["spec"]["containers"][0]["args"] == ["check", "--url", AGGREGATOR_URL, "--wait", "45s",
                                                    "--expect-nodes", "250"]


@pytest.mark.parametrize("enabled", [False, "false"])
def test_disabled(render, enabled):
    r = render({"helmTest": {"enabled": enabled}})
    assert r.all("Pod") == [] and r.hooks() == []
    assert r.all("Deployment")  # the aggregator itself stays
    assert "helm test" not in r.notes
    assert "helm test" in render().notes


@pytest.mark.parametrize("enabled", [True, "true"])
def test_no_check_pod_without_the_aggregator(render, enabled):
    r = render({"aggregator": {"enabled": False}, "helmTest": {"enabled": enabled}})
    assert r.all("Pod") == [] and r.hooks() == []
    assert "helm test" not in r.notes


def test_null_helm_test_values_fall_back_to_the_defaults(render):
    r = render({"helmTest": None})
    assert args(r) == DEFAULT_ARGS
    assert check_pod(r)["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"


def test_delete_policy_resources_and_scheduling(render):
    tolerations = [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    r = render({"helmTest": {"deletePolicy": "before-hook-creation",
                             "resources": {"requests": {"cpu": "50m"}, "limits": {"memory": "32Mi"}},
                             "nodeSelector": {"kubernetes.io/os": "linux"}, "tolerations": tolerations}})
    pod = check_pod(r)
    assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    # Maps merge with the defaults (cpu 10m replaced, memory request kept), as elsewhere.
    assert check_container(r)["resources"] == {"requests": {"cpu": "50m", "memory": "16Mi"},
                                               "limits": {"memory": "32Mi"}}
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["tolerations"] == tolerations
    # None by default: not the aggregator's scheduling (its anti-affinity is about its replicas).
    default = check_pod(render())["spec"]
    assert not {"nodeSelector", "tolerations", "affinity", "priorityClassName"} & set(default)


@pytest.mark.parametrize("values", [
    {},
    {"helmTest": {"expectNodes": 12, "wait": "0s", "podLabels": {"team": "net"},
                  "nodeSelector": {"kubernetes.io/os": "linux"},
                  "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
                  "resources": {"requests": {"cpu": "5m"}}}},
    {"aggregator": {"podSecurityContext": {"runAsUser": None, "runAsGroup": None}}},
], ids=["default", "custom", "openshift"])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_check_pod_matches_the_kubernetes_schema(render, values, kube_version):
    kubernetes_validate.validate(check_pod(render(values)), kube_version, strict=True)


# --- labels: nothing selects the Pod; the NetworkPolicy admits it ------------------------------


def test_labels_select_nothing_else(render):
    for name in (RELEASE, "kubenurse"):
        r = render({"helmTest": {"podLabels": {"app.kubernetes.io/name": "kubenurse", "team": "net"}}}, name=name)
        labels = check_pod(r)["metadata"]["labels"]
        # podLabels are added, the chart's own win.
        assert labels["team"] == "net"
        assert labels["app.kubernetes.io/name"] == "kubenurse-check"
        assert labels["app.kubernetes.io/instance"] == name
        assert labels["app.kubernetes.io/component"] == "helm-test"
        for svc in r.all("Service"):
            assert not selects(svc["spec"]["selector"], labels), svc["metadata"]["name"]
        for selector_of in (r.agent(), r.aggregator(), r.one("PodDisruptionBudget")):
            assert not selects(selector_of["spec"]["selector"]["matchLabels"], labels)
        # Not a neighbour of the agents (default neighbour_filter app.kubernetes.io/name=kubenurse).
        key, value = r.agent_env()["KUBENURSE_NEIGHBOUR_FILTER"].split("=")
        assert labels.get(key) != value


def test_network_policy_admits_the_check_pod(render):
    r = render({"networkPolicy": {"enabled": True}})
    pod = check_pod(r)
    labels = pod["metadata"]["labels"]
    aggregator_pods = r.aggregator()["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in r.aggregator_container()["ports"]}
    url_port = urlsplit(args(r)[2]).port
    (target,) = [p["targetPort"] for p in r.one("Service", f"{RELEASE}-kubenurse-aggregator")["spec"]["ports"]
                 if p["port"] == url_port]
    guarding = [p for p in r.all("NetworkPolicy")
                if selector_matches(p["spec"]["podSelector"], aggregator_pods)]
    assert guarding, "no NetworkPolicy selects the aggregator: nothing was tested"
    for policy in guarding:
        assert admits(policy, peer_labels=labels, peer_namespace=NAMESPACE,
                      port_name=target, port=ports[target]), policy["metadata"]["name"]
        # The evaluator tells ports apart: gRPC stays the agents' only.
        assert not admits(policy, peer_labels=labels, peer_namespace=NAMESPACE,
                          port_name="grpc", port=ports["grpc"])
        assert admits(policy, peer_labels=r.agent()["spec"]["template"]["metadata"]["labels"],
                      peer_namespace=NAMESPACE, port_name="grpc", port=ports["grpc"])
    # Nothing limits the Pod's own traffic (egress to DNS and the Service).
    for policy in r.all("NetworkPolicy"):
        if selector_matches(policy["spec"]["podSelector"], labels):
            assert "Egress" not in policy["spec"].get("policyTypes", []), policy["metadata"]["name"]


def test_admits_catches_a_closed_port():
    """Negative control of the evaluator: an HTTP rule limited to the agents shuts the Pod out."""
    policy = {"metadata": {"namespace": NAMESPACE},
              "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "kubenurse"}}}],
                                    "ports": [{"port": "http", "protocol": "TCP"}]}]}}
    check = {"app.kubernetes.io/name": "kubenurse-check"}
    assert not admits(policy, peer_labels=check, peer_namespace=NAMESPACE, port_name="http", port=8080)
    assert admits(policy, peer_labels={"app.kubernetes.io/name": "kubenurse"}, peer_namespace=NAMESPACE,
                  port_name="http", port=8080)
    assert not admits(policy, peer_labels={"app.kubernetes.io/name": "kubenurse"}, peer_namespace="other",
                      port_name="http", port=8080)
    policy["spec"]["ingress"][0]["from"][0]["podSelector"] = {
        "matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": ["kubenurse-check"]}]}
    assert admits(policy, peer_labels=check, peer_namespace=NAMESPACE, port_name="http", port=8080)
    policy["spec"]["ingress"] = []
    assert not admits(policy, peer_labels=check, peer_namespace=NAMESPACE, port_name="http", port=8080)


# --- values.schema.json ----------------------------------------------------------------------


@pytest.mark.parametrize("values,key", [
    ({"helmTest": {"enabled": "yes"}}, "enabled"),
    ({"helmTest": {"wait": "2 minutes"}}, "wait"),
    ({"helmTest": {"wait": "2"}}, "wait"),
    ({"helmTest": {"wait": ""}}, "wait"),
    ({"helmTest": {"wait": 120}}, "wait"),
    ({"helmTest": {"wait": "-1m"}}, "wait"),
    ({"helmTest": {"expectNodes": -1}}, "expectNodes"),
    ({"helmTest": {"expectNodes": 2.5}}, "expectNodes"),
    ({"helmTest": {"expectNodes": "3"}}, "expectNodes"),
    ({"helmTest": {"deletePolicy": "always"}}, "deletePolicy"),
    ({"helmTest": {"deletePolicy": "hook-succeeded,"}}, "deletePolicy"),
    ({"helmTest": {"deletePolicy": "before-hook-creation, hook-succeeded"}}, "deletePolicy"),
    ({"helmTest": {"deletePolicy": ""}}, "deletePolicy"),
    ({"helmTest": {"podLabels": {"team": 1}}}, "podLabels"),
    ({"helmTest": {"podLabels": []}}, "podLabels"),
    ({"helmTest": {"resources": "small"}}, "resources"),
    ({"helmTest": {"nodeSelector": {"zone": 3}}}, "nodeSelector"),
    ({"helmTest": {"tolerations": {}}}, "tolerations"),
    ({"helmTest": {"expect_nodes": 3}}, "expect_nodes"),
    ({"helmTest": {"timeout": "5m"}}, "timeout"),
    ({"helmTest": "on"}, "helmTest"),
])
def test_schema_rejects(chart, values, key):
    with pytest.raises(helm.HelmValuesError) as e:
        chart.validate_schema(values)
    assert key in str(e.value), str(e.value)


@pytest.mark.parametrize("values", [
    {},
    {"helmTest": {"enabled": False}},
    {"helmTest": {"enabled": "true", "wait": "0", "expectNodes": 0}},
    {"helmTest": {"wait": "1m30s", "expectNodes": 500, "deletePolicy": "hook-succeeded,hook-failed",
                  "podLabels": {"team": "net"}, "resources": {}, "nodeSelector": {}, "tolerations": []}},
    {"helmTest": {"deletePolicy": "before-hook-creation"}},
])
def test_schema_accepts(chart, values):
    chart.validate_schema(values)


def test_rejected_values_fail_the_render(chart):
    """`helm install`/`helm template` refuse them too, not only validate_schema."""
    with pytest.raises(helm.HelmValuesError) as e:
        chart.render({"helmTest": {"wait": "soon"}}, name=RELEASE, namespace=NAMESPACE)
    assert "wait" in str(e.value)

