//! Which pods are neighbours: pure rules over cached Pod and Node objects (no I/O), so the
//! discovery task only feeds data in and these rules are tested on plain values.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::ring::{node_hash, Neighbour};
use crate::selector::LabelSelector;

/// The taint upstream treats as "cordoned".
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// Whether a node should not receive checks: cordoned or tainted unschedulable.
pub fn node_is_unschedulable(node: &Node) -> bool {
    node.spec.as_ref().is_some_and(|spec| {
        unschedulable_by(spec.unschedulable, spec.taints.iter().flatten().map(|t| (t.key.as_str(), t.effect.as_str())))
    })
}

/// The rule of [`node_is_unschedulable`] on a spec's two fields (`taints` as key and effect),
/// for the slim decoder, which never builds a `NodeSpec`.
pub fn unschedulable_by<'a>(unschedulable: Option<bool>, mut taints: impl Iterator<Item = (&'a str, &'a str)>) -> bool {
    unschedulable == Some(true) || taints.any(|(key, effect)| key == UNSCHEDULABLE_TAINT && effect == "NoSchedule")
}

/// What eligibility reads of a pod, from a full k8s-openapi `Pod` (tests, fixtures) or from
/// the [`crate::slim::SlimPod`] discovery caches.
pub trait PodFacts {
    /// Name, labels, deletion time.
    fn meta(&self) -> &ObjectMeta;
    /// `spec.nodeName`.
    fn node_name(&self) -> Option<&str>;
    /// `status.phase`.
    fn phase(&self) -> Option<&str>;
    /// `status.podIP`.
    fn pod_ip(&self) -> Option<&str>;
    /// `status.hostIP`.
    fn host_ip(&self) -> Option<&str>;
}

impl PodFacts for Pod {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn node_name(&self) -> Option<&str> {
        self.spec.as_ref()?.node_name.as_deref()
    }
    fn phase(&self) -> Option<&str> {
        self.status.as_ref()?.phase.as_deref()
    }
    fn pod_ip(&self) -> Option<&str> {
        self.status.as_ref()?.pod_ip.as_deref()
    }
    fn host_ip(&self) -> Option<&str> {
        self.status.as_ref()?.host_ip.as_deref()
    }
}

/// Every eligible pod, grouped by node and sorted by pod name: Running, not terminating,
/// matching `filter`, with a pod IP and a node; with `nodes`, only on nodes that exist and are
/// schedulable. The aggregator keeps this once for all agents ([`crate::ring::Ring`]).
pub fn eligible_by_node<'a, P: PodFacts + 'a>(
    pods: impl IntoIterator<Item = &'a P>,
    nodes: Option<&HashMap<String, bool>>,
    filter: &LabelSelector,
) -> BTreeMap<String, Vec<Neighbour>> {
    let empty = BTreeMap::new();
    let mut by_node: BTreeMap<String, Vec<Neighbour>> = BTreeMap::new();
    for pod in pods {
        let meta = pod.meta();
        let name = meta.name.as_deref().unwrap_or_default();
        if name.is_empty() || meta.deletion_timestamp.is_some() {
            continue;
        }
        if !filter.matches(meta.labels.as_ref().unwrap_or(&empty)) {
            continue;
        }
        if pod.phase() != Some("Running") {
            continue;
        }
        let Some(pod_ip) = pod.pod_ip().filter(|ip| !ip.is_empty()) else { continue };
        let Some(node_name) = pod.node_name().filter(|n| !n.is_empty()) else {
            continue;
        };
        if let Some(nodes) = nodes {
            // Missing node or unschedulable node: skip.
            if nodes.get(node_name) != Some(&true) {
                continue;
            }
        }
        by_node.entry(node_name.to_string()).or_default().push(Neighbour {
            pod_name: name.to_string(),
            pod_ip: pod_ip.to_string(),
            host_ip: pod.host_ip().unwrap_or_default().to_string(),
            node_name: node_name.to_string(),
            node_hash: node_hash(node_name),
        });
    }
    for pods in by_node.values_mut() {
        pods.sort_by(|a, b| a.pod_name.cmp(&b.pod_name));
    }
    by_node
}

/// Neighbour candidates of `own_pod` (before the ring filter): the eligible pods
/// ([`eligible_by_node`]) but `own_pod`, one per node (the first by name), since checks are
/// named by node.
pub fn eligible_neighbours<'a, P: PodFacts + 'a>(
    pods: impl IntoIterator<Item = &'a P>,
    nodes: Option<&HashMap<String, bool>>,
    own_pod: &str,
    filter: &LabelSelector,
) -> Vec<Neighbour> {
    eligible_by_node(pods, nodes, filter)
        .into_values()
        .filter_map(|pods| pods.into_iter().find(|p| p.pod_name != own_pod))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, PodSpec, PodStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(name: &str, node: &str, phase: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec { node_name: Some(node.into()), ..PodSpec::default() }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: Some("10.0.0.9".into()),
                host_ip: Some("192.0.2.1".into()),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn applies_every_rule() {
        let app = [("app", "kubenurse")];
        let mut terminating = pod("p-term", "n-term", "Running", &app);
        terminating.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let pods = vec![
            pod("me", "n-me", "Running", &app),
            pod("p-ok", "n-ok", "Running", &app),
            pod("p-pending", "n-pending", "Pending", &app),
            pod("p-other", "n-other", "Running", &[("app", "other")]),
            pod("p-cordoned", "n-cordoned", "Running", &app),
            pod("p-gone", "n-gone", "Running", &app),
            pod("p-ok-2", "n-ok", "Running", &app),
            terminating,
        ];
        let filter = LabelSelector::parse("app=kubenurse").unwrap();
        let nodes: HashMap<String, bool> = [
            ("n-me", true),
            ("n-ok", true),
            ("n-pending", true),
            ("n-other", true),
            ("n-cordoned", false),
            ("n-term", true),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let got = eligible_neighbours(&pods, Some(&nodes), "me", &filter);
        let names: Vec<_> = got.iter().map(|n| n.pod_name.as_str()).collect();
        assert_eq!(names, ["p-ok"]);
        // Allowing unschedulable: no node information at all.
        let got = eligible_neighbours(&pods, None, "me", &filter);
        let names: Vec<_> = got.iter().map(|n| n.pod_name.as_str()).collect();
        assert_eq!(names, ["p-cordoned", "p-gone", "p-ok"]);
    }

    #[test]
    fn cordon_and_taint_both_count() {
        let mut node =
            Node { spec: Some(NodeSpec { unschedulable: Some(true), ..NodeSpec::default() }), ..Node::default() };
        assert!(node_is_unschedulable(&node));
        node.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: UNSCHEDULABLE_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            }]),
            ..NodeSpec::default()
        });
        assert!(node_is_unschedulable(&node));
        node.spec = Some(NodeSpec {
            taints: Some(vec![Taint { key: "other".into(), effect: "NoSchedule".into(), ..Taint::default() }]),
            ..NodeSpec::default()
        });
        assert!(!node_is_unschedulable(&node));
    }
}
