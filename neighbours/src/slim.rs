//! Pods and Nodes decoded as discovery reads them. A cloud Node is about 8 KiB of JSON
//! (images, conditions, managed fields) of which discovery needs a name, a zone and two spec
//! fields. Decoding the whole object and stripping it afterwards still allocated every field,
//! and at 5,000 Nodes (a LIST, then kubelets' status updates) those allocations were most of
//! an agent's memory. [`Slim`] decodes only the fields discovery uses, skips the rest unbuilt,
//! and derefs to the k8s-openapi type, so the rules in [`crate::neighbourhood`] take it as is.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;

use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod, PodSpec, PodStatus, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// The Node label that names a node's zone (well-known, set by cloud providers).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A Pod or Node holding only what discovery uses: for Pods the name, namespace, labels,
/// deletion time, node, phase and IPs; for Nodes the name, the zone label, `unschedulable`
/// and the taints. Identity (uid, resourceVersion) is kept for the watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Slim<K>(K);

impl<K> Slim<K> {
    /// Wraps an object built in code (tests, fixtures); objects off the wire are decoded slim.
    pub fn from_full(object: K) -> Self {
        Self(object)
    }
}

impl<K> Deref for Slim<K> {
    type Target = K;

    fn deref(&self) -> &K {
        &self.0
    }
}

impl<K: Resource> Resource for Slim<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.meta()
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.meta_mut()
    }
}

/// The metadata kept of either kind; `L` decides which labels.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaWire<L> {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    deletion_timestamp: Option<Time>,
    labels: Option<L>,
}

impl<L> MetaWire<L> {
    fn into_meta(self, labels: impl FnOnce(L) -> BTreeMap<String, String>) -> ObjectMeta {
        let Self { name, namespace, uid, resource_version, deletion_timestamp, labels: wire_labels } = self;
        ObjectMeta {
            name,
            namespace,
            uid,
            resource_version,
            deletion_timestamp,
            labels: wire_labels.map(labels),
            ..ObjectMeta::default()
        }
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

impl<'de> Deserialize<'de> for Slim<Node> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let NodeWire { metadata, spec } = NodeWire::deserialize(d)?;
        let metadata = metadata.map_or_else(ObjectMeta::default, |m| {
            m.into_meta(|ZoneOnly(zone)| zone.map(|z| (ZONE_LABEL.to_string(), z)).into_iter().collect())
        });
        let spec = spec.map(|NodeSpecWire { unschedulable, taints }| NodeSpec {
            unschedulable,
            taints: taints.map(|ts| {
                ts.into_iter().map(|TaintWire { key, effect }| Taint { key, effect, ..Taint::default() }).collect()
            }),
            ..NodeSpec::default()
        });
        Ok(Self(Node { metadata, spec, status: None }))
    }
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

#[derive(Deserialize)]
struct PodStatusWire {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
}

impl<'de> Deserialize<'de> for Slim<Pod> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let PodWire { metadata, spec, status } = PodWire::deserialize(d)?;
        Ok(Self(Pod {
            metadata: metadata.map_or_else(ObjectMeta::default, |m| m.into_meta(|labels| labels)),
            spec: spec.map(|PodSpecWire { node_name }| PodSpec { node_name, ..PodSpec::default() }),
            status: status.map(|PodStatusWire { phase, pod_ip, host_ip }| PodStatus {
                phase,
                pod_ip,
                host_ip,
                ..PodStatus::default()
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neighbourhood::{node_is_unschedulable, UNSCHEDULABLE_TAINT};
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
        let node: Slim<Node> = serde_json::from_value(cloud_node()).unwrap();
        assert_eq!(node.metadata.name.as_deref(), Some("ip-10-0-1-7.eu-west-1.compute.internal"));
        assert_eq!(
            (node.metadata.uid.as_deref(), node.metadata.resource_version.as_deref()),
            (Some("u-1"), Some("42"))
        );
        let labels: Vec<_> = node.metadata.labels.iter().flatten().collect();
        assert_eq!(labels, [(&ZONE_LABEL.to_string(), &"eu-west-1b".to_string())]);
        assert!(node.metadata.annotations.is_none() && node.metadata.managed_fields.is_none());
        assert!(node.status.is_none());
        let spec = node.spec.as_ref().unwrap();
        assert!(spec.provider_id.is_none() && spec.pod_cidr.is_none());
        assert_eq!(spec.taints.as_ref().map(Vec::len), Some(1));
        assert!(node_is_unschedulable(&node));
        // The same node, only tainted: still unschedulable through the kept taint.
        let mut tainted = cloud_node();
        tainted["spec"]["unschedulable"] = json!(null);
        assert!(node_is_unschedulable(&serde_json::from_value::<Slim<Node>>(tainted).unwrap()));
    }

    #[test]
    fn a_node_without_labels_or_spec_decodes() {
        let node: Slim<Node> = serde_json::from_value(json!({"metadata": {"name": "n", "labels": null}})).unwrap();
        assert_eq!(node.metadata.labels, None);
        assert!(!node_is_unschedulable(&node));
        let node: Slim<Node> =
            serde_json::from_value(json!({"metadata": {"name": "n", "labels": {"a": "b"}}})).unwrap();
        assert_eq!(node.metadata.labels, Some(BTreeMap::new()));
    }

    #[test]
    fn a_pod_keeps_what_eligibility_reads() {
        let pod: Slim<Pod> = serde_json::from_value(json!({
            "metadata": {"name": "kubenurse-x", "namespace": "kube-system", "uid": "p-1", "resourceVersion": "7",
                         "labels": {"app": "kubenurse"}, "deletionTimestamp": "2026-01-01T00:00:00Z",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kubenurse", "uid": "d"}]},
            "spec": {"nodeName": "n-1", "containers": [{"name": "kubenurse", "image": "kubenurse:1"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.9", "hostIP": "192.0.2.1",
                       "containerStatuses": [{"name": "kubenurse", "ready": true}]}
        }))
        .unwrap();
        let meta = &pod.metadata;
        assert_eq!((meta.name.as_deref(), meta.namespace.as_deref()), (Some("kubenurse-x"), Some("kube-system")));
        assert_eq!(meta.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str), Some("kubenurse"));
        assert!(meta.deletion_timestamp.is_some() && meta.owner_references.is_none());
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!((spec.node_name.as_deref(), spec.containers.len()), (Some("n-1"), 0));
        let status = pod.status.as_ref().unwrap();
        assert_eq!(
            (status.phase.as_deref(), status.pod_ip.as_deref(), status.host_ip.as_deref()),
            (Some("Running"), Some("10.0.0.9"), Some("192.0.2.1"))
        );
        assert!(status.container_statuses.is_none());
    }

    #[test]
    fn a_malformed_object_is_an_error_not_a_default() {
        assert!(serde_json::from_value::<Slim<Node>>(json!({"metadata": {"name": 7}})).is_err());
        assert!(serde_json::from_value::<Slim<Node>>(json!({"metadata": {"labels": []}})).is_err());
        assert!(serde_json::from_value::<Slim<Pod>>(json!({"status": {"podIP": ["x"]}})).is_err());
    }
}
