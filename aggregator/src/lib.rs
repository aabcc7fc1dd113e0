//! kubenurse-aggregator: receives every agent's results over gRPC (`nurse.v1`), keeps the
//! cluster-wide source × destination matrix, names fault suspects, and serves it all over HTTP.

pub mod api;
pub mod auth;
pub mod cell;
pub mod check;
pub mod conditions;
pub mod config;
pub mod discovery;
pub mod guard;
pub mod ingest;
pub mod loss;
pub mod metrics;
pub mod owner;
pub mod sketch;
pub mod snapshot;
pub mod state;
pub mod suspects;
pub mod validate;
pub mod views;
pub mod window;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt as _;

use kubenurse_neighbours::client::watch_client;
use kubenurse_proto::v1::nurse_server::NurseServer;
use kubenurse_proto::MAX_MESSAGE_BYTES;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::auth::gate::Gate;
use crate::auth::review::TokenReviewer;
use crate::config::{AuthConfig, Config};
use crate::guard::{Connections, Guarded};
use crate::metrics::AggregatorMetrics;
use crate::owner::StateHandle;

/// Why the aggregator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    /// Metric registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// No kube client for TokenReview (neither in-cluster nor `KUBECONFIG`).
    #[error("kube client for --auth tokenreview: {0}")]
    Kube(String),
    /// No kube client for pushed discovery.
    #[error("kube client for --discovery: {0}")]
    DiscoveryKube(String),
    /// No kube client for node conditions.
    #[error("kube client for --node-conditions: {0}")]
    ConditionsKube(String),
}

/// The gRPC service for `state` behind `gate`, with message size bounds (also used by
/// in-process tests).
pub fn grpc_service(
    state: StateHandle,
    metrics: Arc<AggregatorMetrics>,
    gate: Arc<Gate>,
    connections: Arc<Connections>,
    shutdown: watch::Receiver<bool>,
) -> NurseServer<ingest::Ingest> {
    bounded(NurseServer::new(ingest::Ingest::new(state, metrics, gate, connections, shutdown)))
}

fn bounded(server: NurseServer<ingest::Ingest>) -> NurseServer<ingest::Ingest> {
    server.max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The gate for `auth`; TokenReview uses `kube_config`, else in-cluster or `KUBECONFIG`.
async fn gate(auth: &AuthConfig, kube_config: Option<kube::Config>) -> Result<Gate, AggregatorError> {
    Ok(match auth {
        AuthConfig::None => {
            warn!("--auth none: any client reaching the gRPC port can feed the matrix");
            Gate::Open
        }
        AuthConfig::Mtls { .. } => Gate::Mtls,
        AuthConfig::TokenReview(expect) => {
            let kube_config = match kube_config {
                Some(c) => c,
                None => kube::Config::infer().await.map_err(|e| AggregatorError::Kube(e.to_string()))?,
            };
            let client = kube::Client::try_from(kube_config).map_err(|e| AggregatorError::Kube(e.to_string()))?;
            Gate::TokenReview(Box::new(TokenReviewer::new(client, expect.clone())))
        }
    })
}

/// Runs until `shutdown` resolves: then `/ready` 503, GoAway to every stream, stop.
/// `kube_config` is for TokenReview (tests pass the fake API server's); `None` infers it.
pub async fn run(
    config: Config,
    kube_config: Option<kube::Config>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AggregatorError> {
    // Every setting is taken apart here, so one that is read but not wired fails to compile.
    let Config { grpc_address, http_address, settings, tls, auth, discovery, cell_metrics, node_conditions } = config;
    let metrics = Arc::new(AggregatorMetrics::new(cell_metrics)?);
    // Kept until the aggregator stops: dropping it stops the watches.
    let discovery = match discovery {
        Some(discovery) => {
            let kube_config = match kube_config.clone() {
                Some(c) => c,
                None => kube::Config::infer().await.map_err(|e| AggregatorError::DiscoveryKube(e.to_string()))?,
            };
            let client = watch_client(kube_config).map_err(|e| AggregatorError::DiscoveryKube(e.to_string()))?;
            info!(namespace = ?discovery.namespace, limit = discovery.neighbour_limit, "pushed discovery on: watching Pods and Nodes");
            Some(discovery::spawn(client, discovery))
        }
        None => None,
    };
    let gate = Arc::new(gate(&auth, kube_config.clone()).await?);
    let state = StateHandle::spawn(settings, metrics.clone());
    // Kept until the aggregator stops, like the watches.
    let conditions = match node_conditions {
        Some(conditions) => {
            let kube_config = match kube_config {
                Some(c) => c,
                None => kube::Config::infer().await.map_err(|e| AggregatorError::ConditionsKube(e.to_string()))?,
            };
            let client =
                kube::Client::try_from(kube_config).map_err(|e| AggregatorError::ConditionsKube(e.to_string()))?;
            Some(conditions::spawn(client, conditions, state.clone(), metrics.clone()))
        }
        None => None,
    };
    let ready = Arc::new(AtomicBool::new(true));
    let (stop_tx, stop_rx) = watch::channel(false);

    let http =
        TcpListener::bind(http_address).await.map_err(|source| AggregatorError::Bind { addr: http_address, source })?;
    let grpc =
        TcpListener::bind(grpc_address).await.map_err(|source| AggregatorError::Bind { addr: grpc_address, source })?;
    info!(grpc = %grpc_address, http = %http_address, tls = tls.is_some(), auth = %gate.mode(), "kubenurse aggregator started");

    let router = api::router(api::ApiState::new(state.clone(), metrics.clone(), ready.clone(), gate.mode()));
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(http, router)
            .with_graceful_shutdown(async move { kubenurse_common::signal::stopped(&mut http_stop).await })
            .await
    });
    let connections = Arc::new(Connections::default());
    let mut ingest = ingest::Ingest::new(state, metrics, gate, connections.clone(), stop_rx.clone());
    if let Some(running) = &discovery {
        ingest = ingest.with_targets(running.books.clone());
    }
    let service = bounded(NurseServer::new(ingest));
    let mut grpc_stop = stop_rx.clone();
    let incoming = tonic::transport::server::TcpIncoming::from(grpc)
        .with_nodelay(Some(true))
        .map_ok(move |tcp| Guarded::new(tcp, connections.clone(), ingest::HELLO_TIMEOUT));
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        let mut tls_config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let AuthConfig::Mtls { client_ca_pem } = &auth {
            tls_config = tls_config.client_ca_root(tonic::transport::Certificate::from_pem(client_ca_pem));
        }
        builder = builder.tls_config(tls_config)?;
    }
    let grpc_task = tokio::spawn(
        builder
            // Small flow-control windows bound what thousands of agents can have in flight.
            .initial_stream_window_size(Some(64 * 1024))
            .initial_connection_window_size(Some(256 * 1024))
            // Peers that stop answering pings are dropped (agents ping every 20 s too).
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(service)
            .serve_with_incoming_shutdown(
                incoming,
                async move { kubenurse_common::signal::stopped(&mut grpc_stop).await },
            ),
    );

    shutdown.await;
    info!("shutting down: telling agents to go away");
    ready.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    if let Ok(r) = grpc_task.await {
        r?;
    }
    if let Ok(r) = http_task.await {
        r.map_err(AggregatorError::Http)?;
    }
    drop(conditions);
    drop(discovery);
    Ok(())
}
