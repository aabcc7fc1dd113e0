//! Neighbour discovery, two ways. Local: watch caches keep slim Pods (and Nodes,
//! unless unschedulable nodes are allowed) in memory and a round reads the cache, never LISTs
//! (upstream's way: every agent watches every Node). Pushed: the aggregator sends the targets
//! down the stream and the agent watches at most its own Node. `KUBENURSE_DISCOVERY` picks;
//! in `auto` the local watches run only while the aggregator has been unreachable for the
//! fallback time ([`crate::pushed::Source`]) and stop when its targets come back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, Client};
use kubenurse_common::backoff::{random_unit, Backoff};
use kubenurse_neighbours::cache::Cache;
use kubenurse_neighbours::watch::{drive, health_of, Health, FIRST_RETRY_DELAY};
use kubenurse_proto::v1::Targets;
use tracing::{info, warn};

use crate::neighbourhood::{nearest_neighbours, PodFacts as _};
use crate::pushed::{DiscoveryMode, PushedList, Source};
use crate::ring::Neighbour;
use crate::selector::LabelSelector;
use kubenurse_neighbours::listwatch::{list_watch, pod_events, Selectors};
use kubenurse_neighbours::slim::{pod_key, SlimNode, SlimPod};

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
    /// `KUBENURSE_DISCOVERY`.
    pub mode: DiscoveryMode,
    /// `KUBENURSE_DISCOVERY_FALLBACK_AFTER`.
    pub fallback_after: Duration,
}

/// How often `auto` decides whether local watches should run.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// Longest delay between attempts to learn the own node from the own pod.
const OWN_NODE_MAX_DELAY: Duration = Duration::from_secs(10);

/// The watches of local discovery; dropping them stops the watches.
struct LocalWatches {
    pods: Cache<SlimPod>,
    nodes: Option<Cache<SlimNode>>,
    pods_health: Health,
    nodes_health: Health,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for LocalWatches {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A watch of the own Node only (field selector): its zone and schedulability.
struct OwnNodeWatch {
    cache: Cache<SlimNode>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OwnNodeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct OwnNode {
    name: Option<String>,
    error: Option<String>,
}

struct Inner {
    client: Client,
    settings: DiscoverySettings,
    local: Mutex<Option<Arc<LocalWatches>>>,
    own_watch: Mutex<Option<Arc<OwnNodeWatch>>>,
    own: Mutex<OwnNode>,
    source: Mutex<Source>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Handle to discovery, whichever way it runs.
#[derive(Clone)]
pub struct Discovery(Arc<Inner>);

impl Discovery {
    /// Starts discovery on the current tokio runtime.
    pub fn spawn(client: Client, settings: DiscoverySettings) -> Self {
        let source = Source::new(settings.mode, settings.fallback_after, Instant::now(), random_unit());
        let own = OwnNode { name: settings.node_name.clone(), error: None };
        let inner = Arc::new(Inner {
            client,
            settings,
            local: Mutex::default(),
            own_watch: Mutex::default(),
            own: Mutex::new(own),
            source: Mutex::new(source),
        });
        let discovery = Self(inner);
        if discovery.0.settings.mode == DiscoveryMode::Local {
            discovery.start_local();
        }
        match discovery.own_node() {
            Some(node) => discovery.watch_own_node(&node),
            None => {
                let weak = Arc::downgrade(&discovery.0);
                tokio::spawn(resolve_own_node(weak));
            }
        }
        if discovery.0.settings.mode == DiscoveryMode::Auto {
            tokio::spawn(supervise(Arc::downgrade(&discovery.0)));
        }
        discovery
    }

    fn local(&self) -> Option<Arc<LocalWatches>> {
        lock(&self.0.local).clone()
    }

    /// The own pod as the local Pod cache holds it (only while local discovery runs).
    fn own_pod_cached(&self) -> Option<Arc<SlimPod>> {
        let own_pod = self.0.settings.pod_name.as_str();
        self.local()?.pods.state().into_iter().find(|p| p.name() == own_pod)
    }

    /// Starts the Pod (and Node) watches of local discovery.
    fn start_local(&self) {
        let s = &self.0.settings;
        // LISTs are answered from the API server's watch cache (cheap at scale), decoded as
        // they arrive.
        let filter = s.neighbour_filter.clone();
        let pod_api: Api<Pod> = match &s.namespace {
            Some(ns) => Api::namespaced(self.0.client.clone(), ns),
            None => Api::all(self.0.client.clone()),
        };
        let (pods, pod_writer) = Cache::new();
        let (pods_health, nodes_health) = (Health::default(), Health::default());
        let mut tasks = vec![tokio::spawn(drive(
            move || pod_events(pod_api.clone(), &filter),
            pod_writer,
            pods_health.clone(),
            "pods",
            |_| {},
        ))];
        let nodes = if s.allow_unschedulable {
            None
        } else {
            let node_api: Api<Node> = Api::all(self.0.client.clone());
            let (nodes, node_writer) = Cache::new();
            tasks.push(tokio::spawn(drive(
                move || list_watch::<SlimNode>(node_api.clone(), Selectors::default()),
                node_writer,
                nodes_health.clone(),
                "nodes",
                |_| {},
            )));
            Some(nodes)
        };
        *lock(&self.0.local) = Some(Arc::new(LocalWatches { pods, nodes, pods_health, nodes_health, tasks }));
    }

    /// Watches the own Node alone, where pushed targets spare the full Node watch.
    fn watch_own_node(&self, node: &str) {
        let s = &self.0.settings;
        if s.mode == DiscoveryMode::Local || s.allow_unschedulable {
            return;
        }
        let api: Api<Node> = Api::all(self.0.client.clone());
        let selectors = Selectors::named(node);
        let (cache, writer) = Cache::new();
        let task = tokio::spawn(drive(
            move || list_watch::<SlimNode>(api.clone(), selectors.clone()),
            writer,
            Health::default(),
            "own node",
            |_| {},
        ));
        *lock(&self.0.own_watch) = Some(Arc::new(OwnNodeWatch { cache, task }));
    }

    /// The own Node as cached: by the full Node watch when local discovery runs, else by the
    /// own-Node watch.
    fn own_node_object(&self) -> Option<Arc<SlimNode>> {
        let own = self.own_node()?;
        if let Some(nodes) = self.local().and_then(|l| l.nodes.clone()) {
            if let Some(n) = nodes.get(&own) {
                return Some(n);
            }
        }
        lock(&self.0.own_watch).as_ref().and_then(|w| w.cache.get(&own))
    }

    /// A stream from replica `from` delivered targets (`Some`) or ended (`None`); returns why
    /// a list was not taken, for the uplink to log.
    pub fn pushed(&self, from: SocketAddr, targets: Option<Targets>) -> Result<(), crate::pushed::TargetsError> {
        let mut source = lock(&self.0.source);
        match targets {
            Some(t) => {
                let list = PushedList::from_wire(t, self.0.settings.neighbour_limit)?;
                source.received(from, list, Instant::now());
            }
            None => source.lost(from, Instant::now(), random_unit()),
        }
        Ok(())
    }

    /// The mode.
    pub fn mode(&self) -> DiscoveryMode {
        self.0.settings.mode
    }

    /// Whether `pod` is a kubenurse pod known to check us: a pod the local cache holds (in the
    /// watched namespace), or one the aggregator says checks us. Only those count as origins of
    /// incoming checks, so made-up origins cannot crowd out real ones.
    pub fn knows_pod(&self, pod: &str) -> bool {
        if let Some(local) = self.local() {
            let cached = match &self.0.settings.namespace {
                Some(ns) => local.pods.get(&pod_key(Some(ns), pod)).is_some(),
                None => local.pods.state().iter().any(|p| p.name() == pod),
            };
            if cached {
                return true;
            }
        }
        lock(&self.0.source).last().is_some_and(|l| l.checked_by.contains(pod))
    }

    /// The own node's name, once known.
    pub fn own_node(&self) -> Option<String> {
        lock(&self.0.own).name.clone()
    }

    /// The own pod's IP and host IP, from the cache or the aggregator.
    pub fn own_addresses(&self) -> (String, String) {
        let cached = self
            .own_pod_cached()
            .filter(|p| p.pod_ip().is_some())
            .map(|p| (p.pod_ip().unwrap_or_default().to_string(), p.host_ip().unwrap_or_default().to_string()));
        cached.unwrap_or_else(|| {
            lock(&self.0.source).last().map(|l| (l.own.0.clone(), l.own.1.clone())).unwrap_or_default()
        })
    }

    /// The own node's `topology.kubernetes.io/zone` label (from a Node watch, else from the
    /// aggregator; empty when neither knows it).
    pub fn own_zone(&self) -> String {
        let from_node = self.own_node_object().and_then(|n| n.zone().map(str::to_string));
        from_node.unwrap_or_else(|| lock(&self.0.source).last().map(|l| l.own.2.clone()).unwrap_or_default())
    }

    /// False when the own node is cordoned or tainted unschedulable (then `/ready` is 503).
    pub fn own_node_schedulable(&self) -> bool {
        self.own_node_object().is_none_or(|n| !n.unschedulable())
    }

    /// The neighbours to check now: local caches when local discovery runs and has synced,
    /// else the aggregator's latest list.
    pub fn view(&self) -> NeighbourhoodView {
        let local = self.local();
        let pushed = {
            let source = lock(&self.0.source);
            source.last().cloned().map(|l| (l, source.is_live(), source.outage_since()))
        };
        let local_view = local.as_ref().map(|l| self.local_view(l));
        match (local_view, pushed) {
            (Some(v), _) if v.known => v,
            (local_view, Some((list, live, outage))) => {
                let state = if live {
                    list.state
                } else {
                    let secs = outage.map_or(0, |t| t.elapsed().as_secs());
                    let local = if local_view.is_some() { "; local discovery starting" } else { "" };
                    format!("aggregator unreachable for {secs}s, checking its last targets{local}")
                };
                NeighbourhoodView { state, neighbours: list.neighbours, known: true }
            }
            (Some(v), None) => v,
            (None, None) => NeighbourhoodView {
                state: "waiting for targets from the aggregator".into(),
                neighbours: Vec::new(),
                known: false,
            },
        }
    }

    fn local_view(&self, local: &LocalWatches) -> NeighbourhoodView {
        let (pods, nodes) = (health_of(&local.pods_health), health_of(&local.nodes_health));
        let (own_node, own_error) = {
            let o = lock(&self.0.own);
            (o.name.clone(), o.error.clone())
        };
        let waiting = |what: &str, err: Option<String>| NeighbourhoodView {
            state: format!("waiting for {what}: {}", err.unwrap_or_else(|| "not synced yet".into())),
            neighbours: Vec::new(),
            known: false,
        };
        if !pods.synced {
            return waiting("the pod list", pods.last_error);
        }
        let node_objects = match &local.nodes {
            None => None,
            Some(_) if !nodes.synced => return waiting("the node list", nodes.last_error),
            Some(cache) => Some(cache.state()),
        };
        // Borrowed from the cache: a round allocates no name.
        let node_map: Option<HashMap<&str, bool>> =
            node_objects.as_ref().map(|all| all.iter().map(|n| (n.name(), !n.unschedulable())).collect());
        let Some(own_node) = own_node else {
            return waiting("the own node name", own_error);
        };
        let s = &self.0.settings;
        let cached = local.pods.state();
        let neighbours = nearest_neighbours(
            &own_node,
            cached.iter().map(|p| &**p),
            node_map.as_ref(),
            &s.pod_name,
            &s.neighbour_filter,
            s.neighbour_limit,
        );
        let state = match (pods.last_error, nodes.last_error) {
            (None, None) => "ok".to_string(),
            (Some(e), _) | (None, Some(e)) => format!("watch failing, checking cached neighbours: {e}"),
        };
        NeighbourhoodView { state, neighbours, known: true }
    }
}

/// `auto`: starts local watches once the aggregator has been unreachable long enough, and
/// stops them when its targets come back. Ends with the discovery.
async fn supervise(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(SUPERVISE_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        let discovery = Discovery(inner);
        let (wants, outage) = {
            let source = lock(&discovery.0.source);
            (source.wants_local(Instant::now()), source.outage_since())
        };
        let running = discovery.local().is_some();
        if wants && !running {
            let secs = outage.map_or(0, |t| t.elapsed().as_secs());
            warn!(without_targets_for_s = secs, "no targets from the aggregator: starting local discovery");
            discovery.start_local();
        } else if !wants && running {
            info!("targets from the aggregator again: local discovery stopped");
            *lock(&discovery.0.local) = None;
        }
    }
}

/// Finds the own node from the own pod (local cache first, then a GET), retrying until it
/// works; then watches that Node alone when local discovery does not watch them all.
async fn resolve_own_node(inner: Weak<Inner>) {
    let mut backoff = Backoff::new(FIRST_RETRY_DELAY, OWN_NODE_MAX_DELAY);
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let discovery = Discovery(strong);
        let own_pod = discovery.0.settings.pod_name.clone();
        let from_cache = discovery.own_pod_cached().and_then(|p| p.node_name().map(str::to_string));
        let found = match (from_cache, &discovery.0.settings.namespace) {
            (Some(node), _) => Ok(node),
            (None, Some(ns)) => Api::<Pod>::namespaced(discovery.0.client.clone(), ns)
                .get(&own_pod)
                .await
                .map_err(|e| format!("looking up own pod {ns}/{own_pod}: {e}"))
                .and_then(|p| {
                    p.spec.and_then(|s| s.node_name).ok_or_else(|| format!("own pod {own_pod} has no node yet"))
                }),
            (None, None) => Err(format!(
                "own pod {own_pod} not in the watched pods; set KUBENURSE_NODE_NAME or KUBENURSE_NAMESPACE"
            )),
        };
        match found {
            Ok(node) => {
                info!(node = %node, "own node resolved");
                *lock(&discovery.0.own) = OwnNode { name: Some(node.clone()), error: None };
                discovery.watch_own_node(&node);
                return;
            }
            Err(e) => {
                warn!(error = %e, "own node not known yet");
                lock(&discovery.0.own).error = Some(e);
            }
        }
        drop(discovery);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
