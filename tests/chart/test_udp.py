"""The agents' UDP echo/loss probe (values udp.*): KUBENURSE_CHECK_UDP, KUBENURSE_UDP_PORT and
KUBENURSE_UDP_PACKETS, the container port udp-echo every agent answers on (whatever udp.enabled
says), and, with udp.enabled only, the agents' Service port and NetworkPolicy rule for it."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from conftest import NAMESPACE, RELEASE, admits, container_port, env_map, selector_matches
from test_chart import KUBE_VERSIONS, SCENARIOS, scenario_values

UDP_ENV = ("KUBENURSE_CHECK_UDP", "KUBENURSE_UDP_PORT", "KUBENURSE_UDP_PACKETS")
NETWORK_POLICY = {"networkPolicy": {"enabled": True}}
UDP_OFF = {"udp": {"enabled": False}, **NETWORK_POLICY}
CUSTOM_PORT = {"udp": {"port": 9999, "packets": 25}, **NETWORK_POLICY}


def agent_service(r) -> dict[str, Any]:
    return r.one("Service", f"{RELEASE}-kubenurse")


def agent_policy(r) -> dict[str, Any]:
    return r.one("NetworkPolicy", f"{RELEASE}-kubenurse")


def udp_ports(ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in ports if p.get("protocol", "TCP") == "UDP"]


# --- defaults --------------------------------------------------------------------------------


def test_defaults(render):
    r = render(NETWORK_POLICY)
    env = r.agent_env()
    assert {n: env[n] for n in UDP_ENV} == {"KUBENURSE_CHECK_UDP": "true", "KUBENURSE_UDP_PORT": "8081",
                                            "KUBENURSE_UDP_PACKETS": "10"}
    assert udp_ports(r.agent_container()["ports"]) == [{"name": "udp-echo", "containerPort": 8081, "protocol": "UDP"}]
    assert udp_ports(agent_service(r)["spec"]["ports"]) == [
        {"name": "udp-echo", "port": 8081, "targetPort": "udp-echo", "protocol": "UDP"}]
    agent_pods = r.agent()["spec"]["template"]["metadata"]["labels"]
    policy = agent_policy(r)["spec"]
    assert policy["ingress"][-1] == {
        "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "kubenurse",
                                                  "app.kubernetes.io/instance": RELEASE}}}],
        "ports": [{"port": "udp-echo", "protocol": "UDP"}]}
    assert selector_matches(policy["ingress"][-1]["from"][0]["podSelector"], agent_pods)
    # Without networkPolicy.enabled there is no policy at all.
    assert render().all("NetworkPolicy") == []
    # The aggregator takes no part in the probe.
    assert not set(UDP_ENV) & set(env_map(r.aggregator_container()))


@pytest.mark.parametrize("name", ["default", "upstream"])
def test_an_upstream_values_file_gets_the_defaults(render, name):
    # Upstream's chart has no udp values: the probe is on with the defaults.
    env = render(scenario_values(name)).agent_env()
    assert (env["KUBENURSE_CHECK_UDP"], env["KUBENURSE_UDP_PORT"], env["KUBENURSE_UDP_PACKETS"]) == ("true", "8081", "10")


def test_env_order_follows_the_checks(render):
    names = [e["name"] for e in render().agent_container()["env"]]
    i = names.index("KUBENURSE_CHECK_NEIGHBOURHOOD")
    assert names[i + 1:i + 4] == list(UDP_ENV)
    assert all(names.count(n) == 1 for n in UDP_ENV)


# --- the NetworkPolicy: UDP from the neighbour agents only -----------------------------------


def test_network_policy_admits_udp_from_the_agents_only(render):
    r = render(NETWORK_POLICY)
    pod = r.agent()["spec"]["template"]
    agent_pods = pod["metadata"]["labels"]
    aggregator_pods = r.aggregator()["spec"]["template"]["metadata"]["labels"]
    check_pod = r.one("Pod")["metadata"]["labels"]
    policy = agent_policy(r)
    probe = {"peer_namespace": NAMESPACE, "protocol": "UDP", "port": 8081}
    assert admits(policy, pod, peer_labels=agent_pods, **probe)
    for other in (aggregator_pods, check_pod, {"app.kubernetes.io/name": "kubenurse"}, {}):
        assert not admits(policy, pod, peer_labels=other, **probe), other
    # Not from the release's agents in another namespace either, and only that UDP port.
    assert not admits(policy, pod, peer_labels=agent_pods, **{**probe, "peer_namespace": "other"})
    assert not admits(policy, pod, peer_labels=agent_pods, **{**probe, "port": 8080})
    assert not admits(policy, pod, peer_labels=agent_pods, **{**probe, "protocol": "TCP"})
    # HTTP stays open to anyone (ingress controller, Prometheus), as before.
    assert admits(policy, pod, peer_labels={}, peer_namespace="ingress", protocol="TCP", port=8080)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_agents_may_send_udp_to_their_neighbours(render, name):
    """No policy limits the agents' egress: their probes reach the neighbours' echo port, which
    the ingress rule admits from them."""
    r = render(scenario_values(name))
    pod = r.agent()["spec"]["template"]
    labels = pod["metadata"]["labels"]
    guarding = [p for p in r.all("NetworkPolicy") if selector_matches(p["spec"]["podSelector"], labels)]
    for policy in guarding:
        assert "Egress" not in policy["spec"]["policyTypes"], policy["metadata"]["name"]
    env = r.agent_env()
    port, udp_on = int(env["KUBENURSE_UDP_PORT"]), env["KUBENURSE_CHECK_UDP"] == "true"
    for policy in guarding:
        assert admits(policy, pod, peer_labels=labels, peer_namespace=NAMESPACE, protocol="UDP",
                      port=port) == udp_on, policy["metadata"]["name"]
    assert bool(guarding) == (name in ("everything", "helm-test", "udp-off"))


def test_admits_catches_a_closed_udp_port():
    """Negative control of the evaluator: protocol, port number (also behind a name) and peer count."""
    pod = {"metadata": {"labels": {"app.kubernetes.io/name": "kubenurse"}},
           "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                              {"name": "udp-echo", "containerPort": 8081, "protocol": "UDP"}]}]}}
    agents = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "kubenurse"}}}
    policy = {"metadata": {"namespace": NAMESPACE},
              "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [agents], "ports": [{"port": "udp-echo", "protocol": "UDP"}]}]}}
    agent = {"peer_labels": {"app.kubernetes.io/name": "kubenurse"}, "peer_namespace": NAMESPACE}
    assert admits(policy, pod, **agent, protocol="UDP", port=8081)
    assert not admits(policy, pod, **agent, protocol="UDP", port=8080)
    assert not admits(policy, pod, **agent, protocol="TCP", port=8081)
    assert not admits(policy, pod, peer_labels={"app.kubernetes.io/name": "other"}, peer_namespace=NAMESPACE,
                      protocol="UDP", port=8081)
    # A rule naming the port with the wrong protocol resolves to nothing.
    policy["spec"]["ingress"][0]["ports"] = [{"port": "udp-echo", "protocol": "TCP"}]
    assert not admits(policy, pod, **agent, protocol="UDP", port=8081)
    assert not admits(policy, pod, **agent, protocol="TCP", port=8081)
    policy["spec"]["ingress"][0]["ports"] = [{"port": 8081, "protocol": "UDP"}]
    assert admits(policy, pod, **agent, protocol="UDP", port=8081)
    policy["spec"]["ingress"] = []
    assert not admits(policy, pod, **agent, protocol="UDP", port=8081)


# --- udp.enabled false -----------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [False, "false", "0"])
def test_udp_off(render, enabled):
    r = render({**UDP_OFF, "udp": {"enabled": enabled}})
    env = r.agent_env()
    assert env["KUBENURSE_CHECK_UDP"] == "false"
    # The echo is still answered (agents with the probe on may send to it) on the same port.
    assert env["KUBENURSE_UDP_PORT"] == "8081" and env["KUBENURSE_UDP_PACKETS"] == "10"
    assert udp_ports(r.agent_container()["ports"]) == [{"name": "udp-echo", "containerPort": 8081, "protocol": "UDP"}]
    # ...but nothing is opened for it.
    assert udp_ports(agent_service(r)["spec"]["ports"]) == []
    assert [p["name"] for p in agent_service(r)["spec"]["ports"]] == ["8080-8080"]
    policy = agent_policy(r)
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    pod = r.agent()["spec"]["template"]
    assert not admits(policy, pod, peer_labels=pod["metadata"]["labels"], peer_namespace=NAMESPACE,
                      protocol="UDP", port=8081)


# --- a custom port flows everywhere ----------------------------------------------------------


@pytest.mark.parametrize("port", [1, 8443, 9999, 65535])
def test_custom_port_is_consistent(render, port):
    r = render({**CUSTOM_PORT, "udp": {"port": port, "packets": 25}})
    env = r.agent_env()
    assert env["KUBENURSE_UDP_PORT"] == str(port) and env["KUBENURSE_UDP_PACKETS"] == "25"
    assert env["KUBENURSE_CHECK_UDP"] == "true"
    pod = r.agent()["spec"]["template"]
    assert udp_ports(r.agent_container()["ports"]) == [{"name": "udp-echo", "containerPort": port, "protocol": "UDP"}]
    # The Service's UDP port targets the container port of that name, which has the number.
    (svc_port,) = udp_ports(agent_service(r)["spec"]["ports"])
    assert svc_port == {"name": "udp-echo", "port": port, "targetPort": "udp-echo", "protocol": "UDP"}
    assert container_port(pod, svc_port["targetPort"], "UDP") == port
    # The NetworkPolicy's named port resolves to the same number, for the agents only.
    (udp_rule,) = [rule for rule in agent_policy(r)["spec"]["ingress"] if udp_ports(rule["ports"])]
    (rule_port,) = udp_rule["ports"]
    assert container_port(pod, rule_port["port"], rule_port["protocol"]) == port
    labels = pod["metadata"]["labels"]
    assert admits(agent_policy(r), pod, peer_labels=labels, peer_namespace=NAMESPACE, protocol="UDP", port=port)
    assert port == 8081 or not admits(agent_policy(r), pod, peer_labels=labels, peer_namespace=NAMESPACE,
                                      protocol="UDP", port=8081)
    # HTTP is untouched.
    assert [p for p in r.agent_container()["ports"] if p["name"] == "http"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    for obj in (r.agent(), agent_service(r), agent_policy(r)):
        for kube_version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, kube_version, strict=True)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_port_names_are_valid_and_unique(render, name):
    """Kubernetes' port names: IANA service names (at most 15 characters), unique per pod and per
    Service; one container port per number and protocol."""
    r = render(scenario_values(name))
    ports = [p for w in r.all("DaemonSet") + r.all("Deployment")
             for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
    assert ports
    for workload in r.all("DaemonSet") + r.all("Deployment"):
        own = [p for c in workload["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
        names = [p["name"] for p in own]
        assert len(names) == len(set(names)), names
        keys = [(p["containerPort"], p.get("protocol", "TCP")) for p in own]
        assert len(keys) == len(set(keys)), keys
        for n in names:
            assert 1 <= len(n) <= 15 and n[0].isalnum() and n[-1].isalnum() and not n.isdigit(), n
    for svc in r.all("Service"):
        names = [p["name"] for p in svc["spec"]["ports"]]
        assert len(names) == len(set(names)), names
        keys = [(p["port"], p.get("protocol", "TCP")) for p in svc["spec"]["ports"]]
        assert len(keys) == len(set(keys)), keys


# --- values.schema.json ----------------------------------------------------------------------


@pytest.mark.parametrize("values,key", [
    ({"udp": {"port": 0}}, "port"),
    ({"udp": {"port": 70000}}, "port"),
    ({"udp": {"port": 65536}}, "port"),
    ({"udp": {"port": -1}}, "port"),
    ({"udp": {"port": 8081.5}}, "port"),
    ({"udp": {"port": "8081"}}, "port"),
    ({"udp": {"port": "udp-echo"}}, "port"),
    ({"udp": {"packets": 0}}, "packets"),
    ({"udp": {"packets": 101}}, "packets"),
    ({"udp": {"packets": 2.5}}, "packets"),
    ({"udp": {"packets": "10"}}, "packets"),
    ({"udp": {"enabled": "yes"}}, "enabled"),
    ({"udp": {"enabled": 2}}, "enabled"),
    ({"udp": {"packet": 10}}, "packet"),
    ({"udp": True}, "udp"),
])
def test_schema_rejects(chart, values, key):
    with pytest.raises(helm.HelmValuesError) as e:
        chart.validate_schema(values)
    message = str(e.value)
    assert key in message and "udp" in message, message
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("udp", [
    {"port": 1}, {"port": 65535}, {"packets": 1}, {"packets": 100},
    {"enabled": False}, {"enabled": "true"}, {"enabled": "False"},
    {"enabled": True, "port": 9000, "packets": 50},
])
def test_schema_accepts_the_bounds(chart, render, udp):
    chart.validate_schema({"udp": udp})
    env = render({"udp": udp}).agent_env()
    assert env["KUBENURSE_UDP_PORT"] == str(udp.get("port", 8081))
    assert env["KUBENURSE_UDP_PACKETS"] == str(udp.get("packets", 10))
    assert env["KUBENURSE_CHECK_UDP"] == ("false" if str(udp.get("enabled", True)).lower() == "false" else "true")
