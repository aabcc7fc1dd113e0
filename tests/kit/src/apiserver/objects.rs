//! Kubernetes objects as a cluster would hold them, and label selector matching.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// A Running kubenurse pod on `node` with `ip`, labelled `app.kubernetes.io/name=kubenurse`.
pub fn kubenurse_pod(namespace: &str, name: &str, node: &str, ip: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/name".to_string(), "kubenurse".to_string())])),
            uid: Some(format!("uid-{namespace}-{name}")),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec { node_name: Some(node.into()), ..PodSpec::default() }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            host_ip: Some(ip.into()),
            ..PodStatus::default()
        }),
    }
}

/// A schedulable node in `zone`.
pub fn node(name: &str, zone: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.to_string()),
                ("topology.kubernetes.io/zone".to_string(), zone.to_string()),
            ])),
            uid: Some(format!("uid-node-{name}")),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec::default()),
        status: None,
    }
}

/// Equality-based selectors (`a=b,c!=d,e,!f`), written independently of the agent's parser.
pub(super) fn selector_matches(selector: &str, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ok = if let Some((k, v)) = part.split_once("!=") {
            labels.get(k.trim()).map(String::as_str) != Some(v.trim())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            labels.get(k.trim()).map(String::as_str) == Some(v.trim())
        } else if let Some(k) = part.strip_prefix('!') {
            !labels.contains_key(k.trim())
        } else if part.contains(' ') || part.contains('(') {
            return Err(format!("unsupported selector {part:?} in the fake API server"));
        } else {
            labels.contains_key(part)
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_subset() {
        let labels = BTreeMap::from([("app".to_string(), "kubenurse".to_string())]);
        assert_eq!(selector_matches("app=kubenurse", &labels), Ok(true));
        assert_eq!(selector_matches("app==kubenurse,!x", &labels), Ok(true));
        assert_eq!(selector_matches("app!=kubenurse", &labels), Ok(false));
        assert_eq!(selector_matches("tier", &labels), Ok(false));
        assert!(selector_matches("app in (a)", &labels).is_err());
    }
}
