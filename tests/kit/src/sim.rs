//! Simulated nodes: their names, addresses and zones, the environment their agents get (the
//! same variables a pod has), and the neighbours upstream's ring gives each.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use sha2::{Digest, Sha256};

use crate::apiserver::FakeApiServer;

/// Formats `host:port` for a URL, bracketing IPv6 literals.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Namespace the simulated kubenurse pods live in.
pub const NAMESPACE: &str = "kubenurse";
/// Service account the simulated agents run as.
pub const SERVICE_ACCOUNT: &str = "kubenurse";
/// Zones the simulated nodes are spread over.
pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

/// One simulated node's identity.
#[derive(Debug, Clone)]
pub struct SimNode {
    /// Node name (`node-01`, …).
    pub node: String,
    /// Its kubenurse pod.
    pub pod: String,
    /// Its pod address (what neighbours check; a fault proxy's when the cluster is proxied).
    pub ip: IpAddr,
    /// Where its agent listens (= `ip`, or a second address behind the proxy).
    pub bind: IpAddr,
    /// Its zone.
    pub zone: String,
}

impl SimNode {
    /// Node number `i` (1-based) on subnet `127.0.subnet.0/24`.
    pub fn new(subnet: u8, i: u8) -> Self {
        Self {
            node: format!("node-{i:02}"),
            pod: format!("kubenurse-{i:02}"),
            ip: IpAddr::V4(Ipv4Addr::new(127, 0, subnet, i)),
            bind: IpAddr::V4(Ipv4Addr::new(127, 0, subnet, i)),
            zone: ZONES[usize::from(i) % ZONES.len()].to_string(),
        }
    }
}

/// Ring position of a node as upstream kubenurse computes it: the first 8 bytes of
/// sha256(name), big-endian. Written here independently of the agent, as the reference its
/// neighbour selection is checked against.
pub fn ring_hash(node: &str) -> u64 {
    let digest = Sha256::digest(node.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The nodes the neighbour filter makes `own` check, among `present` (the expected targets):
/// the `limit` nearest clockwise successors on the ring (everyone when `limit` is 0 or not
/// exceeded), nearest first.
pub fn ring_targets<'a>(own: &SimNode, present: impl IntoIterator<Item = &'a SimNode>, limit: usize) -> Vec<String> {
    let me = ring_hash(&own.node);
    let mut others: Vec<(u64, String)> = present
        .into_iter()
        .filter(|n| n.node != own.node)
        .map(|n| (ring_hash(&n.node).wrapping_sub(me), n.node.clone()))
        .collect();
    others.sort();
    if limit > 0 && others.len() > limit {
        others.truncate(limit);
    }
    others.into_iter().map(|(_, node)| node).collect()
}

/// The label selector the simulated agents (and an aggregator discovering for them) use.
pub const NEIGHBOUR_FILTER: &str = "app.kubernetes.io/name=kubenurse";

/// The UDP echo port of an agent whose HTTP port is `http_port` (`KUBENURSE_UDP_PORT`): the
/// next one, so clusters on other ports never share one.
pub fn udp_port(http_port: u16) -> u16 {
    http_port.wrapping_add(1)
}

/// The environment an agent of `sim` gets (the same variables a pod would have).
pub fn agent_env(
    api: &FakeApiServer,
    sim: &SimNode,
    port: u16,
    interval: &str,
    limit: usize,
) -> HashMap<String, String> {
    let me = format!("http://{}", host_port(&sim.ip.to_string(), port));
    HashMap::from([
        ("KUBENURSE_INGRESS_URL".into(), me.clone()),
        ("KUBENURSE_SERVICE_URL".into(), me),
        ("KUBENURSE_NAMESPACE".into(), NAMESPACE.into()),
        ("KUBENURSE_NEIGHBOUR_FILTER".into(), NEIGHBOUR_FILTER.into()),
        ("KUBENURSE_NEIGHBOUR_LIMIT".into(), limit.to_string()),
        ("KUBENURSE_CHECK_INTERVAL".into(), interval.into()),
        ("KUBENURSE_CHECK_TIMEOUT".into(), "2s".into()),
        ("KUBENURSE_SHUTDOWN_DURATION".into(), "0s".into()),
        ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
        ("KUBERNETES_SERVICE_PORT".into(), api.addr().port().to_string()),
        ("KUBERNETES_SERVICE_DNS".into(), "localhost".into()),
        ("KUBENURSE_SERVICE_ACCOUNT_DIR".into(), api.service_account_dir().display().to_string()),
        ("KUBENURSE_POD_NAME".into(), sim.pod.clone()),
        ("KUBENURSE_NODE_NAME".into(), sim.node.clone()),
        ("KUBENURSE_BIND_ADDRESS".into(), sim.bind.to_string()),
        ("KUBENURSE_HTTP_PORT".into(), port.to_string()),
        ("KUBENURSE_UDP_PORT".into(), udp_port(port).to_string()),
    ])
}
