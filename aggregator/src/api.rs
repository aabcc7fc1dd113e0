//! The HTTP API (JSON), merged `/alive`, probes and `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kubenurse_common::duration::parse_go_duration;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::auth::AuthMode;
use crate::metrics::AggregatorMetrics;
use crate::owner::StateHandle;
use crate::views::{self, Stat};

/// Longest any request may take before it is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Expensive answers (matrix, nodes, node detail, `/metrics`) built at once; more wait no
/// queue: they get 503 with `Retry-After`, so a crowd of dashboards cannot pile work up.
pub const MAX_EXPENSIVE_QUERIES: usize = 4;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The state owner.
    pub state: StateHandle,
    /// Metrics to encode.
    pub metrics: Arc<AggregatorMetrics>,
    /// False once shutdown began.
    pub ready: Arc<AtomicBool>,
    /// Permits for expensive answers.
    pub expensive: Arc<Semaphore>,
    /// How streams are authenticated (shown in the status).
    pub auth: AuthMode,
}

impl ApiState {
    /// Handler state over `state` and `metrics`, ready, with [`MAX_EXPENSIVE_QUERIES`] permits.
    pub fn new(state: StateHandle, metrics: Arc<AggregatorMetrics>, ready: Arc<AtomicBool>, auth: AuthMode) -> Self {
        Self { state, metrics, ready, expensive: Arc::new(Semaphore::new(MAX_EXPENSIVE_QUERIES)), auth }
    }
}

fn busy() -> Response {
    let body = Json(json!({"error": "too many expensive queries at once, retry shortly"}));
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], body).into_response()
}

/// Takes a permit for an expensive answer, or says why not.
macro_rules! expensive {
    ($api:expr) => {
        match $api.expensive.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => return busy(),
        }
    };
}

async fn with_timeout(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "request timed out"}))).into_response(),
    }
}

/// The router.
pub fn router(api: ApiState) -> Router {
    Router::new()
        .route("/", get(heatmap_page))
        .route("/api/v1/matrix", get(matrix))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{name}", get(node))
        .route("/api/v1/suspects", get(suspects))
        .route("/api/v1/coverage", get(coverage))
        .route("/api/v1/status", get(status))
        .route("/alive", get(alive))
        .route("/healthz", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(with_timeout))
        .with_state(api)
}

/// The heatmap page: one self-contained file (no CDN), compiled into the binary.
const HEATMAP_PAGE: &str = include_str!("web/index.html");

async fn heatmap_page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], HEATMAP_PAGE)
        .into_response()
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "state owner not running"}))).into_response()
}

async fn matrix(State(api): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let _permit = expensive!(api);
    let stat = match q.get("stat").map(String::as_str) {
        None => Stat::P99,
        Some(s) => match Stat::parse(s) {
            Some(stat) => stat,
            None => return bad_request(format!("stat={s:?}: expected p50, p90, p99 or error_ratio")),
        },
    };
    let window = match q.get("window") {
        None => None,
        Some(w) => match parse_go_duration(w) {
            Ok(d) if !d.is_zero() => Some(d.as_micros() as i64),
            Ok(_) => return bad_request("window must be greater than zero".into()),
            Err(e) => return bad_request(format!("window={w:?}: {e}")),
        },
    };
    let result = api
        .state
        .query(move |s, now| {
            let kept = s.settings.window_micros;
            match window {
                Some(w) if w > kept => Err(format!("window exceeds the kept {}s", kept / 1_000_000)),
                w => Ok(crate::views::matrix_bytes(s, now, w.unwrap_or(kept), stat)),
            }
        })
        .await;
    match result {
        Some(Ok(bytes)) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Some(Err(e)) => bad_request(e),
        None => unavailable(),
    }
}

async fn nodes(State(api): State<ApiState>) -> Response {
    let _permit = expensive!(api);
    let v = api
        .state
        .query(|s, now| {
            let nodes: Vec<Value> = s.nodes.iter().map(|(name, n)| views::node_summary(s, name, n, now)).collect();
            json!({ "nodes": nodes })
        })
        .await;
    v.map_or_else(unavailable, |v| Json(v).into_response())
}

async fn node(State(api): State<ApiState>, Path(name): Path<String>) -> Response {
    let _permit = expensive!(api);
    let lookup = name.clone();
    match api.state.query(move |s, now| views::node_detail(s, &lookup, now)).await {
        Some(Some(v)) => Json(v).into_response(),
        Some(None) => (StatusCode::NOT_FOUND, Json(json!({"error": format!("unknown node {name:?}")}))).into_response(),
        None => unavailable(),
    }
}

async fn suspects(State(api): State<ApiState>) -> Response {
    let v = api.state.query(|s, _| json!({ "suspects": s.suspects })).await;
    v.map_or_else(unavailable, |v| Json(v).into_response())
}

async fn status(State(api): State<ApiState>) -> Response {
    let auth = api.auth;
    let v = api.state.query(move |s, _| {
        let mut v = views::status(s);
        v["auth"] = json!(auth.as_str());
        v
    });
    v.await.map_or_else(unavailable, |v| Json(v).into_response())
}

async fn coverage(State(api): State<ApiState>) -> Response {
    api.state.query(|s, _| views::coverage(s)).await.map_or_else(unavailable, |v| Json(v).into_response())
}

async fn alive(State(api): State<ApiState>) -> Response {
    match api.state.query(views::alive).await {
        Some((true, v)) => Json(v).into_response(),
        Some((false, v)) => (StatusCode::INTERNAL_SERVER_ERROR, Json(v)).into_response(),
        None => unavailable(),
    }
}

async fn ready(State(api): State<ApiState>) -> StatusCode {
    if api.ready.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn metrics(State(api): State<ApiState>) -> Response {
    let _permit = expensive!(api);
    let m = api.metrics.clone();
    if api.state.query(move |s, now| m.refresh(s, now)).await.is_none() {
        return unavailable();
    }
    kubenurse_common::metrics::response(api.metrics.registry())
}
