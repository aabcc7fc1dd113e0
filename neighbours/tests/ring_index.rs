//! The aggregator's ring index and an agent's per-round selection must select exactly what
//! the plain rule selects, for any cluster: several pods on a node, the own pod among them or
//! not, any limit.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubenurse_neighbours::neighbourhood::{eligible_by_node, eligible_neighbours, nearest_neighbours};
use kubenurse_neighbours::ring::{select_neighbours, Ring};
use kubenurse_neighbours::selector::LabelSelector;
use proptest::prelude::*;

fn pod(name: String, node: String, running: bool) -> Pod {
    Pod {
        metadata: ObjectMeta { name: Some(name), ..ObjectMeta::default() },
        spec: Some(PodSpec { node_name: Some(node), ..PodSpec::default() }),
        status: Some(PodStatus {
            phase: Some(if running { "Running" } else { "Pending" }.into()),
            pod_ip: Some("10.0.0.1".into()),
            ..PodStatus::default()
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn ring_index_selects_what_the_agent_selects(
        placements in prop::collection::vec((0u8..40, 0u8..30, any::<bool>()), 0..60),
        schedulable in prop::collection::vec(any::<bool>(), 30),
        limit in 0usize..12,
        use_nodes in any::<bool>(),
    ) {
        let pods: Vec<Pod> = placements
            .iter()
            .map(|(p, n, running)| pod(format!("kubenurse-{p}"), format!("node-{n}"), *running))
            .collect();
        let nodes: HashMap<String, bool> =
            schedulable.iter().enumerate().map(|(i, ok)| (format!("node-{i}"), *ok)).collect();
        let nodes = use_nodes.then_some(&nodes);
        let filter = LabelSelector::default();
        let ring = Ring::new(eligible_by_node(&pods, nodes, &filter));
        for own in &pods {
            let own_pod = own.metadata.name.as_deref().unwrap_or_default();
            let own_node = own.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default();
            let expected = select_neighbours(own_node, eligible_neighbours(&pods, nodes, own_pod, &filter), limit);
            prop_assert_eq!(ring.targets_of(own_node, own_pod, limit), expected.clone(), "{} on {}", own_pod, own_node);
            // The agent's local discovery, which builds only the neighbours it keeps.
            let nearest = nearest_neighbours(own_node, &pods, nodes, own_pod, &filter, limit);
            prop_assert_eq!(nearest, expected, "nearest: {} on {}", own_pod, own_node);
        }
    }
}
