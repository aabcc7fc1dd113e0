//! A big cluster for the fake API server: Nodes that look like a cloud provider's (labels,
//! conditions, addresses, images, capacity, provider ID), one agent Pod each, and kubelet-like
//! churn: every Node's status rewritten in turn, as kubelets report it every few minutes.
//! Watchers of Nodes get what they would get from a real cluster of that size.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerImage, Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use crate::apiserver::{kubenurse_pod, FakeApiServer};
use crate::sim::NAMESPACE;

/// Images a cloud node typically lists in its status (system pods, CNI, a few workloads).
const IMAGES: usize = 40;

/// Name of node `i` of a big cluster.
pub fn node_name(i: usize) -> String {
    format!("ip-10-{}-{}-{}.eu-west-1.compute.internal", i / 65536 % 256, i / 256 % 256, i % 256)
}

/// The agent pod of node `i`.
pub fn pod_name(i: usize) -> String {
    format!("kubenurse-{i:05x}")
}

/// Pod IP of node `i`: a loopback address in 127.200.0.0/13 where nothing listens, so path
/// checks of a big simulated cluster fail at once and never leave the machine.
pub fn pod_ip(i: usize) -> String {
    format!("127.{}.{}.{}", 200 + i / 65536 % 8, i / 256 % 256, i % 256)
}

fn zone_of(i: usize) -> String {
    format!("eu-west-1{}", ['a', 'b', 'c'][i % 3])
}

fn conditions(heartbeat: Timestamp) -> Vec<NodeCondition> {
    let ok = |kind: &str, reason: &str, message: &str, status: &str| NodeCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(heartbeat)),
        last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
    };
    vec![
        ok("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available", "False"),
        ok("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", "False"),
        ok("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available", "False"),
        ok("Ready", "KubeletReady", "kubelet is posting ready status", "True"),
    ]
}

/// Node `i` as a cloud provider's would look, its status heartbeat at `heartbeat`.
pub fn realistic_node(i: usize, heartbeat: Timestamp) -> Node {
    let name = node_name(i);
    let zone = zone_of(i);
    let labels = BTreeMap::from([
        ("beta.kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("beta.kubernetes.io/instance-type".to_string(), "m6i.2xlarge".to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("failure-domain.beta.kubernetes.io/region".to_string(), "eu-west-1".to_string()),
        ("failure-domain.beta.kubernetes.io/zone".to_string(), zone.clone()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("kubernetes.io/hostname".to_string(), name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("node.kubernetes.io/instance-type".to_string(), "m6i.2xlarge".to_string()),
        ("node-pool".to_string(), format!("general-{}", i % 8)),
        ("topology.kubernetes.io/region".to_string(), "eu-west-1".to_string()),
        ("topology.kubernetes.io/zone".to_string(), zone.clone()),
    ]);
    let annotations = BTreeMap::from([
        ("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string()),
        ("volumes.kubernetes.io/controller-managed-attach-detach".to_string(), "true".to_string()),
        ("csi.volume.kubernetes.io/nodeid".to_string(), format!("{{\"ebs.csi.aws.com\":\"i-0{i:016x}\"}}")),
    ]);
    let quantity = |v: &str| Quantity(v.into());
    let resources = BTreeMap::from([
        ("cpu".to_string(), quantity("8")),
        ("ephemeral-storage".to_string(), quantity("104845292Ki")),
        ("hugepages-1Gi".to_string(), quantity("0")),
        ("hugepages-2Mi".to_string(), quantity("0")),
        ("memory".to_string(), quantity("32386544Ki")),
        ("pods".to_string(), quantity("58")),
    ]);
    let images = (0..IMAGES)
        .map(|k| ContainerImage {
            names: Some(vec![
                format!(
                    "registry.example.com/team-{}/service-{k}@sha256:{:064x}",
                    k % 7,
                    (i as u128) << 64 | k as u128
                ),
                format!("registry.example.com/team-{}/service-{k}:v1.{k}.{}", k % 7, i % 10),
            ]),
            size_bytes: Some(10_000_000 + (k as i64) * 1_234_567),
        })
        .collect();
    let ip = format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256);
    Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            uid: Some(format!("uid-node-{i:08x}")),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            provider_id: Some(format!("aws:///{zone}/i-0{i:016x}")),
            pod_cidr: Some(format!("100.{}.{}.0/24", 64 + i / 256 % 64, i % 256)),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress { type_: "InternalIP".into(), address: ip.clone() },
                NodeAddress { type_: "Hostname".into(), address: name.clone() },
                NodeAddress { type_: "InternalDNS".into(), address: name },
            ]),
            allocatable: Some(resources.clone()),
            capacity: Some(resources),
            conditions: Some(conditions(heartbeat)),
            images: Some(images),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                boot_id: format!("{i:08x}-boot"),
                container_runtime_version: "containerd://1.7.27".into(),
                kernel_version: "6.1.134-152.225.amzn2023.x86_64".into(),
                kube_proxy_version: String::new(),
                kubelet_version: "v1.33.0".into(),
                machine_id: format!("ec2{i:029x}"),
                operating_system: "linux".into(),
                os_image: "Amazon Linux 2023.7.20250512".into(),
                system_uuid: format!("ec2{i:05x}-0000-0000-0000-000000000000"),
                swap: None,
            }),
            ..NodeStatus::default()
        }),
    }
}

/// Creates `nodes` realistic Nodes and one agent Pod on each (in the kit's namespace), pod `i`
/// at `ip(i)` ([`pod_ip`] where nothing listens, or a real agent's address).
pub fn populate(api: &FakeApiServer, nodes: usize, ip: impl Fn(usize) -> String) {
    let now = Timestamp::now();
    for i in 0..nodes {
        api.apply_node(realistic_node(i, now));
        api.apply_pod(kubenurse_pod(NAMESPACE, &pod_name(i), &node_name(i), &ip(i)));
    }
}

/// Rewrites the status of node after node (0, 1, …, wrapping) at `per_second`, for at most
/// `duration`; returns how many updates were made. Every Node is updated every
/// `nodes / per_second` seconds, as kubelets do every few minutes in a big cluster.
pub async fn churn(api: &FakeApiServer, nodes: usize, per_second: u32, duration: Duration) -> u64 {
    if nodes == 0 || per_second == 0 {
        return 0;
    }
    let every = Duration::from_secs(1) / per_second;
    let mut ticker = tokio::time::interval(every);
    let start = tokio::time::Instant::now();
    let mut updates = 0u64;
    while start.elapsed() < duration {
        ticker.tick().await;
        api.apply_node(realistic_node(updates as usize % nodes, Timestamp::now()));
        updates += 1;
    }
    updates
}
