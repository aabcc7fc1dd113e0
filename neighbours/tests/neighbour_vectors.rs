//! The neighbour filter must pick exactly what an independent implementation of upstream's
//! algorithm picked (vectors copied from shared/testdata), so mixed fleets agree.

use std::collections::BTreeMap;

use kubenurse_neighbours::ring::{node_hash, select_neighbours, Neighbour};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    limit: usize,
    nodes: Vec<String>,
    node_hash: BTreeMap<String, u64>,
    selected: BTreeMap<String, Vec<String>>,
}

#[test]
fn reproduces_independent_vectors() {
    let raw = include_str!("data/neighbour-filter-vectors.json");
    let vectors: Vectors = serde_json::from_str(raw).expect("vector file parses");
    assert!(!vectors.cases.is_empty());
    let mut compared = 0;
    for case in &vectors.cases {
        for (node, hash) in &case.node_hash {
            assert_eq!(node_hash(node), *hash, "hash of {node}");
        }
        for own in &case.nodes {
            let others: Vec<Neighbour> = case
                .nodes
                .iter()
                .filter(|n| *n != own)
                .map(|n| Neighbour {
                    pod_name: format!("kubenurse-{n}"),
                    pod_ip: String::new(),
                    host_ip: String::new(),
                    node_name: n.clone(),
                    node_hash: node_hash(n),
                })
                .collect();
            let mut got: Vec<String> =
                select_neighbours(own, others, case.limit).into_iter().map(|n| n.node_name).collect();
            got.sort();
            let mut want = case.selected[own].clone();
            want.sort();
            assert_eq!(got, want, "limit {} own {own}", case.limit);
            compared += 1;
        }
    }
    assert_eq!(compared, vectors.cases.iter().map(|c| c.nodes.len()).sum::<usize>());
}
