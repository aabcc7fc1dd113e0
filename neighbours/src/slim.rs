//! Pods and Nodes as discovery keeps them. A cloud Node is about 8 KiB of JSON (images,
//! conditions, managed fields) of which discovery needs a name, a zone and two spec fields.
//! Decoding the whole object and stripping it afterwards still allocated every field, and the
//! k8s-openapi types are 1.5 KiB (Node) and 2.1 KiB (Pod) before any field is set: at 5,000
//! Nodes and Pods that was most of an agent's memory. [`SlimNode`] and [`SlimPod`] decode
//! only the fields discovery reads, skip the rest unbuilt, and keep what they read in boxed
//! strings: no `ObjectMeta` (350 bytes with every field unset), so a cached Node is about
//! 100 bytes with its strings. The resource version comes out beside the object
//! ([`Versioned`]), for [`crate::listwatch`] to resume from; objects never keep it.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::neighbourhood::{node_is_unschedulable, unschedulable_by, PodFacts};
use crate::selector::LabelSelector;

/// The Node label that names a node's zone (well-known, set by cloud providers).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A kind discovery watches: decoded slim from the API server's JSON, cached by [`Watched::key`].
pub trait Watched: Clone + fmt::Debug + Send + Sync + Sized + 'static {
    /// The full k8s-openapi type, for the API paths (never decoded by the watches).
    type Full: kube::Resource<DynamicType = ()> + Clone;

    /// The object and its `metadata.resourceVersion`, from one object's JSON.
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Versioned<Self>, D::Error>;

    /// What the cache keys the object by: unique among the objects one watch sees.
    fn key(&self) -> String;
}

/// An object as the API server sent it, with its version (which the caches never keep).
#[derive(Debug, Clone)]
pub struct Versioned<K> {
    /// The object.
    pub object: K,
    /// Its `metadata.resourceVersion`.
    pub version: Option<String>,
}

impl<'de, K: Watched> Deserialize<'de> for Versioned<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        K::decode(d)
    }
}

/// A Node as discovery keeps it: its name, whether it takes checks, and its zone.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SlimNode {
    name: Box<str>,
    unschedulable: bool,
    zone: Option<Box<str>>,
}

impl SlimNode {
    /// The node's name (empty when the API server sent none).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Cordoned or tainted unschedulable ([`node_is_unschedulable`]'s rule).
    pub fn unschedulable(&self) -> bool {
        self.unschedulable
    }

    /// The [`ZONE_LABEL`] label.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }
}

/// An optional string as a cache keeps it (a `Box<str>` is 16 bytes, a `String` 24).
fn boxed(s: &Option<String>) -> Option<Box<str>> {
    s.as_deref().map(Box::from)
}

impl From<&Node> for SlimNode {
    fn from(node: &Node) -> Self {
        let m = &node.metadata;
        Self {
            name: m.name.as_deref().unwrap_or_default().into(),
            unschedulable: node_is_unschedulable(node),
            zone: m.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)).map(|z| z.as_str().into()),
        }
    }
}

impl Watched for SlimNode {
    type Full = Node;

    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Versioned<Self>, D::Error> {
        let NodeWire { metadata, spec } = NodeWire::deserialize(d)?;
        let MetaWire { name, resource_version, labels, .. } = metadata.unwrap_or_default();
        let unschedulable = spec.is_some_and(|NodeSpecWire { unschedulable, taints }| {
            unschedulable_by(unschedulable, taints.iter().flatten().map(|t| (t.key.as_str(), t.effect.as_str())))
        });
        let zone = labels.and_then(|ZoneOnly(zone)| zone).map(String::into_boxed_str);
        let name = name.unwrap_or_default().into_boxed_str();
        Ok(Versioned { object: Self { name, unschedulable, zone }, version: resource_version })
    }

    fn key(&self) -> String {
        self.name.to_string()
    }
}

/// A Pod as discovery keeps it: what [`crate::neighbourhood::eligible_by_node`] reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SlimPod {
    name: Box<str>,
    namespace: Option<Box<str>>,
    terminating: bool,
    node_name: Option<Box<str>>,
    phase: Option<Box<str>>,
    pod_ip: Option<Box<str>>,
    host_ip: Option<Box<str>>,
    /// Until [`SlimPod::judge_labels`] replaces them with the filter's verdict.
    labels: Option<BTreeMap<String, String>>,
    /// The filter's verdict, once judged.
    selected: Option<bool>,
}

impl SlimPod {
    /// The pod's name (empty when the API server sent none).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod's namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The pod's labels, until [`SlimPod::judge_labels`] has replaced them.
    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.labels.as_ref()
    }

    /// Replaces the labels with `filter`'s verdict on them: eligibility reads nothing else of
    /// them, and even one label is a 550-byte map node per pod. The caches judge each pod by
    /// the filter their stream was opened with ([`crate::listwatch::pod_events`]), the same
    /// one both tiers then give eligibility.
    pub fn judge_labels(&mut self, filter: &LabelSelector) {
        self.selected = Some(PodFacts::selected_by(self, filter));
        self.labels = None;
    }
}

impl From<&Pod> for SlimPod {
    fn from(pod: &Pod) -> Self {
        let m = &pod.metadata;
        let status = pod.status.as_ref();
        Self {
            name: m.name.as_deref().unwrap_or_default().into(),
            namespace: boxed(&m.namespace),
            terminating: m.deletion_timestamp.is_some(),
            node_name: pod.spec.as_ref().and_then(|s| boxed(&s.node_name)),
            phase: status.and_then(|s| boxed(&s.phase)),
            pod_ip: status.and_then(|s| boxed(&s.pod_ip)),
            host_ip: status.and_then(|s| boxed(&s.host_ip)),
            labels: m.labels.clone(),
            selected: None,
        }
    }
}

impl PodFacts for SlimPod {
    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }
    fn terminating(&self) -> bool {
        self.terminating
    }
    fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }
    fn phase(&self) -> Option<&str> {
        self.phase.as_deref()
    }
    fn pod_ip(&self) -> Option<&str> {
        self.pod_ip.as_deref()
    }
    fn host_ip(&self) -> Option<&str> {
        self.host_ip.as_deref()
    }
    fn selected_by(&self, filter: &LabelSelector) -> bool {
        match self.selected {
            Some(verdict) => verdict,
            None => filter.matches_labels_of(self.labels.as_ref()),
        }
    }
}

impl Watched for SlimPod {
    type Full = Pod;

    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Versioned<Self>, D::Error> {
        let PodWire { metadata, spec, status } = PodWire::deserialize(d)?;
        let MetaWire { name, namespace, resource_version, deletion_timestamp, labels } = metadata.unwrap_or_default();
        let PodStatusWire { phase, pod_ip, host_ip } = status.unwrap_or_default();
        let object = Self {
            name: name.unwrap_or_default().into_boxed_str(),
            namespace: namespace.map(String::into_boxed_str),
            terminating: deletion_timestamp.is_some(),
            node_name: spec.and_then(|PodSpecWire { node_name }| node_name).map(String::into_boxed_str),
            phase: phase.map(String::into_boxed_str),
            pod_ip: pod_ip.map(String::into_boxed_str),
            host_ip: host_ip.map(String::into_boxed_str),
            labels,
            selected: None,
        };
        Ok(Versioned { object, version: resource_version })
    }

    /// Namespace and name: a watch of all namespaces may see one name twice.
    fn key(&self) -> String {
        pod_key(self.namespace(), &self.name)
    }
}

/// The cache key of pod `name` in `namespace` ([`Watched::key`] of a [`SlimPod`]).
pub fn pod_key(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", namespace.unwrap_or_default())
}

impl<'de> Deserialize<'de> for SlimNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::decode(d).map(|v| v.object)
    }
}

impl<'de> Deserialize<'de> for SlimPod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::decode(d).map(|v| v.object)
    }
}

/// The metadata read of either kind; `L` decides which labels. (No uid: nothing reads it.)
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaWire<L> {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    deletion_timestamp: Option<Time>,
    labels: Option<L>,
}

impl<L> Default for MetaWire<L> {
    fn default() -> Self {
        Self { name: None, namespace: None, resource_version: None, deletion_timestamp: None, labels: None }
    }
}

/// A Node's labels reduced to its zone while decoding: the other labels are skipped unbuilt.
struct ZoneOnly(Option<String>);

/// A label key, compared with [`ZONE_LABEL`] without being allocated.
struct IsZoneLabel(bool);

impl<'de> Deserialize<'de> for IsZoneLabel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = IsZoneLabel;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a label key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<IsZoneLabel, E> {
                Ok(IsZoneLabel(key == ZONE_LABEL))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for ZoneOnly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LabelsVisitor;
        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = ZoneOnly;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of labels")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ZoneOnly, A::Error> {
                let mut zone = None;
                while let Some(IsZoneLabel(is_zone)) = map.next_key()? {
                    if is_zone {
                        zone = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(ZoneOnly(zone))
            }
        }
        d.deserialize_map(LabelsVisitor)
    }
}

#[derive(Deserialize)]
struct NodeWire {
    metadata: Option<MetaWire<ZoneOnly>>,
    spec: Option<NodeSpecWire>,
}

#[derive(Deserialize)]
struct NodeSpecWire {
    unschedulable: Option<bool>,
    taints: Option<Vec<TaintWire>>,
}

#[derive(Deserialize)]
struct TaintWire {
    key: String,
    effect: String,
}

#[derive(Deserialize)]
struct PodWire {
    metadata: Option<MetaWire<BTreeMap<String, String>>>,
    spec: Option<PodSpecWire>,
    status: Option<PodStatusWire>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpecWire {
    node_name: Option<String>,
}

#[derive(Deserialize, Default)]
struct PodStatusWire {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neighbourhood::UNSCHEDULABLE_TAINT;
    use serde_json::json;

    /// A node as a cloud provider's kubelet writes it (abridged: the real one has 40 images).
    fn cloud_node() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": "ip-10-0-1-7.eu-west-1.compute.internal", "uid": "u-1", "resourceVersion": "42",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"kubernetes.io/os": "linux", ZONE_LABEL: "eu-west-1b", "node-pool": "general-3"},
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
                "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:status": {"f:conditions": {}}}}]
            },
            "spec": {
                "providerID": "aws:///eu-west-1b/i-0abc", "podCIDR": "10.1.0.0/24",
                "unschedulable": true,
                "taints": [{"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule", "timeAdded": "2026-01-01T00:00:00Z"}]
            },
            "status": {
                "addresses": [{"type": "InternalIP", "address": "10.0.1.7"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "images": [{"names": ["registry.k8s.io/pause:3.9"], "sizeBytes": 321}],
                "nodeInfo": {"kubeletVersion": "v1.33.0"}
            }
        })
    }

    #[test]
    fn a_node_keeps_its_name_zone_and_schedulability_only() {
        let Versioned { object: node, version } = serde_json::from_value::<Versioned<SlimNode>>(cloud_node()).unwrap();
        assert_eq!(node.name(), "ip-10-0-1-7.eu-west-1.compute.internal");
        assert_eq!(version.as_deref(), Some("42"), "the version beside the object");
        assert_eq!(node.zone(), Some("eu-west-1b"));
        assert!(node.unschedulable());
        // Name, zone, a flag: nothing else is kept (the struct has no room for it).
        assert!(std::mem::size_of::<SlimNode>() <= 40, "{}", std::mem::size_of::<SlimNode>());
        // Only tainted, only cordoned, neither: the rule of `node_is_unschedulable`.
        let mut tainted = cloud_node();
        tainted["spec"]["unschedulable"] = json!(null);
        assert!(serde_json::from_value::<SlimNode>(tainted.clone()).unwrap().unschedulable());
        let mut cordoned = cloud_node();
        cordoned["spec"]["taints"] = json!([]);
        assert!(serde_json::from_value::<SlimNode>(cordoned).unwrap().unschedulable());
        tainted["spec"]["taints"][0]["effect"] = json!("PreferNoSchedule");
        assert!(!serde_json::from_value::<SlimNode>(tainted).unwrap().unschedulable());
        // Decoded slim = the full object made slim.
        let full: Node = serde_json::from_value(cloud_node()).unwrap();
        assert_eq!(SlimNode::from(&full), node);
    }

    #[test]
    fn a_node_without_labels_or_spec_decodes() {
        let node: SlimNode = serde_json::from_value(json!({"metadata": {"name": "n", "labels": null}})).unwrap();
        assert_eq!((node.name(), node.zone(), node.unschedulable()), ("n", None, false));
        let node: SlimNode = serde_json::from_value(json!({"metadata": {"name": "n", "labels": {"a": "b"}}})).unwrap();
        assert_eq!(node.zone(), None);
    }

    #[test]
    fn a_pod_keeps_what_eligibility_reads() {
        let wire = json!({
            "metadata": {"name": "kubenurse-x", "namespace": "kube-system", "uid": "p-1", "resourceVersion": "7",
                         "labels": {"app": "kubenurse"}, "deletionTimestamp": "2026-01-01T00:00:00Z",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kubenurse", "uid": "d"}]},
            "spec": {"nodeName": "n-1", "containers": [{"name": "kubenurse", "image": "kubenurse:1"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.9", "hostIP": "192.0.2.1",
                       "containerStatuses": [{"name": "kubenurse", "ready": true}]}
        });
        let Versioned { object: pod, version } = serde_json::from_value::<Versioned<SlimPod>>(wire.clone()).unwrap();
        assert_eq!((pod.name(), pod.namespace(), version.as_deref()), ("kubenurse-x", Some("kube-system"), Some("7")));
        assert_eq!(pod.key(), "kube-system/kubenurse-x");
        assert_eq!(pod.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str), Some("kubenurse"));
        assert!(pod.terminating());
        assert_eq!(
            (pod.node_name(), pod.phase(), pod.pod_ip(), pod.host_ip()),
            (Some("n-1"), Some("Running"), Some("10.0.0.9"), Some("192.0.2.1"))
        );
        let full: Pod = serde_json::from_value(wire).unwrap();
        assert_eq!(SlimPod::from(&full), pod);
    }

    #[test]
    fn a_pod_keeps_its_filters_verdict_not_its_labels() {
        let wire =
            json!({"metadata": {"name": "p", "labels": {"app": "kubenurse", "tier": "x", "pod-template-hash": "abc"}}});
        for (filter, verdict) in [("app=kubenurse,!legacy,tier in (x,y)", true), ("app=other", false), ("", true)] {
            let filter = LabelSelector::parse(filter).unwrap();
            let mut pod: SlimPod = serde_json::from_value(wire.clone()).unwrap();
            assert_eq!(pod.selected_by(&filter), verdict, "{filter}: by the labels");
            pod.judge_labels(&filter);
            assert!(pod.labels.is_none(), "{filter}: labels dropped");
            assert_eq!(pod.selected_by(&filter), verdict, "{filter}: by the verdict");
        }
    }

    #[test]
    fn a_malformed_object_is_an_error_not_a_default() {
        assert!(serde_json::from_value::<SlimNode>(json!({"metadata": {"name": 7}})).is_err());
        assert!(serde_json::from_value::<SlimNode>(json!({"metadata": {"labels": []}})).is_err());
        assert!(serde_json::from_value::<SlimNode>(json!({"spec": {"taints": [{"key": "k"}]}})).is_err());
        assert!(serde_json::from_value::<SlimPod>(json!({"status": {"podIP": ["x"]}})).is_err());
    }
}
