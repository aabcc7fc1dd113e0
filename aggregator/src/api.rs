//! The HTTP API (JSON), merged `/alive`, probes and `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kubenurse_common::duration::parse_go_duration;
use kubenurse_common::rate::{Rate, TokenBucket};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::auth::AuthMode;
use crate::metrics::AggregatorMetrics;
use crate::owner::StateHandle;
use crate::snapshot::Snapshot;
use crate::views::Stat;

/// Longest any request may take before it is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Expensive answers (matrix, nodes, node detail, `/metrics`) built at once; more wait no
/// queue: they get 503 with `Retry-After`, so a crowd of dashboards cannot pile work up.
pub const MAX_EXPENSIVE_QUERIES: usize = 4;
/// Expensive answers to dashboards and API clients (matrix, nodes, node detail) per second;
/// beyond, 429 with `Retry-After`. Even a shared 1.6 MiB matrix costs a copy per answer: on 2
/// cores, clients looping on it took a third of ingest. 20 a second serves a hundred heatmaps
/// refreshing every 5 s.
pub const DASHBOARD_ANSWERS: Rate = Rate { per_second: 20.0, burst: 20.0 };
/// `/metrics` answers per second, apart from the dashboards' so that no crowd of dashboards
/// fails a Prometheus scrape.
pub const SCRAPE_ANSWERS: Rate = Rate { per_second: 20.0, burst: 20.0 };

/// Why an expensive answer was refused (the `reason` of
/// `kubenurse_aggregator_queries_shed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Every permit taken ([`MAX_EXPENSIVE_QUERIES`]): 503.
    Permits,
    /// Its class's rate spent ([`DASHBOARD_ANSWERS`], [`SCRAPE_ANSWERS`]): 429.
    Rate,
}

impl Shed {
    /// Every reason, so each counter exists from the start.
    pub const ALL: [Shed; 2] = [Self::Permits, Self::Rate];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permits => "permits",
            Self::Rate => "rate",
        }
    }
}

/// Which rate an expensive answer spends.
#[derive(Debug, Clone, Copy)]
enum Class {
    Dashboard,
    Scrape,
}

/// The token buckets of the expensive answers, one per [`Class`].
#[derive(Debug)]
pub struct QueryBudget {
    dashboards: Mutex<TokenBucket>,
    scrapes: Mutex<TokenBucket>,
}

impl QueryBudget {
    /// Both buckets full at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            dashboards: Mutex::new(TokenBucket::full(DASHBOARD_ANSWERS, now)),
            scrapes: Mutex::new(TokenBucket::full(SCRAPE_ANSWERS, now)),
        }
    }

    fn try_take(&self, class: Class, now: Instant) -> bool {
        let (bucket, rate) = match class {
            Class::Dashboard => (&self.dashboards, DASHBOARD_ANSWERS),
            Class::Scrape => (&self.scrapes, SCRAPE_ANSWERS),
        };
        // A poisoned lock only means a panic elsewhere mid-update: the bucket is still a bucket.
        bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner).try_take(rate, now)
    }
}

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
    /// Rates of expensive answers.
    pub budget: Arc<QueryBudget>,
    /// How streams are authenticated (shown in the status).
    pub auth: AuthMode,
    /// Serialises `/metrics` refreshes of the per-cell gauges.
    pub metrics_refresh: Arc<tokio::sync::Mutex<()>>,
}

impl ApiState {
    /// Handler state over `state` and `metrics`, ready, with [`MAX_EXPENSIVE_QUERIES`] permits.
    pub fn new(state: StateHandle, metrics: Arc<AggregatorMetrics>, ready: Arc<AtomicBool>, auth: AuthMode) -> Self {
        Self {
            state,
            metrics,
            ready,
            expensive: Arc::new(Semaphore::new(MAX_EXPENSIVE_QUERIES)),
            budget: Arc::new(QueryBudget::new(Instant::now())),
            auth,
            metrics_refresh: Arc::default(),
        }
    }
}

fn shed(api: &ApiState, why: Shed) -> Response {
    api.metrics.queries_shed.with_label_values(&[why.as_str()]).inc();
    let (status, error) = match why {
        Shed::Permits => (StatusCode::SERVICE_UNAVAILABLE, "too many expensive queries at once, retry shortly"),
        Shed::Rate => (StatusCode::TOO_MANY_REQUESTS, "too many expensive queries this second, retry shortly"),
    };
    (status, [(header::RETRY_AFTER, "1")], Json(json!({ "error": error }))).into_response()
}

/// Spends a token of the answer's class and takes a permit, or says why not.
macro_rules! expensive {
    ($api:expr, $class:expr) => {{
        if !$api.budget.try_take($class, Instant::now()) {
            return shed(&$api, Shed::Rate);
        }
        match $api.expensive.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => return shed(&$api, Shed::Permits),
        }
    }};
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

/// Whether an `Accept-Encoding` value accepts gzip (`gzip` or `*`, with a q-value above 0).
fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.into_iter().flat_map(|v| v.split(',')).any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .map_or(Some(1.0), |q| q.parse::<f64>().ok());
        (name == "gzip" || name == "*") && q.is_some_and(|q| q > 0.0)
    })
}

async fn matrix(State(api): State<ApiState>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let _permit = expensive!(api, Class::Dashboard);
    let stat = match q.get("stat").map(String::as_str) {
        None => Stat::P99,
        Some(s) => match Stat::parse(s) {
            Some(stat) => stat,
            None => {
                let names: Vec<&str> = Stat::ALL.iter().map(|s| s.name()).collect();
                return bad_request(format!("stat={s:?}: expected one of {}", names.join(", ")));
            }
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
    if window.is_none() {
        // The default window: the snapshot's document, rendered once and shared.
        let gzip = accepts_gzip(headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()));
        let Some(snap) = api.state.snapshot().await else { return unavailable() };
        let Some(doc) = shared_matrix(snap, stat, gzip).await else { return unavailable() };
        return match gzip {
            true => (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CONTENT_ENCODING, "gzip"),
                    (header::VARY, "accept-encoding"),
                ],
                doc,
            )
                .into_response(),
            false => {
                ([(header::CONTENT_TYPE, "application/json"), (header::VARY, "accept-encoding")], doc).into_response()
            }
        };
    }
    // Another window needs the raw slots: the owner computes it (still under a permit).
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

/// `snap`'s shared matrix document, rendered on the blocking pool when it is not yet: at
/// 100,000 cells a render takes about 100 ms, and the requests arriving meanwhile wait for it
/// in the render's lock. On the async workers that blocked both of them (the owner's and the
/// streams' too), so ingest stopped for every new snapshot a dashboard asked for. `None` if the
/// render failed.
async fn shared_matrix(snap: Arc<Snapshot>, stat: Stat, gzip: bool) -> Option<Bytes> {
    if let Some(doc) = snap.matrix_rendered(stat, gzip) {
        return Some(doc);
    }
    let render = move || if gzip { snap.matrix_gzip(stat) } else { snap.matrix_json(stat) };
    match tokio::task::spawn_blocking(render).await {
        Ok(doc) => Some(doc),
        Err(e) => {
            tracing::error!(error = %e, "rendering the matrix failed");
            None
        }
    }
}

async fn nodes(State(api): State<ApiState>) -> Response {
    let _permit = expensive!(api, Class::Dashboard);
    api.state.snapshot().await.map_or_else(unavailable, |s| Json(s.nodes()).into_response())
}

async fn node(State(api): State<ApiState>, Path(name): Path<String>) -> Response {
    let _permit = expensive!(api, Class::Dashboard);
    match api.state.snapshot().await.map(|s| s.node(&name)) {
        Some(Some(v)) => Json(v).into_response(),
        Some(None) => (StatusCode::NOT_FOUND, Json(json!({"error": format!("unknown node {name:?}")}))).into_response(),
        None => unavailable(),
    }
}

async fn suspects(State(api): State<ApiState>) -> Response {
    api.state.snapshot().await.map_or_else(unavailable, |s| Json(s.suspects_json()).into_response())
}

async fn status(State(api): State<ApiState>) -> Response {
    let Some(status) = api.state.status() else { return unavailable() };
    let mut v = serde_json::to_value(&*status).unwrap_or_default();
    v["auth"] = json!(api.auth.as_str());
    // The one live number: load tests and status lines poll it for progress.
    v["results_ingested"] = json!(api.metrics.ingested.get());
    Json(v).into_response()
}

async fn coverage(State(api): State<ApiState>) -> Response {
    api.state.snapshot().await.map_or_else(unavailable, |s| Json(s.coverage().clone()).into_response())
}

async fn alive(State(api): State<ApiState>) -> Response {
    match api.state.snapshot().await {
        Some(s) if s.alive().0 => Json(s.alive().1.clone()).into_response(),
        Some(s) => (StatusCode::INTERNAL_SERVER_ERROR, Json(s.alive().1.clone())).into_response(),
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
    let _permit = expensive!(api, Class::Scrape);
    let Some(snap) = api.state.snapshot().await else { return unavailable() };
    // One refresh-and-encode at a time: the per-cell gauges are reset and refilled.
    let _one = api.metrics_refresh.lock().await;
    api.metrics.refresh(&snap);
    kubenurse_common::metrics::response(api.metrics.registry())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{accepts_gzip, shared_matrix};
    use crate::snapshot::{tests::state, Snapshot};
    use crate::views::Stat;

    #[tokio::test]
    async fn concurrent_requests_share_one_render() {
        let snap = Arc::new(Snapshot::take(&state(), 2_000_000));
        for gzip in [true, false] {
            let docs = futures::future::join_all((0..4).map(|_| shared_matrix(snap.clone(), Stat::P99, gzip))).await;
            let shared = snap.matrix_rendered(Stat::P99, gzip).map(|d| d.as_ptr());
            assert!(shared.is_some(), "rendered (gzip {gzip})");
            for doc in docs {
                assert_eq!(doc.map(|d| d.as_ptr()), shared, "one render shared (gzip {gzip})");
            }
        }
        let mut plain = Vec::new();
        let gz = snap.matrix_rendered(Stat::P99, true).unwrap_or_default();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain).unwrap_or_default();
        assert_eq!(Some(plain), snap.matrix_rendered(Stat::P99, false).map(|d| d.to_vec()), "the same document");
    }

    #[test]
    fn gzip_only_when_asked_and_not_refused() {
        for yes in ["gzip", "deflate, gzip;q=0.5", "GZIP", "*", "br, *;q=0.1", "gzip ; q=1"] {
            assert!(accepts_gzip(Some(yes)), "{yes}");
        }
        for no in ["", "identity", "br, deflate", "gzip;q=0", "gzip;q=0.0", "gzip;q=x", "xgzip"] {
            assert!(!accepts_gzip(Some(no)), "{no}");
        }
        assert!(!accepts_gzip(None));
    }
}
