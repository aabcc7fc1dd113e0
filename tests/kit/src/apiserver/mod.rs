//! A fake Kubernetes API server that speaks the real wire format to the agent's real kube
//! client: HTTPS with its own CA, bearer tokens (401 otherwise), `/version`, pods and nodes
//! with list, get and watch (resourceVersion, label selectors, `410 Gone` for a version that
//! is too old), TokenReview of the tokens it issues, what a controller writes (Node status
//! patches, Events, Leases: `writes.rs`), k8s-openapi objects. Tests change pods and nodes while agents run, and can make
//! the server slow or failing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod};
use k8s_openapi::api::events::v1::Event;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

use crate::pki::{write_file, TestCa};

mod handlers;
mod objects;
mod tokens;
mod writes;

use handlers::*;
use objects::selector_matches;
pub use objects::{kubenurse_pod, node};
use tokens::{create_token_review, Tokens};
pub use tokens::{TokenRequest, API_AUDIENCE};
use writes::*;

/// The bearer token the fake server accepts.
pub const TOKEN: &str = "kubenurse-test-token";
/// Changes kept for watch resumption; older resource versions get `410 Gone`.
const HISTORY: usize = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Pods,
    Nodes,
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    event: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    pods: BTreeMap<(String, String), Pod>,
    nodes: BTreeMap<String, Node>,
    history: VecDeque<Change>,
    /// Versions at or below this are gone from history.
    compacted: u64,
    tokens: Tokens,
    events: BTreeMap<(String, String), Event>,
    leases: BTreeMap<(String, String), Lease>,
}

/// Faults a test can switch on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added before every answer.
    pub delay: Duration,
    /// Every request gets 503 and open watches are closed.
    pub failing: bool,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    faults: watch::Sender<Faults>,
    requests: Mutex<HashMap<String, u64>>,
    /// Watches being served now, by what they watch.
    watching: Mutex<HashMap<String, u64>>,
}

impl Shared {
    /// Stores a change under the next resource version and tells the watchers; the stored
    /// object as JSON (null when `set_rv` stored nothing).
    fn commit<T: serde::Serialize + Clone>(
        &self,
        kind: Kind,
        event: &'static str,
        set_rv: impl FnOnce(&mut Store, String) -> Option<T>,
        namespace: Option<String>,
        labels: Option<BTreeMap<String, String>>,
    ) -> Value {
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        store.rv += 1;
        let rv = store.rv;
        let Some(object) = set_rv(&mut store, rv.to_string()) else { return Value::Null };
        let change = change_of(rv, kind, namespace, labels, event, &object);
        store.history.push_back(change.clone());
        while store.history.len() > HISTORY {
            if let Some(old) = store.history.pop_front() {
                store.compacted = old.rv;
            }
        }
        let _ = self.changes.send(change.clone());
        change.object
    }

    fn count(&self, what: String) {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry(what).or_default() += 1;
    }

    /// Marks a watch of `what` open until the returned guard is dropped.
    fn watching(self: &Arc<Self>, what: String) -> OpenWatch {
        *self.watching.lock().unwrap_or_else(|p| p.into_inner()).entry(what.clone()).or_default() += 1;
        OpenWatch { shared: self.clone(), what }
    }
}

/// A watch being served; counted in [`FakeApiServer::open_watches`] while it lives.
struct OpenWatch {
    shared: Arc<Shared>,
    what: String,
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        if let Some(n) = self.shared.watching.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&self.what) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Stops the server when the last handle to it is dropped.
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// A running fake API server; stops when its last clone is dropped (a clone is a handle, for
/// tasks that change the cluster in the background).
#[derive(Clone)]
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    ca_pem: String,
    dir: PathBuf,
    _stop: Arc<StopOnDrop>,
}

impl FakeApiServer {
    /// Starts on `127.0.0.1` (random port), writing its CA and a kubeconfig into `dir`.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let ca = TestCa::new("fake-kube-ca")?;
        let leaf = ca.leaf(&["localhost", "127.0.0.1", "kubernetes.default.svc.cluster.local"])?;
        write_file(dir, "apiserver.crt", &leaf.cert_pem)?;
        write_file(dir, "apiserver.key", &leaf.key_pem)?;
        let tls = crate::serve::tls_config(&leaf.cert_pem, &leaf.key_pem)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changes: broadcast::channel(4096).0,
            faults: watch::channel(Faults::default()).0,
            requests: Mutex::new(HashMap::new()),
            watching: Mutex::new(HashMap::new()),
        });
        let router = Router::new()
            .route("/version", get(version))
            .route("/api", get(discovery))
            .route("/apis", get(discovery))
            .route("/api/v1", get(discovery))
            .route("/apis/authentication.k8s.io/v1", get(discovery))
            .route("/api/v1/pods", get(pods_all))
            .route("/api/v1/namespaces/{ns}/pods", get(pods_in_ns))
            .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
            .route("/api/v1/nodes", get(nodes_all))
            .route("/api/v1/nodes/{name}", get(get_node))
            .route("/api/v1/nodes/{name}/status", get(get_node).patch(patch_node_status))
            .route("/apis/events.k8s.io/v1", get(discovery))
            .route("/apis/events.k8s.io/v1/namespaces/{ns}/events", get(list_events).post(create_event))
            .route("/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}", axum::routing::patch(patch_event))
            .route("/apis/coordination.k8s.io/v1", get(discovery))
            .route("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", axum::routing::post(create_lease))
            .route("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}", get(get_lease).put(replace_lease))
            .route("/apis/authentication.k8s.io/v1/tokenreviews", axum::routing::post(create_token_review))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(shared.clone(), auth_and_faults))
            .with_state(shared.clone());
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(crate::serve::serve_tls(listener, router, tls, stop_rx));
        let server =
            Self { addr, shared, ca_pem: ca.cert_pem(), dir: dir.to_path_buf(), _stop: Arc::new(StopOnDrop(stop)) };
        write_file(dir, "ca.crt", &server.ca_pem)?;
        write_file(dir, "token", TOKEN)?;
        server.write_kubeconfig()?;
        Ok(server)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A directory laid out like a pod's service-account mount: `token` and `ca.crt`.
    pub fn service_account_dir(&self) -> &Path {
        &self.dir
    }

    /// The kubeconfig path written at start (for agents run as processes).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn write_kubeconfig(&self) -> std::io::Result<PathBuf> {
        let config = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {
                "server": format!("https://127.0.0.1:{}", self.addr.port()),
                "certificate-authority": self.dir.join("ca.crt"),
            }}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        });
        write_file(&self.dir, "kubeconfig", &config.to_string())
    }

    /// A kube client configuration for in-process agents (no process-wide `KUBECONFIG`).
    pub fn kube_config(&self) -> kube::Config {
        let mut config =
            kube::Config::new(format!("https://127.0.0.1:{}", self.addr.port()).parse().unwrap_or_default());
        config.root_cert_file = Some(self.dir.join("ca.crt"));
        config.auth_info.token_file = Some(self.dir.join("token").display().to_string());
        config.default_namespace = "kubenurse".into();
        // Show a failing server at once instead of retrying it for minutes.
        config.default_retry = false;
        config
    }

    /// Creates or replaces a pod.
    pub fn apply_pod(&self, mut pod: Pod) {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        pod.metadata.namespace = Some(ns.clone());
        let labels = pod.metadata.labels.clone();
        let existed =
            self.shared.store.lock().unwrap_or_else(|p| p.into_inner()).pods.contains_key(&(ns.clone(), name.clone()));
        let event = if existed { "MODIFIED" } else { "ADDED" };
        self.shared.commit(
            Kind::Pods,
            event,
            |store, rv| {
                pod.metadata.resource_version = Some(rv);
                store.pods.insert((ns.clone(), name), pod.clone());
                Some(pod)
            },
            Some(ns.clone()),
            labels,
        );
    }

    /// Deletes a pod; returns whether it existed.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_string(), name.to_string());
        let labels = self
            .shared
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pods
            .get(&key)
            .and_then(|p| p.metadata.labels.clone());
        let mut found = false;
        self.shared.commit(
            Kind::Pods,
            "DELETED",
            |store, rv| {
                let mut pod = store.pods.remove(&key)?;
                found = true;
                pod.metadata.resource_version = Some(rv);
                Some(pod)
            },
            Some(namespace.to_string()),
            labels,
        );
        found
    }

    /// Creates or replaces a node.
    pub fn apply_node(&self, mut node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let labels = node.metadata.labels.clone();
        let existed = self.shared.store.lock().unwrap_or_else(|p| p.into_inner()).nodes.contains_key(&name);
        let event = if existed { "MODIFIED" } else { "ADDED" };
        self.shared.commit(
            Kind::Nodes,
            event,
            |store, rv| {
                node.metadata.resource_version = Some(rv);
                store.nodes.insert(name, node.clone());
                Some(node)
            },
            None,
            labels,
        );
    }

    /// Deletes a node; returns whether it existed.
    pub fn delete_node(&self, name: &str) -> bool {
        let mut found = false;
        self.shared.commit(
            Kind::Nodes,
            "DELETED",
            |store, rv| {
                let mut node = store.nodes.remove(name)?;
                found = true;
                node.metadata.resource_version = Some(rv);
                Some(node)
            },
            None,
            None,
        );
        found
    }

    /// A node as stored now.
    pub fn node(&self, name: &str) -> Option<Node> {
        self.shared.store.lock().unwrap_or_else(|p| p.into_inner()).nodes.get(name).cloned()
    }

    /// The events.k8s.io/v1 Events of `namespace`, oldest first.
    pub fn events(&self, namespace: &str) -> Vec<Event> {
        let store = self.shared.store.lock().unwrap_or_else(|p| p.into_inner());
        let mut events: Vec<Event> =
            store.events.iter().filter(|((n, _), _)| n == namespace).map(|(_, e)| e.clone()).collect();
        events.sort_by_key(|e| e.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok()));
        events
    }

    /// A Lease as stored now.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Lease> {
        self.shared
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .leases
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Cordons (or uncordons) a node, as `kubectl cordon` does.
    pub fn cordon(&self, name: &str, cordoned: bool) -> bool {
        let node = self.shared.store.lock().unwrap_or_else(|p| p.into_inner()).nodes.get(name).cloned();
        let Some(mut node) = node else { return false };
        let spec = node.spec.get_or_insert_with(NodeSpec::default);
        spec.unschedulable = Some(cordoned);
        self.apply_node(node);
        true
    }

    /// Issues a service-account token (as the kubelet's projection or `kubectl create token`).
    pub fn issue_token(&self, request: &TokenRequest) -> String {
        self.shared.store.lock().unwrap_or_else(|p| p.into_inner()).tokens.issue(request)
    }

    /// Invalidates a token; returns whether it was issued here.
    pub fn revoke_token(&self, token: &str) -> bool {
        self.shared.store.lock().unwrap_or_else(|p| p.into_inner()).tokens.revoke(token)
    }

    /// Whether reviews carry the `node-name` extra (on by default, as kube-apiserver ≥ 1.30;
    /// off, a reviewer must look the pod up to learn its node).
    pub fn set_node_extra(&self, on: bool) {
        self.shared.store.lock().unwrap_or_else(|p| p.into_inner()).tokens.without_node_extra = !on;
    }

    /// Current faults.
    pub fn faults(&self) -> Faults {
        *self.shared.faults.borrow()
    }

    /// Sets the faults (slow answers, failing requests).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.send_replace(faults);
    }

    /// How many requests of a kind were served: `list pods`, `watch nodes`, `watch nodes by
    /// name` (a `metadata.name` field selector), `version`, …; and how many watch events were
    /// sent: `events nodes`, `events nodes by name`, `events pods`.
    pub fn requests(&self, what: &str) -> u64 {
        self.shared.requests.lock().unwrap_or_else(|p| p.into_inner()).get(what).copied().unwrap_or(0)
    }

    /// How many watches of a kind (`pods`, `nodes`, `nodes by name`) are open now.
    pub fn open_watches(&self, what: &str) -> u64 {
        self.shared.watching.lock().unwrap_or_else(|p| p.into_inner()).get(what).copied().unwrap_or(0)
    }
}
