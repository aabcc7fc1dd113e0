//! kubenurse-agent: the per-node tier of kubenurse-rs, a drop-in replacement for
//! postfinance/kubenurse. `main` only reads the environment and signals; everything else is
//! here so tests can run several agents in one process.

pub mod checks;
pub mod config;
pub mod discovery;
pub mod incoming;
pub mod metrics;
pub mod neighbourhood;
pub mod probe;
pub mod ring;
pub mod selector;
pub mod server;
pub mod tls;
pub mod trace;
pub mod uplink;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kubenurse_proto::v1::{Hello, RoundEnd};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::checks::Checker;
use crate::config::Config;
use crate::discovery::Discovery;
use crate::metrics::Metrics;
use crate::probe::ProbeClient;
use crate::server::AgentState;

/// How long open connections may take to finish after the listeners close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A TLS file or setting was unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// No kubeconfig and no in-cluster configuration.
    #[error("KUBECONFIG: cannot configure the Kubernetes client: {0}")]
    KubeConfig(String),
    /// `KUBENURSE_AGGREGATOR_URL` could not be used.
    #[error("KUBENURSE_AGGREGATOR_URL: {0}")]
    AggregatorUrl(String),
    /// Metric registration failed (a bug, reported instead of a panic).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

async fn bind(config: &Config, port: u16) -> Result<TcpListener, AgentError> {
    let addr = |ip: IpAddr| SocketAddr::new(ip, port);
    match config.bind_address {
        Some(ip) => TcpListener::bind(addr(ip)).await.map_err(|source| AgentError::Bind { addr: addr(ip), source }),
        None => match TcpListener::bind(addr(IpAddr::V6(Ipv6Addr::UNSPECIFIED))).await {
            Ok(l) => Ok(l),
            // No IPv6 on this host: IPv4 only.
            Err(_) => {
                let v4 = addr(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                TcpListener::bind(v4).await.map_err(|source| AgentError::Bind { addr: v4, source })
            }
        },
    }
}

/// Runs the agent until `shutdown` resolves, then: `/ready` 503, wait
/// `KUBENURSE_SHUTDOWN_DURATION`, close the listeners, drain, return.
///
/// `kube_config` overrides the usual inference (kubeconfig, else in-cluster); tests running
/// several agents in one process use it, since `KUBECONFIG` is process-wide.
pub async fn run(
    config: Config,
    kube_config: Option<kube::Config>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    tls::install_crypto_provider();
    let config = Arc::new(config);
    let client_tls =
        tls::client_config(config.insecure, &config.service_account_dir.join("ca.crt"), config.extra_ca.as_deref())?;
    let server_tls = match (&config.use_tls, &config.cert_file, &config.cert_key) {
        (true, Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(cert, key)?)),
        _ => None,
    };
    let metrics = Arc::new(Metrics::new(&config.histogram_buckets)?);
    let http_listener = bind(&config, config.http_port).await?;
    let https_listener = match server_tls {
        Some(_) => Some(bind(&config, config.https_port).await?),
        None => None,
    };

    let discovery = if config.check_neighbourhood {
        let mut kube_config = match kube_config {
            Some(c) => c,
            None => kube::Config::infer().await.map_err(|e| AgentError::KubeConfig(e.to_string()))?,
        };
        // kube retries 503s for minutes by default, hiding an outage from neighbourhood_state;
        // the watchers back off by themselves.
        kube_config.default_retry = false;
        let client = kube::Client::try_from(kube_config).map_err(|e| AgentError::KubeConfig(e.to_string()))?;
        Some(Discovery::spawn(client, &config))
    } else {
        None
    };

    let state = Arc::new(AgentState {
        metrics: metrics.clone(),
        incoming: incoming::IncomingChecks::default(),
        last_round: Default::default(),
        shutting_down: Default::default(),
        discovery: discovery.clone(),
        hostname: config.pod_name.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let router = server::router(state.clone());
    let mut servers =
        vec![tokio::spawn(server::serve(http_listener, router.clone(), None, stop_rx.clone(), DRAIN_TIMEOUT))];
    if let (Some(listener), Some(acceptor)) = (https_listener, server_tls) {
        servers.push(tokio::spawn(server::serve(listener, router, Some(acceptor), stop_rx.clone(), DRAIN_TIMEOUT)));
    }
    info!(pod = %config.pod_name, http_port = config.http_port, tls = config.use_tls, "kubenurse agent started");

    let uplink = match &config.aggregator_url {
        Some(url) => {
            let (dropped, connected) = metrics.register_aggregator()?;
            let uris = url
                .split(',')
                .map(|u| u.trim().parse::<http::Uri>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| AgentError::AggregatorUrl(e.to_string()))?;
            let ca = match &config.aggregator_ca {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    AgentError::AggregatorUrl(format!("KUBENURSE_AGGREGATOR_CA {}: {e}", path.display()))
                })?),
                None => None,
            };
            Some(uplink::Uplink::start(uris, ca, dropped, connected))
        }
        None => None,
    };
    let probe = ProbeClient::new(client_tls, config.reuse_connections).with_source(config.bind_address);
    let checker = Arc::new(Checker::new(config.clone(), probe, metrics.clone()));
    let rounds = tokio::spawn(round_loop(checker, state.clone(), discovery, config.clone(), uplink.clone(), stop_rx));

    shutdown.await;
    info!(wait = ?config.shutdown_duration, "shutting down: /ready now answers 503");
    state.shutting_down.store(true, Ordering::SeqCst);
    tokio::time::sleep(config.shutdown_duration).await;
    let _ = stop_tx.send(true);
    for s in servers {
        if let Err(e) = s.await {
            warn!(error = %e, "listener task failed");
        }
    }
    rounds.abort();
    if let Some(up) = uplink {
        up.stop();
    }
    info!("kubenurse agent stopped");
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The borrow guard is dropped here, keeping callers' futures `Send`.
    let _ = stop.wait_for(|s| *s).await;
}

fn hello(config: &Config, discovery: Option<&Discovery>, targets: Vec<String>) -> Option<Hello> {
    let node = config.node_name.clone().or_else(|| discovery.and_then(Discovery::own_node))?;
    let (pod_ip, host_ip) = discovery.map(Discovery::own_addresses).unwrap_or_default();
    Some(Hello {
        protocol: kubenurse_proto::PROTOCOL_REVISION,
        node,
        pod: config.pod_name.clone(),
        pod_ip,
        host_ip,
        zone: discovery.map(Discovery::own_zone).unwrap_or_default(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        interval_micros: config.check_interval.as_micros() as u64,
        neighbour_limit: u32::try_from(config.neighbour_limit).unwrap_or(u32::MAX),
        targets,
    })
}

async fn round_loop(
    checker: Arc<Checker>,
    state: Arc<AgentState>,
    discovery: Option<Discovery>,
    config: Arc<Config>,
    uplink: Option<Arc<uplink::Uplink>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(config.check_interval);
    let mut round_no: u64 = 0;
    // A slow round delays the next one; rounds never overlap.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = ticker.tick() => {}
        }
        let view = discovery.as_ref().map(Discovery::view);
        let known = view.as_ref().is_none_or(|v| v.known);
        round_no += 1;
        if let Some(up) = &uplink {
            let targets =
                view.as_ref().map(|v| v.neighbours.iter().map(|n| n.node_name.clone()).collect()).unwrap_or_default();
            match hello(&config, discovery.as_ref(), targets) {
                Some(h) => up.set_hello(h),
                None => warn!("own node name not known yet: not streaming to the aggregator"),
            }
        }
        let up = uplink.clone();
        let on_done = Arc::new(move |o: &checks::CheckOutcome| {
            if let Some(up) = &up {
                up.push_result(uplink::to_wire(o, round_no));
            }
        });
        let round = checker.run_round(view, on_done).await;
        if let Some(up) = &uplink {
            up.push_round_end(RoundEnd {
                round: round_no,
                all_ok: round.all_ok(),
                neighbourhood_state: round.neighbourhood_state.clone(),
                end_unix_micros: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as i64),
            });
        }
        if known {
            // Series of neighbours no longer checked go away (upstream leaks them).
            for old in state.metrics.known_paths() {
                if !round.outcomes.iter().any(|o| o.spec.kind == old) {
                    info!(check = %old, "neighbour left, removing its series");
                    state.metrics.forget(&old);
                }
            }
        }
        info!(
            checks = round.outcomes.len(),
            ok = round.all_ok(),
            took_ms = round.took.as_secs_f64() * 1e3,
            neighbourhood = %round.neighbourhood_state,
            "round complete"
        );
        state.publish(round);
    }
}
