"""Shared helpers for the chart and dashboard tests (run by scripts/test-chart.sh).

The chart is rendered by the real Helm engine: PyPI helm-python-sdk binds Helm's Go SDK
(v4) through a C ABI. `helm_python.Chart.render` is `helm template`: it coalesces the
chart's defaults with the given values, validates them against values.schema.json and
renders offline.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "kubenurse"
HERE = Path(__file__).resolve().parent

RELEASE = "nurse"
NAMESPACE = "monitoring"


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--update-alerts", action="store_true", default=False,
        help="rewrite alerts/kubenurse.rules.yaml from the chart (test_alerts.py) instead of comparing it")


def values_file(name: str) -> dict[str, Any]:
    """A values file of this directory, parsed by Helm's own YAML reader (as `helm -f`)."""
    return helm.values_from_yaml((HERE / name).read_text(encoding="utf-8"))


class Rendered:
    """The objects of one `helm template`, with lookups by kind and name."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.manifests = manifests
        self.notes = ""
        self.objects: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append(doc)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        return found[0]

    def kinds(self, *, hooks: bool = True) -> list[tuple[str, str]]:
        """(kind, name) of every object; hooks=False: only what `helm install` applies as the
        release's manifest, without hook objects (the `helm test` Pod)."""
        return sorted((o["kind"], o["metadata"]["name"]) for o in self.objects if hooks or not is_hook(o))

    def hooks(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if is_hook(o)]

    # The two workloads and their containers.
    def agent(self) -> dict[str, Any]:
        return self.one("DaemonSet")

    def agent_container(self) -> dict[str, Any]:
        return container(self.agent())

    def aggregator(self) -> dict[str, Any]:
        return self.one("Deployment")

    def aggregator_container(self) -> dict[str, Any]:
        return container(self.aggregator())

    def agent_env(self) -> dict[str, Any]:
        return env_map(self.agent_container())


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """base with override's keys, maps merged recursively (as Helm merges values files)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def is_hook(obj: dict[str, Any]) -> bool:
    """A Helm hook (helm.sh/hook annotation): not part of the release's manifest."""
    return "helm.sh/hook" in (obj["metadata"].get("annotations") or {})


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_map(c: dict[str, Any]) -> dict[str, Any]:
    """name → value (a string) or the valueFrom object; duplicate names are an error."""
    out: dict[str, Any] = {}
    for e in c.get("env", []):
        assert e["name"] not in out, f"duplicate env {e['name']}"
        out[e["name"]] = e["value"] if "value" in e else e["valueFrom"]
    return out


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART_DIR) as c:
        yield c


@pytest.fixture(scope="session")
def render(chart):
    cache: dict[str, Rendered] = {}

    def _render(values: dict[str, Any] | None = None, *, name: str = RELEASE,
                namespace: str = NAMESPACE) -> Rendered:
        key = repr((values, name, namespace))
        if key not in cache:
            cache[key] = Rendered(chart.render(values or {}, name=name, namespace=namespace))
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: install Debian's 'prometheus' package (scripts/test-chart.sh does)"
    return path


# --- NetworkPolicy ---------------------------------------------------------------------------


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector: matchLabels and matchExpressions; {} matches everything."""
    selector = selector or {}
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": labels.get(key) not in values,
              "Exists": key in labels,
              "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def container_port(pod: dict[str, Any], name: str, protocol: str) -> int | None:
    """The number a named port resolves to on the pod template: its container port of that name
    and protocol (None: no such port)."""
    found = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])
             if p.get("name") == name and p.get("protocol", "TCP") == protocol]
    assert len(found) <= 1, found
    return found[0] if found else None


def admits(policy: dict[str, Any], pod: dict[str, Any] | None = None, *, peer_labels: dict[str, str],
           peer_namespace: str, protocol: str = "TCP", port: int, port_name: str | None = None) -> bool:
    """Whether NetworkPolicy `policy` lets a pod (labels, namespace) send `protocol` traffic to port
    number `port` (named `port_name`) of the pods it selects; a named port of a rule is resolved
    against pod template `pod`'s container ports (name and protocol) when given."""
    spec = policy["spec"]
    if pod is not None:
        assert selector_matches(spec["podSelector"], pod["metadata"]["labels"]), "the policy does not guard the pod"
    if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
        return True
    for rule in spec.get("ingress", []):
        ports_ok = False
        for p in rule.get("ports") or [{}]:
            if p.get("protocol", "TCP") != protocol:
                continue
            if "port" not in p:
                ports_ok = True
            elif isinstance(p["port"], int):
                ports_ok = ports_ok or p["port"] == port
            elif p["port"] == port_name:
                ports_ok = True
            elif pod is not None:
                ports_ok = ports_ok or container_port(pod, p["port"], protocol) == port
        if not ports_ok:
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            assert "ipBlock" not in peer, peer  # pods are not matched by address here
            if "namespaceSelector" in peer:
                ns_ok = selector_matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": peer_namespace})
            else:
                ns_ok = peer_namespace == policy["metadata"]["namespace"]
            if ns_ok and selector_matches(peer.get("podSelector"), peer_labels):
                return True
    return False
