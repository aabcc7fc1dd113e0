//! The variables both tiers read to agree on who checks whom: one declaration each (name,
//! default, help), which the agent's variable table and the aggregator's flags both use, so
//! the chart can set both tiers from the same values.

use crate::selector::LabelSelector;

/// A variable both tiers read.
#[derive(Debug, Clone, Copy)]
pub struct SharedVar {
    /// The environment variable.
    pub name: &'static str,
    /// Its default (`None`: unset).
    pub default: Option<&'static str>,
    /// One line for `--help`.
    pub help: &'static str,
}

impl SharedVar {
    /// The default as a flag default (`""` when unset, which both tiers read as unset).
    pub const fn default_text(&self) -> &'static str {
        match self.default {
            Some(v) => v,
            None => "",
        }
    }
}

/// `KUBENURSE_NAMESPACE`.
pub const NAMESPACE: SharedVar = SharedVar {
    name: "KUBENURSE_NAMESPACE",
    default: None,
    help: "namespace of the neighbour pods (empty: all namespaces)",
};
/// `KUBENURSE_NEIGHBOUR_FILTER`.
pub const NEIGHBOUR_FILTER: SharedVar = SharedVar {
    name: "KUBENURSE_NEIGHBOUR_FILTER",
    default: Some(""),
    help: "label selector for neighbour pods (empty: all pods)",
};
/// `KUBENURSE_NEIGHBOUR_LIMIT`.
pub const NEIGHBOUR_LIMIT: SharedVar = SharedVar {
    name: "KUBENURSE_NEIGHBOUR_LIMIT",
    default: Some("10"),
    help: "neighbours checked per node (0: everyone)",
};
/// `KUBENURSE_ALLOW_UNSCHEDULABLE`.
pub const ALLOW_UNSCHEDULABLE: SharedVar = SharedVar {
    name: "KUBENURSE_ALLOW_UNSCHEDULABLE",
    default: Some("false"),
    help: "also check pods on unschedulable nodes (no node watch)",
};

/// `KUBENURSE_NEIGHBOUR_LIMIT`'s values.
pub fn parse_limit(v: &str) -> Result<usize, String> {
    v.parse::<usize>().map_err(|_| "expected a non-negative integer".into())
}

/// `KUBENURSE_NEIGHBOUR_FILTER`'s values.
pub fn parse_selector(v: &str) -> Result<LabelSelector, String> {
    LabelSelector::parse(v).map_err(|e| e.to_string())
}

/// Upstream's (Go `strconv.ParseBool`) booleans, as every `KUBENURSE_*` switch takes them.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}
