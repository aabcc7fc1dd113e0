//! Upstream kubenurse's neighbour filter: a sha256 hash ring over node names, so every node
//! checks the same `limit` successors and mixed Go/Rust fleets agree on who checks whom.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// A neighbour pod as `/alive` shows it (upstream's JSON field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Neighbour {
    /// The neighbour kubenurse pod.
    #[serde(rename = "PodName")]
    pub pod_name: String,
    /// Where path checks go.
    #[serde(rename = "PodIP")]
    pub pod_ip: String,
    /// The node's own address, shown for operators.
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    /// The node the pod runs on; the check is named `path_<NodeName>`.
    #[serde(rename = "NodeName")]
    pub node_name: String,
    /// Position on the ring, shown so operators can reproduce the selection.
    #[serde(rename = "NodeHash")]
    pub node_hash: u64,
}

/// Ring position of a node: the first 8 bytes of sha256(name), big-endian.
pub fn node_hash(node_name: &str) -> u64 {
    let digest = Sha256::digest(node_name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Keeps the `limit` neighbours closest clockwise to `own_node` on the ring.
///
/// `limit == 0` or `neighbours.len() <= limit` keeps everyone, as upstream does.
/// The result is ordered by ring distance, nearest first.
pub fn select_neighbours(own_node: &str, mut neighbours: Vec<Neighbour>, limit: usize) -> Vec<Neighbour> {
    let own = node_hash(own_node);
    neighbours.sort_by_key(|n| (n.node_hash.wrapping_sub(own), n.node_name.clone()));
    if limit > 0 && neighbours.len() > limit {
        neighbours.truncate(limit);
    }
    neighbours
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn neighbour(node: &str) -> Neighbour {
        Neighbour {
            pod_name: format!("kubenurse-{node}"),
            pod_ip: "10.0.0.1".into(),
            host_ip: "10.1.0.1".into(),
            node_name: node.into(),
            node_hash: node_hash(node),
        }
    }

    #[test]
    fn every_node_sends_and_receives_exactly_limit() {
        let nodes: Vec<String> = (0..1000).map(|i| format!("node-{i:04}.cluster.local")).collect();
        let limit = 10;
        let mut received: HashMap<&str, usize> = HashMap::new();
        for own in &nodes {
            let others = nodes.iter().filter(|n| *n != own).map(|n| neighbour(n)).collect();
            let selected = select_neighbours(own, others, limit);
            assert_eq!(selected.len(), limit, "{own} sends to {}", selected.len());
            for s in &selected {
                let key = nodes.iter().find(|n| **n == s.node_name).map(String::as_str);
                *received.entry(key.unwrap_or_default()).or_default() += 1;
            }
        }
        assert_eq!(received.len(), nodes.len());
        assert!(received.values().all(|&count| count == limit), "{received:?}");
    }

    #[test]
    fn small_or_unlimited_keeps_everyone() {
        let others = vec![neighbour("a"), neighbour("b")];
        assert_eq!(select_neighbours("c", others.clone(), 10).len(), 2);
        assert_eq!(select_neighbours("c", others, 0).len(), 2);
    }
}
