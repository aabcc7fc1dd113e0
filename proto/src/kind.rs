//! The check kind, the one definition both tiers share: the agent plans, labels and removes
//! series by it, the stream carries it typed, the aggregator validates and files results by it.

use std::borrow::Cow;
use std::fmt;

use crate::v1;

/// What a check checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckKind {
    /// `GET https://$KUBERNETES_SERVICE_HOST:$PORT/version`.
    ApiServerDirect,
    /// `GET https://$KUBERNETES_SERVICE_DNS:$PORT/version`.
    ApiServerDns,
    /// The own pod through the ingress.
    MeIngress,
    /// The own pod through its Service.
    MeService,
    /// A neighbour pod on `node`.
    Path {
        /// The node checked.
        node: String,
    },
    /// One of `KUBENURSE_EXTRA_CHECKS`.
    Extra {
        /// Its name (the metric `type` label).
        name: String,
    },
}

/// Why a check kind could not be built from a name or a wire message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    /// A path check's node is not a Kubernetes node name.
    #[error("{0:?} is not a Kubernetes node name")]
    BadNode(String),
    /// An extra check's name breaks the `[A-Za-z0-9_-]+` rule (at most 253 characters).
    #[error("check name {0:?} must be [A-Za-z0-9_-]+ (at most 253 characters)")]
    BadName(String),
    /// An extra check's name collides with a built-in check or the path prefix.
    #[error("check name {0:?} is reserved")]
    Reserved(String),
    /// The wire message names no kind, or a kind this build does not know.
    #[error("unknown check kind {0}")]
    UnknownKind(i32),
    /// A legacy `check_type` of a path check disagrees with its `target_node`.
    #[error("check type {check_type:?} does not match target node {target_node:?}")]
    Mismatch {
        /// The `check_type` sent.
        check_type: String,
        /// The `target_node` sent.
        target_node: String,
    },
}

/// A Kubernetes node name: a DNS subdomain (lowercase alphanumerics, '-', '.'), ≤ 253 chars.
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl CheckKind {
    /// Label prefix of path checks (`path_<node>`), upstream's spelling.
    pub const PATH_PREFIX: &'static str = "path_";

    /// The built-in checks other than paths, in `/alive` order.
    pub const BUILT_IN: [CheckKind; 4] =
        [CheckKind::ApiServerDirect, CheckKind::ApiServerDns, CheckKind::MeIngress, CheckKind::MeService];

    /// Whether `label` (an `/alive` key, a `type` label value) is a path check's: `path_` and a
    /// node name. `path_<node>_udp`, the neighbour's UDP result beside it in `/alive`, is not.
    pub fn is_path_label(label: &str) -> bool {
        label.strip_prefix(Self::PATH_PREFIX).is_some_and(is_node_name)
    }

    /// A path check of `node`, validated.
    pub fn path(node: &str) -> Result<Self, KindError> {
        if is_node_name(node) {
            Ok(CheckKind::Path { node: node.to_string() })
        } else {
            Err(KindError::BadNode(node.to_string()))
        }
    }

    /// An extra check named `name`, validated: no clash with a built-in label or path labels.
    pub fn extra(name: &str) -> Result<Self, KindError> {
        if name.is_empty()
            || name.len() > 253
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(KindError::BadName(name.to_string()));
        }
        if name.starts_with(Self::PATH_PREFIX) || Self::BUILT_IN.iter().any(|k| k.label() == name) {
            return Err(KindError::Reserved(name.to_string()));
        }
        Ok(CheckKind::Extra { name: name.to_string() })
    }

    /// The metric `type` label and `/alive` key: `api_server_direct`, `path_<node>`, ….
    pub fn label(&self) -> Cow<'_, str> {
        match self {
            CheckKind::ApiServerDirect => Cow::Borrowed("api_server_direct"),
            CheckKind::ApiServerDns => Cow::Borrowed("api_server_dns"),
            CheckKind::MeIngress => Cow::Borrowed("me_ingress"),
            CheckKind::MeService => Cow::Borrowed("me_service"),
            CheckKind::Path { node } => Cow::Owned(format!("{}{node}", Self::PATH_PREFIX)),
            CheckKind::Extra { name } => Cow::Borrowed(name),
        }
    }

    /// The node a path check targets.
    pub fn target_node(&self) -> Option<&str> {
        match self {
            CheckKind::Path { node } => Some(node),
            _ => None,
        }
    }

    /// The typed wire form (revision 2).
    pub fn to_wire(&self) -> v1::Check {
        use v1::check::Kind;
        let (kind, name) = match self {
            CheckKind::ApiServerDirect => (Kind::ApiServerDirect, ""),
            CheckKind::ApiServerDns => (Kind::ApiServerDns, ""),
            CheckKind::MeIngress => (Kind::MeIngress, ""),
            CheckKind::MeService => (Kind::MeService, ""),
            CheckKind::Path { node } => (Kind::Path, node.as_str()),
            CheckKind::Extra { name } => (Kind::Extra, name.as_str()),
        };
        v1::Check { kind: kind.into(), name: name.to_string() }
    }

    /// Reads the typed wire form, validating names.
    pub fn from_wire(check: &v1::Check) -> Result<Self, KindError> {
        use v1::check::Kind;
        match Kind::try_from(check.kind) {
            Ok(Kind::ApiServerDirect) => Ok(CheckKind::ApiServerDirect),
            Ok(Kind::ApiServerDns) => Ok(CheckKind::ApiServerDns),
            Ok(Kind::MeIngress) => Ok(CheckKind::MeIngress),
            Ok(Kind::MeService) => Ok(CheckKind::MeService),
            Ok(Kind::Path) => Self::path(&check.name),
            Ok(Kind::Extra) => Self::extra(&check.name),
            Ok(Kind::Unspecified) | Err(_) => Err(KindError::UnknownKind(check.kind)),
        }
    }

    /// Reads revision 1's `check_type` / `target_node` pair.
    pub fn from_legacy(check_type: &str, target_node: &str) -> Result<Self, KindError> {
        if let Some(node) = check_type.strip_prefix(Self::PATH_PREFIX) {
            if node != target_node {
                return Err(KindError::Mismatch {
                    check_type: check_type.to_string(),
                    target_node: target_node.to_string(),
                });
            }
            return Self::path(node);
        }
        match Self::BUILT_IN.iter().find(|k| k.label() == check_type) {
            Some(k) => Ok(k.clone()),
            None => Self::extra(check_type),
        }
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_upstreams() {
        assert_eq!(CheckKind::ApiServerDirect.label(), "api_server_direct");
        assert_eq!(CheckKind::ApiServerDns.label(), "api_server_dns");
        assert_eq!(CheckKind::MeIngress.label(), "me_ingress");
        assert_eq!(CheckKind::MeService.label(), "me_service");
        assert_eq!(CheckKind::path("node-1").unwrap().label(), "path_node-1");
        assert_eq!(CheckKind::extra("google").unwrap().label(), "google");
    }

    #[test]
    fn wire_and_legacy_round_trip() {
        let kinds = [
            CheckKind::ApiServerDirect,
            CheckKind::ApiServerDns,
            CheckKind::MeIngress,
            CheckKind::MeService,
            CheckKind::path("ip-10-0-0-1.eu-west-1.compute.internal").unwrap(),
            CheckKind::extra("my-check_2").unwrap(),
        ];
        for k in kinds {
            assert_eq!(CheckKind::from_wire(&k.to_wire()), Ok(k.clone()));
            assert_eq!(CheckKind::from_legacy(&k.label(), k.target_node().unwrap_or_default()), Ok(k.clone()));
        }
    }

    #[test]
    fn path_labels_are_path_and_a_node_name() {
        assert!(CheckKind::is_path_label("path_node-01"));
        assert!(CheckKind::is_path_label(&CheckKind::path("a.b").unwrap().label()));
        for not in ["path_node-01_udp", "path_", "api_server_direct", "node-01", "xpath_node-01"] {
            assert!(!CheckKind::is_path_label(not), "{not}");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(matches!(CheckKind::path("Node_1"), Err(KindError::BadNode(_))));
        assert!(matches!(CheckKind::extra("a b"), Err(KindError::BadName(_))));
        assert!(matches!(CheckKind::extra(""), Err(KindError::BadName(_))));
        assert!(matches!(CheckKind::extra("me_ingress"), Err(KindError::Reserved(_))));
        assert!(matches!(CheckKind::extra("path_x"), Err(KindError::Reserved(_))));
        assert!(matches!(CheckKind::from_legacy("path_a", "b"), Err(KindError::Mismatch { .. })));
        assert_eq!(CheckKind::from_wire(&v1::Check { kind: 0, name: String::new() }), Err(KindError::UnknownKind(0)));
        assert_eq!(CheckKind::from_wire(&v1::Check { kind: 99, name: String::new() }), Err(KindError::UnknownKind(99)));
        assert!(!is_node_name(&"a".repeat(254)) && is_node_name("a.b-c"));
    }
}
