//! Which pods are neighbours: pure rules over cached Pod and Node objects (no I/O), so the
//! discovery task only feeds data in and these rules are tested on plain values.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use k8s_openapi::api::core::v1::{Node, Pod};

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
    /// `metadata.name`.
    fn name(&self) -> Option<&str>;
    /// Whether `metadata.deletionTimestamp` is set.
    fn terminating(&self) -> bool;
    /// `spec.nodeName`.
    fn node_name(&self) -> Option<&str>;
    /// `status.phase`.
    fn phase(&self) -> Option<&str>;
    /// `status.podIP`.
    fn pod_ip(&self) -> Option<&str>;
    /// `status.hostIP`.
    fn host_ip(&self) -> Option<&str>;
    /// Whether `filter` selects the pod (by its labels, unless the cache judged it already).
    fn selected_by(&self, filter: &LabelSelector) -> bool;
}

impl PodFacts for Pod {
    fn name(&self) -> Option<&str> {
        self.metadata.name.as_deref()
    }
    fn terminating(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }
    fn selected_by(&self, filter: &LabelSelector) -> bool {
        filter.matches_labels_of(self.metadata.labels.as_ref())
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

/// A pod that may be checked, as borrowed from the cache: (pod name, node name, pod IP).
type Eligible<'a> = (&'a str, &'a str, &'a str);

/// The one home of the eligibility rule: Running, not terminating, matching `filter`, with a
/// name, a pod IP and a node; with `nodes`, only on nodes that exist and are schedulable.
fn eligible<'a, P: PodFacts, K: Borrow<str> + Hash + Eq>(
    pod: &'a P,
    nodes: Option<&HashMap<K, bool>>,
    filter: &LabelSelector,
) -> Option<Eligible<'a>> {
    let name = pod.name().filter(|n| !n.is_empty())?;
    if pod.terminating() || pod.phase() != Some("Running") {
        return None;
    }
    let matched = pod.selected_by(filter);
    let pod_ip = pod.pod_ip().filter(|ip| !ip.is_empty())?;
    let node_name = pod.node_name().filter(|n| !n.is_empty())?;
    // Missing node or unschedulable node: skip.
    let on_a_good_node = nodes.is_none_or(|nodes| nodes.get(node_name) == Some(&true));
    (matched && on_a_good_node).then_some((name, node_name, pod_ip))
}

fn neighbour(pod: &impl PodFacts, (name, node_name, pod_ip): Eligible<'_>, node_hash: u64) -> Neighbour {
    Neighbour {
        pod_name: name.to_string(),
        pod_ip: pod_ip.to_string(),
        host_ip: pod.host_ip().unwrap_or_default().to_string(),
        node_name: node_name.to_string(),
        node_hash,
    }
}

/// Every eligible pod ([`eligible`]'s rule), grouped by node and sorted by pod name. The
/// aggregator keeps this once for all agents ([`crate::ring::Ring`]).
pub fn eligible_by_node<'a, P: PodFacts + 'a, K: Borrow<str> + Hash + Eq>(
    pods: impl IntoIterator<Item = &'a P>,
    nodes: Option<&HashMap<K, bool>>,
    filter: &LabelSelector,
) -> BTreeMap<String, Vec<Neighbour>> {
    let mut by_node: BTreeMap<String, Vec<Neighbour>> = BTreeMap::new();
    for pod in pods {
        if let Some(e @ (_, node_name, _)) = eligible(pod, nodes, filter) {
            by_node.entry(node_name.to_string()).or_default().push(neighbour(pod, e, node_hash(node_name)));
        }
    }
    for pods in by_node.values_mut() {
        pods.sort_by(|a, b| a.pod_name.cmp(&b.pod_name));
    }
    by_node
}

/// Neighbour candidates of `own_pod` (before the ring filter): the eligible pods
/// ([`eligible_by_node`]) but `own_pod`, one per node (the first by name), since checks are
/// named by node.
pub fn eligible_neighbours<'a, P: PodFacts + 'a, K: Borrow<str> + Hash + Eq>(
    pods: impl IntoIterator<Item = &'a P>,
    nodes: Option<&HashMap<K, bool>>,
    own_pod: &str,
    filter: &LabelSelector,
) -> Vec<Neighbour> {
    eligible_by_node(pods, nodes, filter)
        .into_values()
        .filter_map(|pods| pods.into_iter().find(|p| p.pod_name != own_pod))
        .collect()
}

/// What an agent on `own_node` checks: exactly
/// `select_neighbours(own_node, eligible_neighbours(..), limit)` (a property test holds them
/// together), but building a [`Neighbour`] only for the `limit` it keeps. Local discovery runs
/// this every round over the whole cluster's pods; building 5,000 neighbours to keep ten was
/// most of an agent's allocations at 5,000 nodes.
pub fn nearest_neighbours<'a, P: PodFacts + 'a, K: Borrow<str> + Hash + Eq>(
    own_node: &str,
    pods: impl IntoIterator<Item = &'a P>,
    nodes: Option<&HashMap<K, bool>>,
    own_pod: &str,
    filter: &LabelSelector,
    limit: usize,
) -> Vec<Neighbour> {
    let own = node_hash(own_node);
    let mut candidates: Vec<(u64, Eligible<'a>, &'a P)> = pods
        .into_iter()
        .filter_map(|pod| Some((pod, eligible(pod, nodes, filter)?)))
        .filter(|(_, (name, _, _))| *name != own_pod)
        .map(|(pod, e)| (node_hash(e.1), e, pod))
        .collect();
    // Ring order (distance, node name), then each node's pods by name: its first is its pick.
    candidates.sort_unstable_by(|(ha, a, _), (hb, b, _)| {
        (ha.wrapping_sub(own), a.1, a.0).cmp(&(hb.wrapping_sub(own), b.1, b.0))
    });
    candidates.dedup_by(|(_, later, _), (_, first, _)| later.1 == first.1);
    if limit > 0 {
        candidates.truncate(limit);
    }
    candidates.into_iter().map(|(hash, e, pod)| neighbour(pod, e, hash)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, PodSpec, PodStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

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
        let got = eligible_neighbours(&pods, None::<&HashMap<String, bool>>, "me", &filter);
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
