//! A fake Kubernetes API server that speaks the real wire format to the agent's real kube
//! client: HTTPS with its own CA, bearer tokens (401 otherwise), `/version`, pods and nodes
//! with list, get and watch (resourceVersion, label selectors, `410 Gone` for a version that
//! is too old), k8s-openapi objects. Tests change pods and nodes while agents run, and can make
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
use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod, PodSpec, PodStatus, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

use crate::pki::{write_file, TestCa};

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
}

impl Shared {
    fn count(&self, what: String) {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry(what).or_default() += 1;
    }
}

/// A running fake API server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    ca_pem: String,
    dir: PathBuf,
    stop: watch::Sender<bool>,
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn json_response(value: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

/// Equality-based selectors (`a=b,c!=d,e,!f`), written independently of the agent's parser.
fn selector_matches(selector: &str, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ok = if let Some((k, v)) = part.split_once("!=") {
            labels.get(k.trim()).map(String::as_str) != Some(v.trim())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            labels.get(k.trim()).map(String::as_str) == Some(v.trim())
        } else if let Some(k) = part.strip_prefix('!') {
            !labels.contains_key(k.trim())
        } else if part.contains(' ') || part.contains('(') {
            return Err(format!("unsupported selector {part:?} in the fake API server"));
        } else {
            labels.contains_key(part)
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    label_selector: Option<String>,
    resource_version: Option<String>,
    watch: Option<String>,
    timeout_seconds: Option<u64>,
}

impl ListParams {
    fn is_watch(&self) -> bool {
        matches!(self.watch.as_deref(), Some("true") | Some("1"))
    }
}

async fn auth_and_faults(State(shared): State<Arc<Shared>>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let faults = *shared.faults.borrow();
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    let expected = format!("Bearer {TOKEN}");
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        shared.count("unauthorized".into());
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    if faults.failing {
        shared.count("failed".into());
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "fake API server is failing (test fault)",
        );
    }
    next.run(req).await
}

async fn version(State(shared): State<Arc<Shared>>) -> Response {
    shared.count("version".into());
    json_response(json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "gitCommit": "fake",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
        "compiler": "gc", "platform": "linux/amd64"
    }))
}

async fn list_or_watch(shared: Arc<Shared>, kind: Kind, namespace: Option<String>, params: ListParams) -> Response {
    let selector = params.label_selector.clone().unwrap_or_default();
    if let Err(e) = selector_matches(&selector, &BTreeMap::new()) {
        return status(StatusCode::BAD_REQUEST, "BadRequest", &e);
    }
    let what = match kind {
        Kind::Pods => "pods",
        Kind::Nodes => "nodes",
    };
    if params.is_watch() {
        shared.count(format!("watch {what}"));
        return watch_stream(shared, kind, namespace, selector, params);
    }
    shared.count(format!("list {what}"));
    let store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
    let keep = |ns: Option<&str>, labels: Option<&BTreeMap<String, String>>| {
        namespace.as_deref().is_none_or(|want| ns == Some(want))
            && selector_matches(&selector, labels.unwrap_or(&BTreeMap::new())).unwrap_or(false)
    };
    let items: Vec<Value> = match kind {
        Kind::Pods => store
            .pods
            .values()
            .filter(|p| keep(p.metadata.namespace.as_deref(), p.metadata.labels.as_ref()))
            .filter_map(|p| serde_json::to_value(p).ok())
            .collect(),
        Kind::Nodes => store
            .nodes
            .values()
            .filter(|n| keep(None, n.metadata.labels.as_ref()))
            .filter_map(|n| serde_json::to_value(n).ok())
            .collect(),
    };
    let list_kind = if kind == Kind::Pods { "PodList" } else { "NodeList" };
    json_response(json!({
        "kind": list_kind, "apiVersion": "v1",
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    }))
}

fn watch_stream(
    shared: Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    selector: String,
    params: ListParams,
) -> Response {
    let wanted = move |c: &Change| {
        c.kind == kind
            && namespace.as_deref().is_none_or(|ns| c.namespace.as_deref() == Some(ns))
            && selector_matches(&selector, &c.labels).unwrap_or(false)
    };
    let (tx, rx) = mpsc::channel::<Result<String, std::convert::Infallible>>(256);
    let (backlog, mut live, gone) = {
        let store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
        let live = shared.changes.subscribe();
        let since: u64 = params.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
        if since == 0 {
            // "any version": the current objects as ADDED events.
            let mut added = Vec::new();
            for p in store.pods.values() {
                added.push(change_of(
                    kind_rv(p.metadata.resource_version.as_deref()),
                    Kind::Pods,
                    p.metadata.namespace.clone(),
                    p.metadata.labels.clone(),
                    "ADDED",
                    p,
                ));
            }
            for n in store.nodes.values() {
                added.push(change_of(
                    kind_rv(n.metadata.resource_version.as_deref()),
                    Kind::Nodes,
                    None,
                    n.metadata.labels.clone(),
                    "ADDED",
                    n,
                ));
            }
            (added, live, false)
        } else if since < store.compacted {
            (Vec::new(), live, true)
        } else {
            (store.history.iter().filter(|c| c.rv > since).cloned().collect(), live, false)
        }
    };
    let mut faults = shared.faults.subscribe();
    let timeout = Duration::from_secs(params.timeout_seconds.unwrap_or(300).min(600));
    tokio::spawn(async move {
        let line = |c: &Change| format!("{}\n", json!({"type": c.event, "object": c.object}));
        if gone {
            let err = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410}});
            let _ = tx.send(Ok(format!("{err}\n"))).await;
            return;
        }
        let mut last = 0;
        for c in backlog.iter().filter(|c| wanted(c)) {
            last = last.max(c.rv);
            if tx.send(Ok(line(c))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                changed = faults.changed() => {
                    if changed.is_err() || faults.borrow().failing {
                        return;
                    }
                }
                next = live.recv() => match next {
                    Ok(c) if c.rv > last && wanted(&c) => {
                        last = c.rv;
                        if tx.send(Ok(line(&c))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Too slow a reader, or the server is gone: end the watch, the client re-watches.
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "building watch response"))
}

fn kind_rv(rv: Option<&str>) -> u64 {
    rv.and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn change_of<T: serde::Serialize>(
    rv: u64,
    kind: Kind,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    event: &'static str,
    object: &T,
) -> Change {
    Change {
        rv,
        kind,
        namespace,
        labels: labels.unwrap_or_default(),
        event,
        object: serde_json::to_value(object).unwrap_or(Value::Null),
    }
}

async fn pods_in_ns(
    State(s): State<Arc<Shared>>,
    UrlPath(ns): UrlPath<String>,
    Query(p): Query<ListParams>,
) -> Response {
    list_or_watch(s, Kind::Pods, Some(ns), p).await
}

async fn pods_all(State(s): State<Arc<Shared>>, Query(p): Query<ListParams>) -> Response {
    list_or_watch(s, Kind::Pods, None, p).await
}

async fn nodes_all(State(s): State<Arc<Shared>>, Query(p): Query<ListParams>) -> Response {
    list_or_watch(s, Kind::Nodes, None, p).await
}

async fn get_pod(State(s): State<Arc<Shared>>, UrlPath((ns, name)): UrlPath<(String, String)>) -> Response {
    s.count("get pod".into());
    let store = s.store.lock().unwrap_or_else(|p| p.into_inner());
    match store.pods.get(&(ns.clone(), name.clone())) {
        Some(p) => json_response(serde_json::to_value(p).unwrap_or(Value::Null)),
        None => status(StatusCode::NOT_FOUND, "NotFound", &format!("pods \"{name}\" not found")),
    }
}

async fn get_node(State(s): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    s.count("get node".into());
    let store = s.store.lock().unwrap_or_else(|p| p.into_inner());
    match store.nodes.get(&name) {
        Some(n) => json_response(serde_json::to_value(n).unwrap_or(Value::Null)),
        None => status(StatusCode::NOT_FOUND, "NotFound", &format!("nodes \"{name}\" not found")),
    }
}

async fn not_found(req: Request) -> Response {
    status(StatusCode::NOT_FOUND, "NotFound", &format!("the fake API server does not serve {}", req.uri().path()))
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
        });
        let router = Router::new()
            .route("/version", get(version))
            .route("/api/v1/pods", get(pods_all))
            .route("/api/v1/namespaces/{ns}/pods", get(pods_in_ns))
            .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
            .route("/api/v1/nodes", get(nodes_all))
            .route("/api/v1/nodes/{name}", get(get_node))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(shared.clone(), auth_and_faults))
            .with_state(shared.clone());
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(crate::serve::serve_tls(listener, router, tls, stop_rx));
        let server = Self { addr, shared, ca_pem: ca.cert_pem(), dir: dir.to_path_buf(), stop };
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

    fn commit<T: serde::Serialize + Clone>(
        &self,
        kind: Kind,
        event: &'static str,
        set_rv: impl FnOnce(&mut Store, String) -> Option<T>,
        namespace: Option<String>,
        labels: Option<BTreeMap<String, String>>,
    ) {
        let mut store = self.shared.store.lock().unwrap_or_else(|p| p.into_inner());
        store.rv += 1;
        let rv = store.rv;
        let Some(object) = set_rv(&mut store, rv.to_string()) else { return };
        let change = change_of(rv, kind, namespace, labels, event, &object);
        store.history.push_back(change.clone());
        while store.history.len() > HISTORY {
            if let Some(old) = store.history.pop_front() {
                store.compacted = old.rv;
            }
        }
        let _ = self.shared.changes.send(change);
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
        self.commit(
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
        self.commit(
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
        self.commit(
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
        self.commit(
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

    /// Cordons (or uncordons) a node, as `kubectl cordon` does.
    pub fn cordon(&self, name: &str, cordoned: bool) -> bool {
        let node = self.shared.store.lock().unwrap_or_else(|p| p.into_inner()).nodes.get(name).cloned();
        let Some(mut node) = node else { return false };
        let spec = node.spec.get_or_insert_with(NodeSpec::default);
        spec.unschedulable = Some(cordoned);
        self.apply_node(node);
        true
    }

    /// Current faults.
    pub fn faults(&self) -> Faults {
        *self.shared.faults.borrow()
    }

    /// Sets the faults (slow answers, failing requests).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.send_replace(faults);
    }

    /// How many requests of a kind were served: `list pods`, `watch nodes`, `version`, …
    pub fn requests(&self, what: &str) -> u64 {
        self.shared.requests.lock().unwrap_or_else(|p| p.into_inner()).get(what).copied().unwrap_or(0)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A Running kubenurse pod on `node` with `ip`, labelled `app.kubernetes.io/name=kubenurse`.
pub fn kubenurse_pod(namespace: &str, name: &str, node: &str, ip: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/name".to_string(), "kubenurse".to_string())])),
            uid: Some(format!("uid-{namespace}-{name}")),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec { node_name: Some(node.into()), ..PodSpec::default() }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            host_ip: Some(ip.into()),
            ..PodStatus::default()
        }),
    }
}

/// A schedulable node in `zone`.
pub fn node(name: &str, zone: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.to_string()),
                ("topology.kubernetes.io/zone".to_string(), zone.to_string()),
            ])),
            uid: Some(format!("uid-node-{name}")),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec::default()),
        status: None,
    }
}

/// The `node.kubernetes.io/unschedulable:NoSchedule` taint.
pub fn unschedulable_taint() -> Taint {
    Taint { key: "node.kubernetes.io/unschedulable".into(), effect: "NoSchedule".into(), ..Taint::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_subset() {
        let labels = BTreeMap::from([("app".to_string(), "kubenurse".to_string())]);
        assert_eq!(selector_matches("app=kubenurse", &labels), Ok(true));
        assert_eq!(selector_matches("app==kubenurse,!x", &labels), Ok(true));
        assert_eq!(selector_matches("app!=kubenurse", &labels), Ok(false));
        assert_eq!(selector_matches("tier", &labels), Ok(false));
        assert!(selector_matches("app in (a)", &labels).is_err());
    }
}
