//! What a controller writes, as the real API server takes it: `PATCH nodes/{name}/status`
//! (strategic merge, where `conditions` merge by `type` and other conditions survive, or JSON
//! merge, where the list is replaced; anything else is 415), events.k8s.io/v1 Events (create
//! with the fields the real server requires, merge-patch for series, list) and
//! coordination.k8s.io/v1 Leases (create, get, replace with optimistic concurrency: a stale
//! `resourceVersion` is 409).

use axum::body::Bytes;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;

use super::*;

const STRATEGIC: &str = "application/strategic-merge-patch+json";
const MERGE: &str = "application/merge-patch+json";

/// RFC 7386 JSON merge patch: objects merge, `null` deletes, anything else replaces.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Strategic merge as the API server applies it to Node status: like [`merge_patch`], except
/// that the `conditions` and `addresses` lists merge by their `type` (the patch merge key in
/// the Kubernetes schema), so a patch naming one condition leaves the others alone.
pub(super) fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match (k.as_str(), t.get_mut(k), v) {
                    (_, _, Value::Null) => {
                        t.remove(k);
                    }
                    ("conditions" | "addresses", Some(Value::Array(items)), Value::Array(updates)) => {
                        for u in updates {
                            match items.iter_mut().find(|i| i.get("type").is_some() && i.get("type") == u.get("type")) {
                                Some(existing) => strategic_merge(existing, u),
                                None => items.push(u.clone()),
                            }
                        }
                    }
                    (_, Some(existing), _) => strategic_merge(existing, v),
                    (_, None, _) => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn content_type(headers: &HeaderMap) -> &str {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").split(';').next().unwrap_or("")
}

fn unsupported(ct: &str) -> Response {
    status(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        &format!("the body of the request was in an unknown format - accepted media types include: {STRATEGIC}, {MERGE} (got {ct:?})"),
    )
}

fn invalid(kind: &str, name: &str, problems: &[String]) -> Response {
    status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &format!("{kind} {name:?} is invalid: {}", problems.join(", ")))
}

fn bad_body(e: impl std::fmt::Display) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", &format!("the request body is not valid JSON: {e}"))
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// `PATCH /api/v1/nodes/{name}/status`: only `status` changes; watchers see MODIFIED.
pub(super) async fn patch_node_status(
    State(s): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.count("patch node status".into());
    let ct = content_type(&headers);
    let strategic = match ct {
        STRATEGIC => true,
        MERGE => false,
        other => return unsupported(other),
    };
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_body(e),
    };
    let current = s.store.lock().unwrap_or_else(|p| p.into_inner()).nodes.get(&name).cloned();
    let Some(current) = current else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("nodes \"{name}\" not found"));
    };
    let mut merged = serde_json::to_value(&current).unwrap_or(Value::Null);
    let mut status_patch = json!({ "status": patch.get("status").cloned().unwrap_or(Value::Null) });
    if status_patch["status"].is_null() {
        status_patch = json!({});
    }
    if strategic {
        strategic_merge(&mut merged, &status_patch);
    } else {
        merge_patch(&mut merged, &status_patch);
    }
    let node: Node = match serde_json::from_value(merged) {
        Ok(n) => n,
        Err(e) => return invalid("Node", &name, &[e.to_string()]),
    };
    let labels = node.metadata.labels.clone();
    let stored = s.commit(
        Kind::Nodes,
        "MODIFIED",
        |store, rv| {
            let mut node = node;
            node.metadata.resource_version = Some(rv);
            store.nodes.insert(name.clone(), node.clone());
            Some(node)
        },
        None,
        labels,
    );
    json_response(stored)
}

/// What the real server requires of an events.k8s.io/v1 Event.
fn event_problems(e: &Event) -> Vec<String> {
    let mut problems = Vec::new();
    let mut need = |ok: bool, field: &str| {
        if !ok {
            problems.push(format!("{field}: Required value"));
        }
    };
    need(e.metadata.name.is_some() || e.metadata.generate_name.is_some(), "metadata.name");
    need(e.event_time.is_some(), "eventTime");
    need(e.reporting_controller.as_deref().is_some_and(|c| !c.is_empty()), "reportingController");
    need(e.reporting_instance.as_deref().is_some_and(|c| !c.is_empty()), "reportingInstance");
    need(e.action.as_deref().is_some_and(|c| !c.is_empty()), "action");
    need(e.reason.as_deref().is_some_and(|c| !c.is_empty()), "reason");
    need(e.regarding.is_some(), "regarding");
    if !matches!(e.type_.as_deref(), Some("Normal" | "Warning")) {
        problems.push(format!("type: Unsupported value: {:?}: supported values: \"Normal\", \"Warning\"", e.type_));
    }
    if e.note.as_deref().is_some_and(|n| n.len() > 1024) {
        problems.push("note: Too long: may not be more than 1024 bytes".into());
    }
    problems
}

fn stamp(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, ns: &str, rv: u64) {
    meta.namespace = Some(ns.to_string());
    meta.resource_version = Some(rv.to_string());
    if meta.uid.is_none() {
        meta.uid = Some(format!("fake-{rv:012}"));
        meta.creation_timestamp = serde_json::from_value(json!(now_rfc3339())).ok();
    }
}

/// `POST /apis/events.k8s.io/v1/namespaces/{ns}/events`.
pub(super) async fn create_event(State(s): State<Arc<Shared>>, UrlPath(ns): UrlPath<String>, body: Bytes) -> Response {
    s.count("create event".into());
    let mut event: Event = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return bad_body(e),
    };
    let problems = event_problems(&event);
    let mut store = s.store.lock().unwrap_or_else(|p| p.into_inner());
    store.rv += 1;
    let rv = store.rv;
    let name = match (&event.metadata.name, &event.metadata.generate_name) {
        (Some(n), _) => n.clone(),
        (None, Some(prefix)) => format!("{prefix}{rv:05x}"),
        (None, None) => String::new(),
    };
    if !problems.is_empty() {
        return invalid("Event.events.k8s.io", &name, &problems);
    }
    if event.metadata.namespace.as_deref().is_some_and(|n| n != ns) {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "the namespace of the object does not match the request");
    }
    if store.events.contains_key(&(ns.clone(), name.clone())) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("events.events.k8s.io \"{name}\" already exists"),
        );
    }
    event.metadata.name = Some(name.clone());
    stamp(&mut event.metadata, &ns, rv);
    store.events.insert((ns, name), event.clone());
    (StatusCode::CREATED, json_response(serde_json::to_value(event).unwrap_or(Value::Null))).into_response()
}

/// `PATCH /apis/events.k8s.io/v1/namespaces/{ns}/events/{name}` (merge patch: a series update).
pub(super) async fn patch_event(
    State(s): State<Arc<Shared>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.count("patch event".into());
    let ct = content_type(&headers);
    if ct != MERGE && ct != STRATEGIC {
        return unsupported(ct);
    }
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_body(e),
    };
    let mut store = s.store.lock().unwrap_or_else(|p| p.into_inner());
    let Some(current) = store.events.get(&(ns.clone(), name.clone())) else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("events.events.k8s.io \"{name}\" not found"));
    };
    let mut merged = serde_json::to_value(current).unwrap_or(Value::Null);
    merge_patch(&mut merged, &patch);
    let mut event: Event = match serde_json::from_value(merged) {
        Ok(e) => e,
        Err(e) => return invalid("Event.events.k8s.io", &name, &[e.to_string()]),
    };
    let problems = event_problems(&event);
    if !problems.is_empty() {
        return invalid("Event.events.k8s.io", &name, &problems);
    }
    store.rv += 1;
    let rv = store.rv;
    stamp(&mut event.metadata, &ns, rv);
    store.events.insert((ns, name), event.clone());
    json_response(serde_json::to_value(event).unwrap_or(Value::Null))
}

/// `GET /apis/events.k8s.io/v1/namespaces/{ns}/events`.
pub(super) async fn list_events(State(s): State<Arc<Shared>>, UrlPath(ns): UrlPath<String>) -> Response {
    s.count("list events".into());
    let store = s.store.lock().unwrap_or_else(|p| p.into_inner());
    let items: Vec<&Event> = store.events.iter().filter(|((n, _), _)| *n == ns).map(|(_, e)| e).collect();
    json_response(json!({
        "kind": "EventList", "apiVersion": "events.k8s.io/v1",
        "metadata": {"resourceVersion": store.rv.to_string()}, "items": items,
    }))
}

fn lease_not_found(name: &str) -> Response {
    status(StatusCode::NOT_FOUND, "NotFound", &format!("leases.coordination.k8s.io \"{name}\" not found"))
}

/// `GET /apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}`.
pub(super) async fn get_lease(
    State(s): State<Arc<Shared>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    s.count("get lease".into());
    let store = s.store.lock().unwrap_or_else(|p| p.into_inner());
    match store.leases.get(&(ns, name.clone())) {
        Some(l) => json_response(serde_json::to_value(l).unwrap_or(Value::Null)),
        None => lease_not_found(&name),
    }
}

/// `POST /apis/coordination.k8s.io/v1/namespaces/{ns}/leases`: 409 when it exists.
pub(super) async fn create_lease(State(s): State<Arc<Shared>>, UrlPath(ns): UrlPath<String>, body: Bytes) -> Response {
    s.count("create lease".into());
    let mut lease: Lease = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => return bad_body(e),
    };
    let Some(name) = lease.metadata.name.clone() else {
        return invalid("Lease.coordination.k8s.io", "", &["metadata.name: Required value".into()]);
    };
    let mut store = s.store.lock().unwrap_or_else(|p| p.into_inner());
    if store.leases.contains_key(&(ns.clone(), name.clone())) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("leases.coordination.k8s.io \"{name}\" already exists"),
        );
    }
    store.rv += 1;
    let rv = store.rv;
    stamp(&mut lease.metadata, &ns, rv);
    store.leases.insert((ns, name), lease.clone());
    (StatusCode::CREATED, json_response(serde_json::to_value(lease).unwrap_or(Value::Null))).into_response()
}

/// `PUT /apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}`: the body's
/// `resourceVersion` must be the stored one (else 409, as two replicas racing get).
pub(super) async fn replace_lease(
    State(s): State<Arc<Shared>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    s.count("replace lease".into());
    let mut lease: Lease = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => return bad_body(e),
    };
    let mut store = s.store.lock().unwrap_or_else(|p| p.into_inner());
    let Some(current) = store.leases.get(&(ns.clone(), name.clone())) else { return lease_not_found(&name) };
    if lease.metadata.resource_version.is_some() && lease.metadata.resource_version != current.metadata.resource_version
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    lease.metadata.uid = current.metadata.uid.clone();
    lease.metadata.creation_timestamp = current.metadata.creation_timestamp.clone();
    store.rv += 1;
    let rv = store.rv;
    stamp(&mut lease.metadata, &ns, rv);
    store.leases.insert((ns, name), lease.clone());
    json_response(serde_json::to_value(lease).unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_keeps_other_conditions_and_merge_patch_replaces_them() {
        let node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "KubenurseNetworkProblem", "status": "False", "reason": "A"}
        ]}});
        let patch = json!({"status": {"conditions": [{"type": "KubenurseNetworkProblem", "status": "True"}]}});
        let mut strategic = node.clone();
        strategic_merge(&mut strategic, &patch);
        assert_eq!(
            strategic["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "KubenurseNetworkProblem", "status": "True", "reason": "A"}])
        );
        let mut merged = node;
        merge_patch(&mut merged, &patch);
        assert_eq!(merged["status"]["conditions"], json!([{"type": "KubenurseNetworkProblem", "status": "True"}]));
        let mut added = json!({"status": {}});
        strategic_merge(&mut added, &patch);
        assert_eq!(added["status"]["conditions"][0]["status"], "True");
    }
}
