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

/// The ring over every eligible node, built once so that each agent's selection is a walk
/// of `limit` steps instead of a sort of all nodes: the aggregator computes 5,000 agents'
/// targets with it. [`Ring::targets_of`] selects exactly what [`select_neighbours`] selects
/// over [`crate::neighbourhood::eligible_neighbours`] (a property test holds them together).
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// Nodes by (hash, name), each with its eligible pods sorted by pod name.
    nodes: Vec<(u64, String, Vec<Neighbour>)>,
}

impl Ring {
    /// A ring of `eligible` (node → its eligible pods, sorted by pod name).
    pub fn new(eligible: std::collections::BTreeMap<String, Vec<Neighbour>>) -> Self {
        let mut nodes: Vec<_> = eligible
            .into_iter()
            .filter(|(_, pods)| !pods.is_empty())
            .map(|(name, pods)| (node_hash(&name), name, pods))
            .collect();
        nodes.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Self { nodes }
    }

    /// Number of nodes with an eligible pod.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node has an eligible pod.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The neighbours of `own_pod` on `own_node`: walking clockwise from the node's hash, the
    /// first pod of each node that is not `own_pod`, `limit` of them (0: everyone).
    pub fn targets_of(&self, own_node: &str, own_pod: &str, limit: usize) -> Vec<Neighbour> {
        let own = node_hash(own_node);
        let start = self.nodes.partition_point(|(hash, _, _)| *hash < own);
        let want = if limit == 0 { self.nodes.len() } else { limit };
        let mut out = Vec::with_capacity(want.min(self.nodes.len()));
        for i in 0..self.nodes.len() {
            if out.len() == want {
                break;
            }
            let (_, _, pods) = &self.nodes[(start + i) % self.nodes.len()];
            if let Some(pod) = pods.iter().find(|p| p.pod_name != own_pod) {
                out.push(pod.clone());
            }
        }
        out
    }
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
