//! An aggregator running in this process, on loopback ports, for end-to-end tests and the lab.

use std::net::SocketAddr;
use std::time::Duration;

use kubenurse_aggregator::auth::{Expectation, ServiceAccount, DEFAULT_AUDIENCE};
use kubenurse_aggregator::conditions::ConditionsConfig;
use kubenurse_aggregator::config::{AuthConfig, Config};
use kubenurse_aggregator::discovery::DiscoveryConfig;
use kubenurse_aggregator::metrics::CellMetrics;
use kubenurse_aggregator::state::Settings;
use kubenurse_aggregator::AggregatorError;
use kubenurse_neighbours::selector::LabelSelector;
use kubenurse_testkit::apiserver::FakeApiServer;
use kubenurse_testkit::sim::{NAMESPACE, NEIGHBOUR_FILTER, SERVICE_ACCOUNT};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use kubenurse_testkit::http::{eventually, http_get};

/// A running aggregator.
pub struct LocalAggregator {
    /// gRPC address agents stream to.
    pub grpc: SocketAddr,
    /// HTTP address of its API.
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AggregatorError>>,
}

/// How a local aggregator is reached and checks its agents.
#[derive(Debug, Clone)]
pub struct AggregatorOptions {
    /// TLS on the gRPC port: (certificate chain PEM, key PEM).
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// How streams are authenticated.
    pub auth: AuthConfig,
    /// The API server TokenReview (and discovery) goes to.
    pub kube: Option<kube::Config>,
    /// Pushed discovery (needs `kube`).
    pub discovery: Option<DiscoveryConfig>,
    /// Node conditions and events (needs `kube`).
    pub conditions: Option<ConditionsConfig>,
}

/// Pushed discovery with the simulated agents' namespace and filter, and `limit`.
pub fn discovery_for(limit: usize) -> anyhow::Result<DiscoveryConfig> {
    Ok(DiscoveryConfig {
        namespace: Some(NAMESPACE.into()),
        neighbour_filter: LabelSelector::parse(NEIGHBOUR_FILTER)?,
        neighbour_limit: limit,
        allow_unschedulable: false,
    })
}

impl AggregatorOptions {
    /// Plaintext, `--auth tokenreview` against `api` for the simulated agents' service account
    /// and the default audience, pushed discovery for agents checking `limit` neighbours (the
    /// chart's default install).
    pub fn token_review(api: &FakeApiServer, limit: usize) -> anyhow::Result<Self> {
        let service_account = ServiceAccount { namespace: NAMESPACE.into(), name: SERVICE_ACCOUNT.into() };
        Ok(Self {
            tls: None,
            auth: AuthConfig::TokenReview(Expectation { audience: DEFAULT_AUDIENCE.into(), service_account }),
            kube: Some(api.kube_config()),
            discovery: Some(discovery_for(limit)?),
            conditions: None,
        })
    }
}

impl Default for AggregatorOptions {
    /// Plaintext and `--auth none`: for tests that speak gRPC to it by hand.
    fn default() -> Self {
        Self { tls: None, auth: AuthConfig::None, kube: None, discovery: None, conditions: None }
    }
}

impl LocalAggregator {
    /// Starts on the given addresses with [`AggregatorOptions::default`] and waits until its
    /// HTTP API answers.
    pub async fn start(grpc: SocketAddr, http: SocketAddr, settings: Settings) -> anyhow::Result<Self> {
        Self::start_with(grpc, http, settings, AggregatorOptions::default()).await
    }

    /// Same, with TLS and authentication as `options` say.
    pub async fn start_with(
        grpc: SocketAddr,
        http: SocketAddr,
        settings: Settings,
        options: AggregatorOptions,
    ) -> anyhow::Result<Self> {
        let AggregatorOptions { tls, auth, kube, discovery, conditions } = options;
        let (stop, stopped) = oneshot::channel::<()>();
        // Per-cell series on: the lab's Prometheus feeds the matrix dashboard.
        let cell_metrics = CellMetrics::All;
        let config = Config {
            grpc_address: grpc,
            http_address: http,
            settings,
            tls,
            auth,
            discovery,
            cell_metrics,
            node_conditions: conditions,
        };
        let task = tokio::spawn(kubenurse_aggregator::run(config, kube, async move {
            let _ = stopped.await;
        }));
        let url = format!("http://{http}/healthz");
        eventually("aggregator listening", Duration::from_secs(10), || {
            let url = url.clone();
            async move { http_get(&url).await.ok().map(|_| ()) }
        })
        .await?;
        Ok(Self { grpc, http, stop: Some(stop), task })
    }

    /// The chart's default on the lab's addresses for `subnet` (gRPC `127.0.S.254:50051`, HTTP
    /// `:18080`): `--auth tokenreview` against `api`, pushed discovery for agents checking 10
    /// neighbours ([`crate::cluster::ClusterSpec::streaming`]), ticking every 100 ms.
    pub async fn reviewing(api: &FakeApiServer, subnet: u8) -> anyhow::Result<Self> {
        let ip = format!("127.0.{subnet}.254");
        let settings = Settings { tick_micros: 100_000, ..Settings::default() };
        let options = AggregatorOptions::token_review(api, 10)?;
        Self::start_with(format!("{ip}:50051").parse()?, format!("{ip}:18080").parse()?, settings, options).await
    }

    /// `http://…` base of its HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// What agents put in `KUBENURSE_AGGREGATOR_URL`.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// GET a JSON document of its API.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        let (code, body) = http_get(&format!("{}{path}", self.url())).await?;
        Ok((code, serde_json::from_str(&body)?))
    }

    /// `kubenurse_aggregator_auth_failures_total{reason}` now.
    pub async fn auth_failures(&self, reason: &str) -> anyhow::Result<f64> {
        let (_, text) = http_get(&format!("{}/metrics", self.url())).await?;
        let line = format!("kubenurse_aggregator_auth_failures_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {reason} counter in /metrics"))
    }

    /// Graceful stop (GoAway to every agent).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}

impl Drop for LocalAggregator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
