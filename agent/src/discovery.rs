//! Watch-backed neighbour discovery: kube-rs reflectors keep stripped Pods (and Nodes, unless
//! unschedulable nodes are allowed) in memory; a round reads the cache, never LISTs. Watches
//! retry with backoff by themselves; their last error is reported in `neighbourhood_state`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client};
use kubenurse_common::backoff::Backoff;
use tracing::{info, warn};

use crate::neighbourhood::{eligible_neighbours, node_is_unschedulable, strip_node, strip_pod};
use crate::ring::{select_neighbours, Neighbour};
use crate::selector::LabelSelector;

#[derive(Default)]
struct WatchStatus {
    synced: bool,
    last_error: Option<String>,
}

#[derive(Default)]
struct Status {
    pods: WatchStatus,
    nodes: WatchStatus,
    own_node: Option<String>,
    own_node_error: Option<String>,
}

/// What a round checks: the selected neighbours and whether discovery is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourhoodView {
    /// `ok`, or why the neighbourhood is incomplete or unknown.
    pub state: String,
    /// The neighbours to check this round (after the ring filter).
    pub neighbours: Vec<Neighbour>,
    /// False while a cache has never synced: the list is unknown, not empty.
    pub known: bool,
}

/// What discovery needs of the configuration.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    /// `KUBENURSE_NAMESPACE`; `None` watches all namespaces.
    pub namespace: Option<String>,
    /// `KUBENURSE_NEIGHBOUR_FILTER`.
    pub neighbour_filter: LabelSelector,
    /// `KUBENURSE_NEIGHBOUR_LIMIT`.
    pub neighbour_limit: usize,
    /// `KUBENURSE_ALLOW_UNSCHEDULABLE`: no node watch at all.
    pub allow_unschedulable: bool,
    /// The own pod (never its own neighbour; its node is looked up from it).
    pub pod_name: String,
    /// `KUBENURSE_NODE_NAME`, when given.
    pub node_name: Option<String>,
}

/// Handle to the running watches.
#[derive(Clone)]
pub struct Discovery {
    pods: Store<Pod>,
    nodes: Option<Store<Node>>,
    status: Arc<Mutex<Status>>,
    own_pod: String,
    namespace: Option<String>,
    limit: usize,
    filter: crate::selector::LabelSelector,
}

impl Discovery {
    /// Starts the watches on the current tokio runtime.
    pub fn spawn(client: Client, config: DiscoverySettings) -> Self {
        let status = Arc::new(Mutex::new(Status { own_node: config.node_name.clone(), ..Status::default() }));
        // any_semantic: the API server may answer LISTs from its watch cache (cheap at scale).
        let mut watch_config = watcher::Config::default().any_semantic();
        if !config.neighbour_filter.is_empty() {
            watch_config = watch_config.labels(&config.neighbour_filter.to_string());
        }
        let pod_api: Api<Pod> = match &config.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (pods, pod_writer) = reflector::store();
        tokio::spawn(drive(
            move || watcher::watcher(pod_api.clone(), watch_config.clone()).modify(strip_pod),
            pod_writer,
            status.clone(),
            |s| &mut s.pods,
            "pods",
        ));

        let nodes = if config.allow_unschedulable {
            None
        } else {
            let node_api: Api<Node> = Api::all(client.clone());
            let (nodes, node_writer) = reflector::store();
            tokio::spawn(drive(
                move || {
                    watcher::watcher(node_api.clone(), watcher::Config::default().any_semantic()).modify(strip_node)
                },
                node_writer,
                status.clone(),
                |s| &mut s.nodes,
                "nodes",
            ));
            Some(nodes)
        };

        let discovery = Self {
            pods,
            nodes,
            status,
            own_pod: config.pod_name.clone(),
            namespace: config.namespace.clone(),
            limit: config.neighbour_limit,
            filter: config.neighbour_filter,
        };
        if config.node_name.is_none() {
            let d = discovery.clone();
            tokio::spawn(async move { d.resolve_own_node(client).await });
        }
        discovery
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds the own node from the own pod (cache first, then a GET), retrying until it works.
    async fn resolve_own_node(&self, client: Client) {
        let mut backoff = Backoff::new(FIRST_RETRY_DELAY, OWN_NODE_MAX_DELAY);
        loop {
            let from_cache = self
                .pods
                .state()
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(self.own_pod.as_str()))
                .and_then(|p| p.spec.as_ref()?.node_name.clone());
            let found = match from_cache {
                Some(node) => Ok(node),
                None => match &self.namespace {
                    Some(ns) => Api::<Pod>::namespaced(client.clone(), ns)
                        .get(&self.own_pod)
                        .await
                        .map_err(|e| format!("looking up own pod {ns}/{}: {e}", self.own_pod))
                        .and_then(|p| {
                            p.spec
                                .and_then(|s| s.node_name)
                                .ok_or_else(|| format!("own pod {} has no node yet", self.own_pod))
                        }),
                    None => Err(format!(
                        "own pod {} not in the watched pods; set KUBENURSE_NODE_NAME or KUBENURSE_NAMESPACE",
                        self.own_pod
                    )),
                },
            };
            match found {
                Ok(node) => {
                    info!(node = %node, "own node resolved");
                    let mut s = self.status();
                    s.own_node = Some(node);
                    s.own_node_error = None;
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "own node not known yet");
                    self.status().own_node_error = Some(e);
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Whether `pod` is a kubenurse pod the cache holds (in the watched namespace): only those
    /// count as origins of incoming checks, so made-up origins cannot crowd out real ones.
    pub fn knows_pod(&self, pod: &str) -> bool {
        match &self.namespace {
            Some(ns) => self.pods.get(&ObjectRef::new(pod).within(ns)).is_some(),
            None => self.pods.state().iter().any(|p| p.metadata.name.as_deref() == Some(pod)),
        }
    }

    /// The own node's name, once known.
    pub fn own_node(&self) -> Option<String> {
        self.status().own_node.clone()
    }

    /// The own pod's IP and host IP, from the cache (when the own pod matches the filter).
    pub fn own_addresses(&self) -> (String, String) {
        self.pods
            .state()
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(self.own_pod.as_str()))
            .and_then(|p| p.status.as_ref())
            .map(|s| (s.pod_ip.clone().unwrap_or_default(), s.host_ip.clone().unwrap_or_default()))
            .unwrap_or_default()
    }

    /// The own node's `topology.kubernetes.io/zone` label (empty without a node watch).
    pub fn own_zone(&self) -> String {
        let (Some(nodes), Some(own)) = (&self.nodes, self.own_node()) else { return String::new() };
        nodes
            .get(&ObjectRef::new(&own))
            .and_then(|n| n.metadata.labels.as_ref()?.get("topology.kubernetes.io/zone").cloned())
            .unwrap_or_default()
    }

    /// False when the own node is cordoned or tainted unschedulable (then `/ready` is 503).
    pub fn own_node_schedulable(&self) -> bool {
        let (Some(nodes), Some(own)) = (&self.nodes, self.own_node()) else { return true };
        nodes.get(&ObjectRef::new(&own)).is_none_or(|n| !node_is_unschedulable(&n))
    }

    /// The neighbours to check now, from the caches.
    pub fn view(&self) -> NeighbourhoodView {
        let (pods_synced, pod_error, nodes_synced, node_error, own_node, own_error) = {
            let s = self.status();
            (
                s.pods.synced,
                s.pods.last_error.clone(),
                s.nodes.synced,
                s.nodes.last_error.clone(),
                s.own_node.clone(),
                s.own_node_error.clone(),
            )
        };
        let waiting = |what: &str, err: Option<String>| NeighbourhoodView {
            state: format!("waiting for {what}: {}", err.unwrap_or_else(|| "not synced yet".into())),
            neighbours: Vec::new(),
            known: false,
        };
        if !pods_synced {
            return waiting("the pod list", pod_error);
        }
        let node_map: Option<HashMap<String, bool>> = match &self.nodes {
            None => None,
            Some(_) if !nodes_synced => return waiting("the node list", node_error),
            Some(store) => Some(
                store
                    .state()
                    .iter()
                    .filter_map(|n| Some((n.metadata.name.clone()?, !node_is_unschedulable(n))))
                    .collect(),
            ),
        };
        let Some(own_node) = own_node else {
            return waiting("the own node name", own_error);
        };
        let pods = self.pods.state();
        let candidates =
            eligible_neighbours(pods.iter().map(AsRef::as_ref), node_map.as_ref(), &self.own_pod, &self.filter);
        let neighbours = select_neighbours(&own_node, candidates, self.limit);
        let state = match (pod_error, node_error) {
            (None, None) => "ok".to_string(),
            (Some(e), _) | (None, Some(e)) => format!("watch failing, checking cached neighbours: {e}"),
        };
        NeighbourhoodView { state, neighbours, known: true }
    }
}

/// First delay before re-establishing a failed watch; doubles up to `MAX_RETRY_DELAY`.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Longest delay between attempts to learn the own node from the own pod.
const OWN_NODE_MAX_DELAY: Duration = Duration::from_secs(10);
/// Longest delay between attempts while the API server is unreachable: with ±25 % jitter and
/// the LIST itself, discovery is `ok` again within 10 s of the API server's recovery.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(6);

/// Runs a watch into `writer` forever. On an error the watch is restarted (a fresh LIST, then
/// WATCH) after a jittered, capped backoff: the LIST's completion is what proves recovery, so
/// `neighbourhood_state` clears as soon as the API server is back, and the cache stays valid
/// (kube swaps it in whole at the end of the LIST) meanwhile.
async fn drive<K, S>(
    make_stream: impl Fn() -> S,
    mut writer: reflector::store::Writer<K>,
    status: Arc<Mutex<Status>>,
    pick: fn(&mut Status) -> &mut WatchStatus,
    what: &'static str,
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut backoff = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY);
    loop {
        let stream = make_stream();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    writer.apply_watcher_event(&event);
                    if matches!(event, Event::InitDone) {
                        let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                        let w = pick(&mut s);
                        if !w.synced || w.last_error.is_some() {
                            info!(resource = what, "watch synced");
                        }
                        w.synced = true;
                        w.last_error = None;
                        backoff.reset();
                    }
                }
                Err(e) => {
                    warn!(resource = what, error = %e, retry_in = ?backoff.current(), "watch failed");
                    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                    pick(&mut s).last_error = Some(format!("{what} watch: {e}"));
                    break;
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
