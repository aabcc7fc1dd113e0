//! The HTTP side of the fake API server: authentication and faults, `/version`, list and
//! watch of pods and nodes (resource versions, label selectors, the `metadata.name` field
//! selector, `410 Gone`), get.

use super::*;

pub(super) fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

pub(super) fn json_response(value: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListParams {
    label_selector: Option<String>,
    field_selector: Option<String>,
    resource_version: Option<String>,
    watch: Option<String>,
    timeout_seconds: Option<u64>,
}

impl ListParams {
    fn is_watch(&self) -> bool {
        matches!(self.watch.as_deref(), Some("true") | Some("1"))
    }
}

pub(super) async fn auth_and_faults(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
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

pub(super) async fn version(State(shared): State<Arc<Shared>>) -> Response {
    shared.count("version".into());
    json_response(json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "gitCommit": "fake",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
        "compiler": "gc", "platform": "linux/amd64"
    }))
}

/// The object name a field selector asks for: `metadata.name=X` (or `==`), the one field every
/// resource supports; anything else is refused, as kube-apiserver refuses unknown fields.
fn name_of_field_selector(selector: &str) -> Result<Option<String>, String> {
    if selector.trim().is_empty() {
        return Ok(None);
    }
    let (field, value) = selector
        .split_once("==")
        .or_else(|| selector.split_once('='))
        .ok_or_else(|| format!("invalid field selector {selector:?}"))?;
    if field.trim() != "metadata.name" || value.contains(',') {
        return Err(format!("field label not supported: {}", field.trim()));
    }
    Ok(Some(value.trim().to_string()))
}

pub(super) async fn list_or_watch(
    shared: Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    params: ListParams,
) -> Response {
    let selector = params.label_selector.clone().unwrap_or_default();
    if let Err(e) = selector_matches(&selector, &BTreeMap::new()) {
        return status(StatusCode::BAD_REQUEST, "BadRequest", &e);
    }
    let name = match name_of_field_selector(params.field_selector.as_deref().unwrap_or_default()) {
        Ok(name) => name,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let what = match (kind, &name) {
        (Kind::Pods, None) => "pods",
        (Kind::Nodes, None) => "nodes",
        // Counted apart: one object's watch costs the API server one object's events.
        (Kind::Pods, Some(_)) => "pods by name",
        (Kind::Nodes, Some(_)) => "nodes by name",
    };
    if params.is_watch() {
        shared.count(format!("watch {what}"));
        let open = shared.watching(what.to_string());
        return watch_stream(shared, kind, namespace, selector, name, params, open);
    }
    shared.count(format!("list {what}"));
    let store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
    let keep = |ns: Option<&str>, object: Option<&str>, labels: Option<&BTreeMap<String, String>>| {
        namespace.as_deref().is_none_or(|want| ns == Some(want))
            && name.as_deref().is_none_or(|want| object == Some(want))
            && selector_matches(&selector, labels.unwrap_or(&BTreeMap::new())).unwrap_or(false)
    };
    let items: Vec<Value> = match kind {
        Kind::Pods => store
            .pods
            .values()
            .filter(|p| keep(p.metadata.namespace.as_deref(), p.metadata.name.as_deref(), p.metadata.labels.as_ref()))
            .filter_map(|p| serde_json::to_value(p).ok())
            .collect(),
        Kind::Nodes => store
            .nodes
            .values()
            .filter(|n| keep(None, n.metadata.name.as_deref(), n.metadata.labels.as_ref()))
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

pub(super) fn watch_stream(
    shared: Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    selector: String,
    name: Option<String>,
    params: ListParams,
    open: OpenWatch,
) -> Response {
    let wanted = move |c: &Change| {
        c.kind == kind
            && namespace.as_deref().is_none_or(|ns| c.namespace.as_deref() == Some(ns))
            && name.as_deref().is_none_or(|want| c.object["metadata"]["name"].as_str() == Some(want))
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
        let open = open;
        let line = |c: &Change| format!("{}\n", json!({"type": c.event, "object": c.object}));
        if gone {
            let err = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410}});
            let _ = tx.send(Ok(format!("{err}\n"))).await;
            return;
        }
        let mut last = 0;
        let events = format!("events {}", open.what);
        for c in backlog.iter().filter(|c| wanted(c)) {
            last = last.max(c.rv);
            shared.count(events.clone());
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
                        shared.count(events.clone());
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

pub(super) fn kind_rv(rv: Option<&str>) -> u64 {
    rv.and_then(|v| v.parse().ok()).unwrap_or(0)
}

pub(super) fn change_of<T: serde::Serialize>(
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

pub(super) async fn pods_in_ns(
    State(s): State<Arc<Shared>>,
    UrlPath(ns): UrlPath<String>,
    Query(p): Query<ListParams>,
) -> Response {
    list_or_watch(s, Kind::Pods, Some(ns), p).await
}

pub(super) async fn pods_all(State(s): State<Arc<Shared>>, Query(p): Query<ListParams>) -> Response {
    list_or_watch(s, Kind::Pods, None, p).await
}

pub(super) async fn nodes_all(State(s): State<Arc<Shared>>, Query(p): Query<ListParams>) -> Response {
    list_or_watch(s, Kind::Nodes, None, p).await
}

pub(super) async fn get_pod(State(s): State<Arc<Shared>>, UrlPath((ns, name)): UrlPath<(String, String)>) -> Response {
    s.count("get pod".into());
    let store = s.store.lock().unwrap_or_else(|p| p.into_inner());
    match store.pods.get(&(ns.clone(), name.clone())) {
        Some(p) => json_response(serde_json::to_value(p).unwrap_or(Value::Null)),
        None => status(StatusCode::NOT_FOUND, "NotFound", &format!("pods \"{name}\" not found")),
    }
}

pub(super) async fn get_node(State(s): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    s.count("get node".into());
    let store = s.store.lock().unwrap_or_else(|p| p.into_inner());
    match store.nodes.get(&name) {
        Some(n) => json_response(serde_json::to_value(n).unwrap_or(Value::Null)),
        None => status(StatusCode::NOT_FOUND, "NotFound", &format!("nodes \"{name}\" not found")),
    }
}

pub(super) async fn not_found(req: Request) -> Response {
    status(StatusCode::NOT_FOUND, "NotFound", &format!("the fake API server does not serve {}", req.uri().path()))
}

/// Legacy discovery (`/api`, `/apis`, their resource lists), which `kubectl` reads before it
/// sends anything: what this server serves and nothing more.
pub(super) async fn discovery(req: Request) -> Response {
    let resource = |name: &str, kind: &str, namespaced: bool, verbs: &[&str]| json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced, "kind": kind, "verbs": verbs});
    let group = |name: &str| {
        let gv = format!("{name}/v1");
        json!({"name": name, "versions": [{"groupVersion": gv, "version": "v1"}], "preferredVersion": {"groupVersion": gv, "version": "v1"}})
    };
    let list = |gv: &str, resources: Vec<Value>| json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources});
    let value = match req.uri().path() {
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            group("authentication.k8s.io"), group("events.k8s.io"), group("coordination.k8s.io"),
        ]}),
        "/api/v1" => list(
            "v1",
            vec![
                resource("pods", "Pod", true, &["get", "list", "watch"]),
                resource("nodes", "Node", false, &["get", "list", "watch"]),
                resource("nodes/status", "Node", false, &["get", "patch"]),
            ],
        ),
        "/apis/events.k8s.io/v1" => {
            list("events.k8s.io/v1", vec![resource("events", "Event", true, &["create", "list", "patch"])])
        }
        "/apis/coordination.k8s.io/v1" => {
            list("coordination.k8s.io/v1", vec![resource("leases", "Lease", true, &["create", "get", "update"])])
        }
        _ => list("authentication.k8s.io/v1", vec![resource("tokenreviews", "TokenReview", false, &["create"])]),
    };
    json_response(value)
}
