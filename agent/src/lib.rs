//! kubenurse-agent: the per-node tier of kubenurse-rs, a drop-in replacement for
//! postfinance/kubenurse. `main` only reads the environment and signals; everything else is
//! here so tests can run several agents in one process.

pub mod checks;
pub mod config;
pub mod discovery;
pub mod dns_wire;
pub mod extra;
pub mod incoming;
pub mod metrics;
pub mod outbox;
pub mod probe;
pub mod pushed;
pub mod server;
pub mod state;
pub mod tls;
pub mod trace;
pub mod udp;
pub mod uplink;

// Who checks whom has one home, shared with the aggregator.
pub use kubenurse_neighbours::{neighbourhood, ring, selector};

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kubenurse_common::signal::stopped;
use kubenurse_neighbours::client::watch_client;
use kubenurse_proto::v1::RoundEnd;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::checks::{Checker, Plan, PlanSettings};
use crate::config::Config;
use crate::discovery::{Discovery, DiscoverySettings};
use crate::metrics::Metrics;
use crate::probe::ProbeClient;
use crate::state::AgentState;
use crate::uplink::{HelloIdentity, Uplink};

/// How often the first round looks whether the neighbourhood is known yet.
const FIRST_ROUND_POLL: Duration = Duration::from_millis(50);

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
    /// Metric registration failed (a bug, reported instead of a panic).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

async fn bind(bind_address: Option<IpAddr>, port: u16) -> Result<TcpListener, AgentError> {
    let addr = |ip: IpAddr| SocketAddr::new(ip, port);
    match bind_address {
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
    // Every setting is taken apart here, so one that is read but not wired fails to compile.
    let Config {
        ingress_url,
        service_url,
        insecure,
        extra_ca,
        namespace,
        neighbour_filter,
        neighbour_limit,
        allow_unschedulable,
        check_api_server_direct,
        check_api_server_dns,
        check_me_ingress,
        check_me_service,
        check_neighbourhood,
        check_interval,
        check_timeout,
        reuse_connections,
        histogram_buckets,
        victoriametrics_histogram: _,
        server_tls,
        shutdown_duration,
        extra_checks,
        expose_metadata: _,
        kubernetes_service_host,
        kubernetes_service_port,
        kubernetes_service_dns,
        service_account_dir,
        pod_name,
        node_name,
        bind_address,
        http_port,
        https_port,
        check_udp,
        udp_port,
        udp_packets,
        aggregator,
        discovery: discovery_mode,
        discovery_fallback_after,
    } = config;
    tls::install_crypto_provider();
    let client_tls = tls::client_config(insecure, &service_account_dir.join("ca.crt"), &extra_ca)?;
    let metrics = Arc::new(Metrics::new(&histogram_buckets)?);
    let http_listener = bind(bind_address, http_port).await?;
    let https = match server_tls.clone() {
        Some(tls) => Some((bind(bind_address, https_port).await?, tokio_rustls::TlsAcceptor::from(tls))),
        None => None,
    };

    let discovery = if check_neighbourhood {
        let kube_config = match kube_config {
            Some(c) => c,
            None => kube::Config::infer().await.map_err(|e| AgentError::KubeConfig(e.to_string()))?,
        };
        let client = watch_client(kube_config).map_err(|e| AgentError::KubeConfig(e.to_string()))?;
        Some(Discovery::spawn(
            client,
            DiscoverySettings {
                namespace,
                neighbour_filter,
                neighbour_limit,
                allow_unschedulable,
                pod_name: pod_name.clone(),
                node_name: node_name.clone(),
                mode: discovery_mode,
                fallback_after: discovery_fallback_after,
            },
        ))
    } else {
        None
    };

    let state = Arc::new(AgentState {
        metrics: metrics.clone(),
        incoming: incoming::IncomingChecks::default(),
        last_round: Default::default(),
        shutting_down: Default::default(),
        discovery: discovery.clone(),
        hostname: pod_name.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let echo_addr = SocketAddr::new(bind_address.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), udp_port);
    let echo_socket =
        udp::bind(bind_address, udp_port).await.map_err(|source| AgentError::Bind { addr: echo_addr, source })?;
    let echo = tokio::spawn(udp::echo::serve(echo_socket, metrics.clone(), stop_rx.clone()));
    let router = server::router(state.clone());
    let mut servers =
        vec![tokio::spawn(server::serve(http_listener, router.clone(), None, stop_rx.clone(), DRAIN_TIMEOUT))];
    if let Some((listener, acceptor)) = https {
        servers.push(tokio::spawn(server::serve(listener, router, Some(acceptor), stop_rx.clone(), DRAIN_TIMEOUT)));
    }
    info!(pod = %pod_name, http_port, tls = server_tls.is_some(), "kubenurse agent started");

    let uplink = match aggregator {
        Some(target) => {
            let uplink_metrics = metrics.register_aggregator()?;
            let identity = HelloIdentity { node_name, pod_name: pod_name.clone(), check_interval, neighbour_limit };
            Some(Uplink::start(target, identity, uplink_metrics, discovery.clone()))
        }
        None => None,
    };
    let (path_scheme, path_port) = if server_tls.is_some() { ("https", https_port) } else { ("http", http_port) };
    let api_server_dns = check_api_server_dns.then_some(kubernetes_service_dns);
    let plan = Plan::new(PlanSettings {
        api_server_direct: kubernetes_service_host.filter(|_| check_api_server_direct),
        api_server_dns,
        api_server_port: kubernetes_service_port,
        me_ingress: ingress_url.filter(|_| check_me_ingress),
        me_service: service_url.filter(|_| check_me_service),
        extra: extra_checks,
        path_scheme,
        path_port,
    });
    let probe = ProbeClient::new(client_tls, reuse_connections).with_source(bind_address);
    let token_path = service_account_dir.join("token");
    let mut checker = Checker::new(plan, probe, metrics.clone(), pod_name, token_path, check_timeout);
    if check_udp && check_neighbourhood {
        let source = SocketAddr::new(bind_address.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), 0);
        let socket = udp::bind(bind_address, 0)
            .await
            .map_err(|source_err| AgentError::Bind { addr: source, source: source_err })?;
        let timing = udp::RoundTiming::for_interval(udp_packets, check_interval);
        checker = checker.with_udp(udp::UdpProber::new(socket, udp_port, timing, metrics.clone()));
    }
    let checker = Arc::new(checker);
    let rounds = tokio::spawn(round_loop(checker, state.clone(), discovery, check_interval, uplink.clone(), stop_rx));

    shutdown.await;
    info!(wait = ?shutdown_duration, "shutting down: /ready now answers 503");
    state.shutting_down.store(true, Ordering::SeqCst);
    tokio::time::sleep(shutdown_duration).await;
    let _ = stop_tx.send(true);
    for s in servers {
        if let Err(e) = s.await {
            warn!(error = %e, "listener task failed");
        }
    }
    rounds.abort();
    echo.abort();
    if let Some(up) = uplink {
        up.stop();
    }
    info!("kubenurse agent stopped");
    Ok(())
}

async fn round_loop(
    checker: Arc<Checker>,
    state: Arc<AgentState>,
    discovery: Option<Discovery>,
    interval: Duration,
    uplink: Option<Arc<Uplink>>,
    mut stop: watch::Receiver<bool>,
) {
    // The first round waits (at most one interval) until the neighbourhood is known, so a fresh
    // agent's first round already checks its neighbours: pushed targets arrive once the hello
    // is out, local caches once the LISTs are in.
    if let Some(d) = &discovery {
        let deadline = tokio::time::Instant::now() + interval;
        loop {
            let view = d.view();
            if let (Some(up), Some(_)) = (&uplink, d.own_node()) {
                up.update_hello(Some(d), Some(&view));
            }
            if view.known || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = tokio::time::sleep(FIRST_ROUND_POLL) => {}
            }
        }
    }
    let mut ticker = tokio::time::interval(interval);
    let mut round_no: u64 = 0;
    let mut udp_round: Option<tokio::task::JoinHandle<()>> = None;
    // A slow round delays the next one; rounds never overlap.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = ticker.tick() => {}
        }
        // A round's UDP probes end before the next round sends its own (one socket, one book).
        if let Some(previous) = udp_round.take() {
            if let Err(e) = previous.await {
                warn!(error = %e, "udp round task failed");
            }
        }
        let view = discovery.as_ref().map(Discovery::view);
        let known = view.as_ref().is_none_or(|v| v.known);
        round_no += 1;
        let udp = checker.start_udp(view.as_ref().map(|v| v.neighbours.clone()).unwrap_or_default());
        if let Some(up) = &uplink {
            up.update_hello(discovery.as_ref(), view.as_ref());
        }
        let up = uplink.clone();
        let on_done = Arc::new(move |o: &checks::CheckOutcome| {
            if let Some(up) = &up {
                up.push_result(uplink::to_wire(o, round_no));
            }
        });
        let round = checker.run_round(view, on_done).await;
        let started_at = round.started_at;
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
        if let Some(task) = udp {
            let (state, uplink) = (state.clone(), uplink.clone());
            udp_round = Some(tokio::spawn(async move {
                let reports = task.await.unwrap_or_else(|e| {
                    warn!(error = %e, "udp probe task failed");
                    Vec::new()
                });
                if let Some(up) = &uplink {
                    for r in &reports {
                        up.push_udp(uplink::udp_to_wire(r, round_no, started_at));
                    }
                }
                state.publish_udp(started_at, reports);
            }));
        }
    }
}
