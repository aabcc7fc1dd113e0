//! Discovery once for the whole cluster: the aggregator watches the agents' Pods and the
//! Nodes (slim watch caches, as an agent keeps), works out every agent's targets with
//! the agents' own rules and ring ([`kubenurse_neighbours`]), and each stream pushes its
//! agent's list whenever it changes. Agents then watch no Pods and no other Nodes: one watch
//! per replica instead of one per node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::Event;
use kube::{Api, Client};
use kubenurse_neighbours::cache::Cache;
use kubenurse_neighbours::listwatch::{list_watch, pod_events, Selectors};
use kubenurse_neighbours::neighbourhood::{eligible_by_node, PodFacts as _};
use kubenurse_neighbours::ring::{Neighbour, Ring};
use kubenurse_neighbours::selector::LabelSelector;
use kubenurse_neighbours::slim::{SlimNode, SlimPod};
use kubenurse_neighbours::watch::{drive, health_of, Health};
use kubenurse_proto::v1::{Target, Targets};
use tokio::sync::{watch, Notify};
use tracing::info;

/// How long changes are gathered before the book is rebuilt (kubelets update Nodes all the time).
const REBUILD_AFTER: Duration = Duration::from_millis(250);

/// What pushed discovery needs of the configuration: the agents' own variables.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// `KUBENURSE_NAMESPACE`; `None`: all namespaces.
    pub namespace: Option<String>,
    /// `KUBENURSE_NEIGHBOUR_FILTER`.
    pub neighbour_filter: LabelSelector,
    /// `KUBENURSE_NEIGHBOUR_LIMIT`.
    pub neighbour_limit: usize,
    /// `KUBENURSE_ALLOW_UNSCHEDULABLE`: schedulability is not a rule (Nodes are still watched,
    /// for zones).
    pub allow_unschedulable: bool,
}

/// What of a Node decides targets: its schedulability and zone. Kubelets rewrite every Node's
/// status every few minutes; those updates change neither and cause no rebuild.
fn node_key(n: &SlimNode) -> (bool, Option<String>) {
    (n.unschedulable(), n.zone().map(str::to_string))
}

/// Calls `notify` for the Node events that can change targets.
fn on_node_event(
    keys: &Mutex<HashMap<String, (bool, Option<String>)>>,
    event: Option<&Event<SlimNode>>,
    notify: &Notify,
) {
    let mut keys = keys.lock().unwrap_or_else(|p| p.into_inner());
    match event {
        // A new LIST: every Node is seen again, and InitDone rebuilds.
        Some(Event::Init) => keys.clear(),
        Some(Event::InitApply(n)) => {
            keys.insert(n.name().to_string(), node_key(n));
        }
        Some(Event::Apply(n)) => {
            let key = node_key(n);
            if keys.insert(n.name().to_string(), key.clone()) != Some(key) {
                notify.notify_one();
            }
        }
        Some(Event::Delete(n)) => {
            keys.remove(n.name());
            notify.notify_one();
        }
        Some(Event::InitDone) | None => notify.notify_one(),
    }
}

/// Every agent's targets, worked out from one view of the caches. Pure.
#[derive(Debug, Default, PartialEq)]
pub struct TargetBook {
    /// By agent pod: (its node, its targets).
    by_pod: HashMap<String, (String, Vec<Target>)>,
    /// By pod: the agent pods that check it.
    checked_by: HashMap<String, Vec<String>>,
    /// By pod: its own entry (addresses, zone).
    own: HashMap<String, Target>,
    state: String,
    #[allow(clippy::struct_field_names)]
    ring_nodes: usize,
}

fn target_of(n: &Neighbour, zones: &HashMap<String, String>) -> Target {
    Target {
        node: n.node_name.clone(),
        pod: n.pod_name.clone(),
        pod_ip: n.pod_ip.clone(),
        host_ip: n.host_ip.clone(),
        zone: zones.get(&n.node_name).cloned().unwrap_or_default(),
    }
}

impl TargetBook {
    /// The book for `pods` and `nodes` (`None`: the Node list is not known, so no node rule
    /// and no zones); `state` is what agents show as `neighbourhood_state`.
    pub fn build(
        pods: &[Arc<SlimPod>],
        nodes: Option<&[Arc<SlimNode>]>,
        config: &DiscoveryConfig,
        state: String,
    ) -> Self {
        let zones: HashMap<String, String> =
            nodes.into_iter().flatten().filter_map(|n| Some((n.name().to_string(), n.zone()?.to_string()))).collect();
        let schedulable: Option<HashMap<String, bool>> = nodes
            .filter(|_| !config.allow_unschedulable)
            .map(|nodes| nodes.iter().map(|n| (n.name().to_string(), !n.unschedulable())).collect());
        let ring =
            Ring::new(eligible_by_node(pods.iter().map(|p| &**p), schedulable.as_ref(), &config.neighbour_filter));
        let mut book = Self { state, ring_nodes: ring.len(), ..Self::default() };
        for pod in pods {
            let name = pod.name().to_string();
            if name.is_empty() {
                continue;
            }
            if !pod.selected_by(&config.neighbour_filter) {
                continue;
            }
            let Some(node) = pod.node_name().filter(|n| !n.is_empty()).map(str::to_string) else {
                continue;
            };
            book.own.insert(
                name.clone(),
                Target {
                    node: node.clone(),
                    pod: name.clone(),
                    pod_ip: pod.pod_ip().unwrap_or_default().to_string(),
                    host_ip: pod.host_ip().unwrap_or_default().to_string(),
                    zone: zones.get(&node).cloned().unwrap_or_default(),
                },
            );
            let targets: Vec<Target> =
                ring.targets_of(&node, &name, config.neighbour_limit).iter().map(|n| target_of(n, &zones)).collect();
            for t in &targets {
                book.checked_by.entry(t.pod.clone()).or_default().push(name.clone());
            }
            book.by_pod.insert(name, (node, targets));
        }
        for sources in book.checked_by.values_mut() {
            sources.sort();
        }
        book
    }

    /// What agent `pod` on `node` checks; `None` when the caches do not hold that pod on that
    /// node (yet): the agent keeps what it has rather than an empty list.
    pub fn targets_for(&self, node: &str, pod: &str) -> Option<Targets> {
        let (on, targets) = self.by_pod.get(pod)?;
        if on != node {
            return None;
        }
        Some(Targets {
            targets: targets.clone(),
            checked_by: self.checked_by.get(pod).cloned().unwrap_or_default(),
            own: self.own.get(pod).cloned(),
            neighbourhood_state: self.state.clone(),
        })
    }

    /// Nodes with an eligible pod.
    pub fn ring_nodes(&self) -> usize {
        self.ring_nodes
    }
}

/// The latest book; `None` until the watches have synced.
pub type Books = watch::Receiver<Option<Arc<TargetBook>>>;

/// The running watches and rebuild task; dropping it stops them.
pub struct Running {
    /// The books the rebuild task publishes.
    pub books: Books,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the watches and the task that rebuilds the book after changes.
pub fn spawn(client: Client, config: DiscoveryConfig) -> Running {
    let changed = Arc::new(Notify::new());
    let filter = config.neighbour_filter.clone();
    let pod_api: Api<Pod> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let node_api: Api<Node> = Api::all(client);
    let (pods, pod_writer) = Cache::new();
    let (nodes, node_writer) = Cache::new();
    let (pods_health, nodes_health) = (Health::default(), Health::default());
    let notify = changed.clone();
    let pods_task = tokio::spawn(drive(
        move || pod_events(pod_api.clone(), &filter),
        pod_writer,
        pods_health.clone(),
        "pods",
        // Agent pods change rarely (rollouts): every change may matter.
        move |event: Option<&Event<SlimPod>>| {
            if !matches!(event, Some(Event::Init | Event::InitApply(_))) {
                notify.notify_one();
            }
        },
    ));
    let notify = changed.clone();
    let node_keys = Mutex::new(HashMap::new());
    let nodes_task = tokio::spawn(drive(
        move || list_watch::<SlimNode>(node_api.clone(), Selectors::default()),
        node_writer,
        nodes_health.clone(),
        "nodes",
        move |event: Option<&Event<SlimNode>>| on_node_event(&node_keys, event, &notify),
    ));
    let (tx, books) = watch::channel(None);
    let rebuild_task = tokio::spawn(rebuild(Caches { pods, nodes, pods_health, nodes_health }, config, changed, tx));
    Running { books, tasks: vec![pods_task, nodes_task, rebuild_task] }
}

struct Caches {
    pods: Cache<SlimPod>,
    nodes: Cache<SlimNode>,
    pods_health: Health,
    nodes_health: Health,
}

async fn rebuild(
    caches: Caches,
    config: DiscoveryConfig,
    changed: Arc<Notify>,
    tx: watch::Sender<Option<Arc<TargetBook>>>,
) {
    loop {
        changed.notified().await;
        tokio::time::sleep(REBUILD_AFTER).await;
        let (pods, nodes) = (health_of(&caches.pods_health), health_of(&caches.nodes_health));
        if !pods.synced || !nodes.synced {
            continue;
        }
        let state = match (pods.last_error, nodes.last_error) {
            (None, None) => "ok".to_string(),
            (Some(e), _) | (None, Some(e)) => format!("aggregator's watch failing, targets from its cache: {e}"),
        };
        let book = TargetBook::build(&caches.pods.state(), Some(&caches.nodes.state()), &config, state);
        tx.send_if_modified(|current| {
            if current.as_deref() == Some(&book) {
                return false;
            }
            if current.as_ref().is_none_or(|c| c.ring_nodes() != book.ring_nodes()) {
                info!(nodes_on_ring = book.ring_nodes(), agents = book.by_pod.len(), "targets recomputed");
            }
            *current = Some(Arc::new(book));
            true
        });
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kubenurse_neighbours::slim::ZONE_LABEL;

    fn pod(i: usize) -> Arc<SlimPod> {
        Arc::new(SlimPod::from(&Pod {
            metadata: ObjectMeta {
                name: Some(format!("kubenurse-{i}")),
                labels: Some([("app".to_string(), "kubenurse".to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec { node_name: Some(format!("node-{i}")), ..PodSpec::default() }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(format!("10.0.0.{i}")),
                host_ip: Some(format!("192.0.2.{i}")),
                ..PodStatus::default()
            }),
        }))
    }

    fn node(i: usize, cordoned: bool) -> Arc<SlimNode> {
        Arc::new(SlimNode::from(&full_node(i, cordoned)))
    }

    fn full_node(i: usize, cordoned: bool) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(format!("node-{i}")),
                labels: Some([(ZONE_LABEL.to_string(), format!("zone-{}", i % 3))].into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec { unschedulable: Some(cordoned), ..NodeSpec::default() }),
            ..Node::default()
        }
    }

    fn config(limit: usize) -> DiscoveryConfig {
        DiscoveryConfig {
            namespace: None,
            neighbour_filter: LabelSelector::parse("app=kubenurse").unwrap(),
            neighbour_limit: limit,
            allow_unschedulable: false,
        }
    }

    #[test]
    fn every_agent_gets_its_ring_successors_and_knows_who_checks_it() {
        let pods: Vec<_> = (0..12).map(pod).collect();
        let nodes: Vec<_> = (0..12).map(|i| node(i, i == 5)).collect();
        let book = TargetBook::build(&pods, Some(&nodes), &config(3), "ok".into());
        assert_eq!(book.ring_nodes(), 11, "the cordoned node is no target");
        let mut received: HashMap<String, usize> = HashMap::new();
        for i in 0..12 {
            let t = book.targets_for(&format!("node-{i}"), &format!("kubenurse-{i}")).unwrap();
            assert_eq!(t.targets.len(), 3);
            assert!(t.targets.iter().all(|x| x.node != "node-5" && x.node != format!("node-{i}")));
            assert!(t.targets.iter().all(|x| x.zone.starts_with("zone-")), "zones from the Nodes");
            assert_eq!(t.own.as_ref().unwrap().pod_ip, format!("10.0.0.{i}"));
            for x in &t.targets {
                *received.entry(x.pod.clone()).or_default() += 1;
                let back = book.targets_for(&x.node, &x.pod).unwrap();
                assert!(back.checked_by.contains(&format!("kubenurse-{i}")), "{} knows it is checked by {i}", x.pod);
            }
        }
        assert_eq!(received.values().sum::<usize>(), 36);
        // The cordoned node's agent still checks others, and nobody checks it.
        let cordoned = book.targets_for("node-5", "kubenurse-5").unwrap();
        assert_eq!((cordoned.targets.len(), cordoned.checked_by.len()), (3, 0));
        // A pod claimed on another node, or unknown: no list rather than a wrong one.
        assert!(book.targets_for("node-6", "kubenurse-5").is_none());
        assert!(book.targets_for("node-1", "kubenurse-99").is_none());
    }

    #[tokio::test]
    async fn only_node_changes_that_move_targets_rebuild() {
        let keys = Mutex::new(HashMap::new());
        let notify = Notify::new();
        let fired = |event: Event<SlimNode>| {
            on_node_event(&keys, Some(&event), &notify);
            // notify_one stores one permit: take it if it was given.
            futures::FutureExt::now_or_never(notify.notified()).is_some()
        };
        assert!(!fired(Event::Init));
        assert!(!fired(Event::InitApply(node(1, false).as_ref().clone())));
        assert!(fired(Event::InitDone));
        // A status heartbeat: same schedulability, same zone.
        let mut heartbeat = full_node(1, false);
        heartbeat.metadata.resource_version = Some("2".into());
        assert!(!fired(Event::Apply(SlimNode::from(&heartbeat))));
        assert!(fired(Event::Apply(node(1, true).as_ref().clone())), "cordoned");
        assert!(fired(Event::Apply(node(2, false).as_ref().clone())), "a new node");
        assert!(fired(Event::Delete(node(2, false).as_ref().clone())));
        assert!(fired(Event::Apply(node(2, false).as_ref().clone())), "back after its deletion");
    }

    #[test]
    fn allow_unschedulable_and_unknown_nodes() {
        let pods: Vec<_> = (0..4).map(pod).collect();
        let nodes: Vec<_> = (0..4).map(|i| node(i, true)).collect();
        let allow = DiscoveryConfig { allow_unschedulable: true, ..config(0) };
        assert_eq!(TargetBook::build(&pods, Some(&nodes), &allow, "ok".into()).ring_nodes(), 4);
        assert_eq!(TargetBook::build(&pods, Some(&nodes), &config(0), "ok".into()).ring_nodes(), 0);
        // Only nodes that exist are targets.
        assert_eq!(TargetBook::build(&pods, Some(&nodes[..0]), &config(0), "ok".into()).ring_nodes(), 0);
    }
}
