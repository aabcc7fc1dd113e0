//! The HTTP API's own bounds, through the router factory (no sockets): expensive answers are
//! shed beyond their permits and their rate while cheap ones keep answering.

#![allow(clippy::unwrap_used)] // test setup: a failure should abort the test loudly

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::body::Body;
use http::Request;
use kubenurse_aggregator::api::{router, ApiState, DASHBOARD_ANSWERS, MAX_EXPENSIVE_QUERIES, SCRAPE_ANSWERS};
use kubenurse_aggregator::metrics::AggregatorMetrics;
use kubenurse_aggregator::owner::StateHandle;
use kubenurse_aggregator::state::Settings;
use tower::ServiceExt;

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn expensive_routes_shed_load_beyond_their_permits() {
    let metrics = Arc::new(AggregatorMetrics::new(kubenurse_aggregator::metrics::CellMetrics::None).unwrap());
    let state = StateHandle::spawn(Settings::default(), metrics.clone());
    let api =
        ApiState::new(state, metrics, Arc::new(AtomicBool::new(true)), kubenurse_aggregator::auth::AuthMode::None);
    let app = router(api.clone());
    assert_eq!(app.clone().oneshot(get("/api/v1/matrix")).await.unwrap().status(), 200);
    let held: Vec<_> = (0..MAX_EXPENSIVE_QUERIES).map(|_| api.expensive.clone().try_acquire_owned().unwrap()).collect();
    for path in ["/api/v1/matrix", "/api/v1/nodes", "/api/v1/nodes/node-a", "/metrics"] {
        let resp = app.clone().oneshot(get(path)).await.unwrap();
        assert_eq!(resp.status(), 503, "{path} must be shed while every permit is taken");
        assert_eq!(resp.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]), "{path}");
    }
    for path in ["/api/v1/status", "/api/v1/suspects", "/healthz"] {
        assert_eq!(app.clone().oneshot(get(path)).await.unwrap().status(), 200, "{path} is cheap: never shed");
    }
    drop(held);
    assert_eq!(app.oneshot(get("/api/v1/matrix")).await.unwrap().status(), 200, "permits come back");
}

#[tokio::test]
async fn expensive_routes_shed_load_beyond_their_rate_and_dashboards_never_starve_scrapes() {
    let metrics = Arc::new(AggregatorMetrics::new(kubenurse_aggregator::metrics::CellMetrics::None).unwrap());
    let state = StateHandle::spawn(Settings::default(), metrics.clone());
    let api = ApiState::new(
        state,
        metrics.clone(),
        Arc::new(AtomicBool::new(true)),
        kubenurse_aggregator::auth::AuthMode::None,
    );
    let app = router(api);
    let shed = |reason: &str| metrics.queries_shed.with_label_values(&[reason]).get();
    assert_eq!((shed("permits"), shed("rate")), (0, 0), "both reasons exist at zero");
    // A dashboard looping as fast as it can: the burst is answered, then 429s.
    let burst = DASHBOARD_ANSWERS.burst as usize;
    let (mut ok, mut limited) = (0usize, 0u64);
    for i in 0..burst + 5 {
        let path = ["/api/v1/matrix", "/api/v1/nodes", "/api/v1/nodes/node-a"][i % 3];
        let resp = app.clone().oneshot(get(path)).await.unwrap();
        match resp.status().as_u16() {
            429 => {
                assert_eq!(resp.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
                limited += 1;
            }
            _ => ok += 1,
        }
    }
    // The loop may take a while on a slow machine: a token or two may come back meanwhile.
    assert!(ok >= burst && ok <= burst + 2, "{ok} answered, {limited} limited");
    assert_eq!(shed("rate"), limited);
    // Scrapes have their own rate: still answered, up to theirs.
    let scrapes = SCRAPE_ANSWERS.burst as usize;
    for _ in 0..scrapes {
        assert_eq!(app.clone().oneshot(get("/metrics")).await.unwrap().status(), 200);
    }
    for path in ["/api/v1/status", "/api/v1/suspects", "/alive", "/healthz"] {
        assert_ne!(app.clone().oneshot(get(path)).await.unwrap().status(), 429, "{path} is cheap: never limited");
    }
}

#[tokio::test]
async fn the_matrix_is_gzipped_for_clients_that_ask() {
    use http_body_util::BodyExt;
    let metrics = Arc::new(AggregatorMetrics::new(kubenurse_aggregator::metrics::CellMetrics::None).unwrap());
    let state = StateHandle::spawn(Settings::default(), metrics.clone());
    let app = router(ApiState::new(
        state,
        metrics,
        Arc::new(AtomicBool::new(true)),
        kubenurse_aggregator::auth::AuthMode::None,
    ));
    let plain = app.clone().oneshot(get("/api/v1/matrix")).await.unwrap();
    assert_eq!(plain.headers().get("content-encoding"), None);
    assert_eq!(plain.headers().get("vary").map(|v| v.as_bytes()), Some(&b"accept-encoding"[..]));
    let plain = plain.into_body().collect().await.unwrap().to_bytes();
    let request = Request::get("/api/v1/matrix").header("accept-encoding", "br, gzip").body(Body::empty()).unwrap();
    let zipped = app.oneshot(request).await.unwrap();
    assert_eq!(zipped.headers().get("content-encoding").map(|v| v.as_bytes()), Some(&b"gzip"[..]));
    let zipped = zipped.into_body().collect().await.unwrap().to_bytes();
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&zipped[..]), &mut unzipped).unwrap();
    let (a, b): (serde_json::Value, serde_json::Value) =
        (serde_json::from_slice(&plain).unwrap(), serde_json::from_slice(&unzipped).unwrap());
    assert_eq!(a["cells"], b["cells"]);
    assert!(a["stat"] == "p99" && b["stat"] == "p99");
}
