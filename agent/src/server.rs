//! The HTTP(S) endpoints (upstream's paths and answers) and the listener loop with graceful
//! drain, shared by the plain and the TLS listener.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::checks::ORIGIN_HEADER;
use crate::discovery::Discovery;
use crate::state::AgentState;
use kubenurse_common::signal::stopped;

/// The router of both listeners.
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/alive", get(alive))
        .route("/alwayshappy", get(always_happy))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(redirect_to_alive)
        .with_state(state)
}

async fn redirect_to_alive() -> Response {
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, "/alive")]).into_response()
}

async fn always_happy(State(state): State<Arc<AgentState>>, headers: HeaderMap) -> StatusCode {
    if let Some(origin) = headers.get(ORIGIN_HEADER).and_then(|v| v.to_str().ok()) {
        // With discovery on, only pods it knows count; without, the bounded table alone.
        let known = state.discovery.as_ref().is_none_or(|d| d.knows_pod(origin));
        if !known || !state.incoming.record(origin, Instant::now()) {
            debug!(origin_len = origin.len(), known, "origin header not recorded");
        }
    }
    StatusCode::OK
}

async fn ready(State(state): State<Arc<AgentState>>) -> StatusCode {
    let node_ok = state.discovery.as_ref().is_none_or(Discovery::own_node_schedulable);
    if state.shutting_down.load(Ordering::SeqCst) || !node_ok {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn metrics(State(state): State<Arc<AgentState>>) -> Response {
    state.metrics.set_incoming(state.incoming.count(Instant::now()));
    kubenurse_common::metrics::response(state.metrics.registry())
}

/// Go's canonical header spelling (`accept-encoding` → `Accept-Encoding`), as upstream shows.
fn canonical_header(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

async fn alive(
    State(state): State<Arc<AgentState>>,
    remote: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Some(round) = state.last_round() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no check round has completed yet\n").into_response();
    };
    let mut header_map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &headers {
        header_map
            .entry(canonical_header(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let body = serde_json::json!({
        "hostname": state.hostname,
        "headers": header_map,
        "user_agent": headers.get(header::USER_AGENT).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default(),
        "request_uri": uri.path_and_query().map_or("/alive", |p| p.as_str()),
        "remote_addr": remote.map(|r| r.0 .0.to_string()).unwrap_or_default(),
        "last_check_result": round.to_json(),
    });
    let status = if round.all_ok() { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR };
    let mut text = serde_json::to_string_pretty(&body).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// Longest a client may take to send a request head (also between keep-alive requests) or
/// to finish a TLS handshake: slowloris connections are closed after it.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections one listener holds open (fewer when the file-descriptor limit is low, see
/// [`connection_limit`]); beyond it new ones are closed at once, so a connection flood cannot
/// take the file descriptors the agent's own checks need.
pub const MAX_CONNECTIONS: usize = 4096;

/// Half the soft `RLIMIT_NOFILE` (from `/proc/self/limits`), at least 64 and at most
/// [`MAX_CONNECTIONS`]: the other half stays for the checks, the watches and the stream.
pub fn connection_limit(proc_limits: Option<&str>) -> usize {
    let soft = proc_limits.and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        line.trim_start_matches("Max open files").split_whitespace().next()?.parse::<u64>().ok()
    });
    match soft {
        Some(n) => usize::try_from(n / 2).unwrap_or(MAX_CONNECTIONS).clamp(64, MAX_CONNECTIONS),
        None => MAX_CONNECTIONS,
    }
}

/// Accepts connections until `stop` turns true, then waits up to `drain` for open requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let limits = std::fs::read_to_string("/proc/self/limits").ok();
    let max_connections = connection_limit(limits.as_deref());
    debug!(max_connections, "listener connection limit");
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (tcp, remote) = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%remote, max = max_connections, "connection limit reached, closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::Extension(ConnectInfo(remote)));
            let router = router.clone();
            async move { Ok::<_, Infallible>(router.oneshot(req).await.unwrap_or_else(|e| match e {})) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(tcp), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, %remote, "connection ended with error");
                    }
                    drop(slot);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let conn_stop = stop.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _slot = slot;
                    let handshake = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await;
                    let tls = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return debug!(error = %e, %remote, "TLS handshake failed"),
                        Err(_) => return debug!(%remote, "TLS handshake timed out"),
                    };
                    if *conn_stop.borrow() {
                        return;
                    }
                    let conn = watcher.watch(builder.serve_connection(TokioIo::new(tls), service));
                    if let Err(e) = conn.await {
                        debug!(error = %e, %remote, "connection ended with error");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        warn!(?drain, "connections still open after drain timeout, closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_follows_the_fd_limit() {
        let limits = |soft: &str| {
            format!("Limit Soft Limit Hard Limit Units\nMax open files            {soft}                 524288               files\n")
        };
        assert_eq!(connection_limit(Some(&limits("1024"))), 512);
        assert_eq!(connection_limit(Some(&limits("100"))), 64);
        assert_eq!(connection_limit(Some(&limits("1048576"))), MAX_CONNECTIONS);
        assert_eq!(connection_limit(Some(&limits("unlimited"))), MAX_CONNECTIONS);
        assert_eq!(connection_limit(None), MAX_CONNECTIONS);
    }

    #[test]
    fn canonical_header_names() {
        assert_eq!(canonical_header("accept-encoding"), "Accept-Encoding");
        assert_eq!(canonical_header("kubenurse-neighbour-origin"), "Kubenurse-Neighbour-Origin");
        assert_eq!(canonical_header("x"), "X");
    }
}
