//! The whole local system: fake API server, agents behind fault proxies, and the aggregator on
//! 127.0.S.254 (gRPC 50051, HTTP on the agents' port). Used by `kubenurse-lab` and the
//! scenario tests.

use std::time::Duration;

use kubenurse_aggregator::state::Settings;

use crate::aggregator::LocalAggregator;
use crate::cluster::{ClusterSpec, LocalCluster};

/// A running lab.
pub struct Lab {
    /// API server, agents, proxies.
    pub cluster: LocalCluster,
    /// The aggregator.
    pub aggregator: LocalAggregator,
    /// The agents' check interval.
    pub interval: Duration,
}

impl Lab {
    /// Starts the aggregator, then the cluster streaming to it.
    pub async fn start(mut spec: ClusterSpec, settings: Settings, dir: &std::path::Path) -> anyhow::Result<Self> {
        let interval = kubenurse_agent::duration::parse_go_duration(&spec.interval)?;
        let ip = format!("127.0.{}.254", spec.subnet);
        let aggregator =
            LocalAggregator::start(format!("{ip}:50051").parse()?, format!("{ip}:{}", spec.port).parse()?, settings)
                .await?;
        spec.env.push(("KUBENURSE_AGGREGATOR_URL".into(), aggregator.grpc_url()));
        let cluster = LocalCluster::start(&spec, dir).await?;
        Ok(Self { cluster, aggregator, interval })
    }

    /// Stops everything.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cluster.stop().await?;
        self.aggregator.stop().await
    }
}
