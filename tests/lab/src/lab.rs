//! The whole local system: fake API server, agents behind fault proxies, and the aggregator on
//! 127.0.S.254 (gRPC 50051, HTTP on the agents' port). Used by `kubenurse-lab` and the
//! scenario tests.

use std::str::FromStr;
use std::time::Duration;

use kubenurse_aggregator::conditions::plan::Policy;
use kubenurse_aggregator::conditions::ConditionsConfig;
use kubenurse_aggregator::state::Settings;

use kubenurse_aggregator::auth::DEFAULT_AUDIENCE;

use crate::aggregator::{AggregatorOptions, LocalAggregator};
use crate::cluster::{ClusterSpec, LocalCluster};
use crate::simulated::SimulatedAgents;
use kubenurse_testkit::apiserver::{FakeApiServer, Faults};
use kubenurse_testkit::proxy::{Fault, Rule};
use kubenurse_testkit::sim::NAMESPACE;

/// A fault to inject, as typed on the lab's command line, its stdin or its control endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultSpec {
    /// `delay:NODE:80ms`: the node's inbound path takes that much longer.
    Delay(String, Duration),
    /// `refuse:NODE`: connections to the node are refused.
    Refuse(String),
    /// `drop:NODE`: connections to the node are black-holed.
    Drop(String),
    /// `loss:NODE:20%`: that share of UDP datagrams to the node is dropped (TCP passes).
    Loss(String, u8),
    /// `cordon:NODE` / `uncordon:NODE`.
    Cordon(String, bool),
    /// `delete:NODE`: its agent stops, its pod and node are deleted.
    Delete(String),
    /// `partition:ZONE`: the zone is cut off from the others.
    Partition(String),
    /// `apiserver:slow:500ms`.
    ApiSlow(Duration),
    /// `apiserver:fail`.
    ApiFail,
    /// `heal`: every fault above cleared (deleted nodes stay deleted).
    Heal,
    /// `heal:SPEC`: that one fault cleared, the others kept.
    HealOne(Box<FaultSpec>),
}

impl std::fmt::Display for FaultSpec {
    /// The syntax it parses from.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let go = |d: &Duration| format!("{}ms", d.as_millis());
        match self {
            Self::Delay(n, d) => write!(f, "delay:{n}:{}", go(d)),
            Self::Refuse(n) => write!(f, "refuse:{n}"),
            Self::Drop(n) => write!(f, "drop:{n}"),
            Self::Loss(n, p) => write!(f, "loss:{n}:{p}%"),
            Self::Cordon(n, true) => write!(f, "cordon:{n}"),
            Self::Cordon(n, false) => write!(f, "uncordon:{n}"),
            Self::Delete(n) => write!(f, "delete:{n}"),
            Self::Partition(z) => write!(f, "partition:{z}"),
            Self::ApiSlow(d) => write!(f, "apiserver:slow:{}", go(d)),
            Self::ApiFail => f.write_str("apiserver:fail"),
            Self::Heal => f.write_str("heal"),
            Self::HealOne(one) => write!(f, "heal:{one}"),
        }
    }
}

/// The lab's `--node-conditions on`: the default share cap, a hold of five intervals (so a
/// healed fault clears within a minute at the lab's pace).
pub fn lab_conditions(interval: Duration) -> ConditionsConfig {
    let min_hold_micros = i64::try_from((interval * 5).as_micros()).unwrap_or(i64::MAX);
    ConditionsConfig { dry_run: false, policy: Policy { max_share: 0.1, min_hold_micros } }
}

/// The chart's alert rules as a plain rules file (kept equal to the chart by its tests).
pub const ALERT_RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../alerts/kubenurse.rules.yaml");

/// The accepted forms, for error messages and `--help`.
pub const FAULT_SYNTAX: &str =
    "delay:NODE:DURATION | refuse:NODE | drop:NODE | loss:NODE:PERCENT% | cordon:NODE | uncordon:NODE | \
delete:NODE | partition:ZONE | apiserver:slow:DURATION | apiserver:fail | heal | heal:SPEC";

impl FromStr for FaultSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(one) = s.trim().strip_prefix("heal:") {
            return match one.parse()? {
                Self::Heal | Self::HealOne(_) => Err(format!("heal:{one}: heal one fault, e.g. heal:refuse:node-02")),
                spec => Ok(Self::HealOne(Box::new(spec))),
            };
        }
        let parts: Vec<&str> = s.trim().split(':').collect();
        let dur = |v: &str| {
            kubenurse_common::duration::parse_go_duration(v.trim_start_matches('+')).map_err(|e| format!("{v:?}: {e}"))
        };
        let name = |v: &str| if v.is_empty() { Err("empty name".to_string()) } else { Ok(v.to_string()) };
        match parts.as_slice() {
            ["delay", n, d] => Ok(Self::Delay(name(n)?, dur(d)?)),
            ["refuse", n] => Ok(Self::Refuse(name(n)?)),
            ["drop", n] => Ok(Self::Drop(name(n)?)),
            ["loss", n, p] => {
                let percent = p.strip_suffix('%').and_then(|v| v.parse::<u8>().ok()).filter(|v| (1..=100).contains(v));
                Ok(Self::Loss(name(n)?, percent.ok_or_else(|| format!("{p:?}: expected a percentage 1%-100%"))?))
            }
            ["cordon", n] => Ok(Self::Cordon(name(n)?, true)),
            ["uncordon", n] => Ok(Self::Cordon(name(n)?, false)),
            ["delete", n] => Ok(Self::Delete(name(n)?)),
            ["partition", z] => Ok(Self::Partition(name(z)?)),
            ["apiserver", "slow", d] => Ok(Self::ApiSlow(dur(d)?)),
            ["apiserver", "fail"] => Ok(Self::ApiFail),
            ["heal"] => Ok(Self::Heal),
            _ => Err(format!("unknown fault {s:?}; expected {FAULT_SYNTAX}")),
        }
    }
}

/// A running lab.
pub struct Lab {
    /// API server, agents, proxies.
    pub cluster: LocalCluster,
    /// The aggregator.
    pub aggregator: LocalAggregator,
    /// The agents' check interval.
    pub interval: Duration,
    /// The agents' neighbour limit.
    pub limit: usize,
    /// Simulated agents of a big cluster, if any.
    pub simulated: Option<SimulatedAgents>,
    /// Faults in force, in the order applied (they compose until healed).
    active: Vec<FaultSpec>,
}

impl Lab {
    /// Starts the API server, the aggregator reviewing agents' tokens with it (the chart's
    /// default, `--auth tokenreview`) and marking suspected nodes with the Node condition
    /// ([`lab_conditions`]), then the cluster streaming to it.
    pub async fn start(mut spec: ClusterSpec, settings: Settings, dir: &std::path::Path) -> anyhow::Result<Self> {
        let interval = kubenurse_common::duration::parse_go_duration(&spec.interval)?;
        let ip = format!("127.0.{}.254", spec.subnet);
        let api = FakeApiServer::start(dir).await?;
        let mut options = AggregatorOptions::token_review(&api, spec.limit)?;
        options.conditions = Some(lab_conditions(interval));
        let (grpc, http) = (format!("{ip}:50051").parse()?, format!("{ip}:{}", spec.port).parse()?);
        let aggregator = LocalAggregator::start_with(grpc, http, settings, options).await?;
        spec.env.push(("KUBENURSE_AGGREGATOR_URL".into(), aggregator.grpc_url()));
        spec.token_audience = Some(DEFAULT_AUDIENCE.into());
        let cluster = LocalCluster::start_on(api, &spec, dir).await?;
        Ok(Self { cluster, aggregator, interval, limit: spec.limit, simulated: None, active: Vec::new() })
    }

    /// Makes the cluster big: `count` more realistic Nodes whose agents are simulated (see
    /// [`crate::simulated`]), with `churn_per_second` kubelet-like Node status updates.
    pub async fn simulate(&mut self, count: usize, churn_per_second: u32) -> anyhow::Result<()> {
        let (api, url) = (&self.cluster.api, self.aggregator.grpc_url());
        let sims =
            SimulatedAgents::start(api, &url, &self.cluster.nodes, count, self.interval, self.limit, churn_per_second);
        self.simulated = Some(sims.await?);
        Ok(())
    }

    /// Faults in force, in the order applied.
    pub fn active_faults(&self) -> &[FaultSpec] {
        &self.active
    }

    /// Every proxy's rules from the faults in force: they compose (a delay stays while a
    /// partition comes and goes).
    fn proxy_rules(&self) -> Vec<Vec<Rule>> {
        let c = &self.cluster;
        c.nodes
            .iter()
            .map(|sim| {
                self.active
                    .iter()
                    .filter_map(|f| match f {
                        FaultSpec::Delay(n, d) if *n == sim.node => {
                            Some(Rule { fault: Fault::Delay(*d), only_from: None })
                        }
                        FaultSpec::Refuse(n) if *n == sim.node => Some(Rule { fault: Fault::Refuse, only_from: None }),
                        FaultSpec::Drop(n) if *n == sim.node => Some(Rule { fault: Fault::Blackhole, only_from: None }),
                        FaultSpec::Loss(n, p) if *n == sim.node => {
                            Some(Rule { fault: Fault::Loss(*p), only_from: None })
                        }
                        FaultSpec::Partition(z) => Some(c.partition_rule(sim, z)),
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    }

    /// The API server's faults from those in force: failing wins, the slowest delay counts.
    fn api_faults(&self) -> Faults {
        let failing = self.active.contains(&FaultSpec::ApiFail);
        let delay = self
            .active
            .iter()
            .filter_map(|f| if let FaultSpec::ApiSlow(d) = f { Some(*d) } else { None })
            .max()
            .unwrap_or_default();
        Faults { delay, failing }
    }

    /// Brings the proxies and the API server to the faults in force.
    fn enforce(&self) -> anyhow::Result<()> {
        self.cluster.api.set_faults(self.api_faults());
        if self.cluster.proxied() {
            self.cluster.set_rules(self.proxy_rules())?;
        }
        Ok(())
    }

    /// Applies a fault on top of those in force (or heals); returns what was done, for the
    /// operator.
    pub async fn apply(&mut self, fault: &FaultSpec) -> anyhow::Result<String> {
        let node_exists = |n: &str| self.cluster.nodes.iter().any(|s| s.node == n);
        let done = match fault {
            FaultSpec::Delay(n, _) | FaultSpec::Refuse(n) | FaultSpec::Drop(n) | FaultSpec::Loss(n, _) => {
                anyhow::ensure!(node_exists(n), "no node {n}");
                anyhow::ensure!(self.cluster.proxied(), "the cluster is not proxied");
                match fault {
                    FaultSpec::Delay(_, d) => format!("{n}: inbound delayed by {d:?}"),
                    FaultSpec::Refuse(_) => format!("{n}: refusing connections"),
                    FaultSpec::Loss(_, p) => format!("{n}: dropping {p}% of inbound UDP datagrams"),
                    _ => format!("{n}: black-holing connections"),
                }
            }
            FaultSpec::Partition(z) => {
                anyhow::ensure!(self.cluster.nodes.iter().any(|s| s.zone == *z), "no zone {z}");
                anyhow::ensure!(self.cluster.proxied(), "the cluster is not proxied");
                format!("{z}: partitioned from the other zones")
            }
            FaultSpec::Cordon(n, on) => {
                anyhow::ensure!(self.cluster.api.cordon(n, *on), "no node {n}");
                if !on {
                    self.active.retain(|f| *f != FaultSpec::Cordon(n.clone(), true));
                    return Ok(format!("{n}: uncordoned"));
                }
                format!("{n}: cordoned")
            }
            FaultSpec::Delete(n) => {
                let c = &mut self.cluster;
                let i = c
                    .agents
                    .iter()
                    .position(|a| a.sim.node == *n)
                    .ok_or_else(|| anyhow::anyhow!("no running node {n}"))?;
                let agent = c.agents.remove(i);
                let pod = agent.sim.pod.clone();
                agent.stop().await?;
                c.api.delete_pod(NAMESPACE, &pod);
                c.api.delete_node(n);
                // Permanent: nothing to heal.
                return Ok(format!("{n}: agent stopped, pod and node deleted"));
            }
            FaultSpec::ApiSlow(d) => format!("API server: every answer delayed by {d:?}"),
            FaultSpec::ApiFail => "API server: failing every request (503)".into(),
            FaultSpec::Heal => {
                for f in std::mem::take(&mut self.active) {
                    if let FaultSpec::Cordon(n, true) = f {
                        let _ = self.cluster.api.cordon(&n, false);
                    }
                }
                self.enforce()?;
                return Ok("healed: proxies pass, API server healthy, nodes uncordoned".into());
            }
            FaultSpec::HealOne(one) => {
                let before = self.active.len();
                self.active.retain(|f| f != &**one);
                anyhow::ensure!(self.active.len() < before, "{one} is not in force");
                if let FaultSpec::Cordon(n, true) = &**one {
                    let _ = self.cluster.api.cordon(n, false);
                }
                self.enforce()?;
                return Ok(format!("healed {one}; in force: {}", self.describe_active()));
            }
        };
        if !self.active.contains(fault) {
            self.active.push(fault.clone());
        }
        self.enforce()?;
        Ok(done)
    }

    /// The faults in force, for a status line (`none` when healthy).
    pub fn describe_active(&self) -> String {
        if self.active.is_empty() {
            return "none".into();
        }
        self.active.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }

    /// A Prometheus configuration scraping every agent (labelled with `node` and `zone`, as the
    /// chart's ServiceMonitor labels them) and the aggregator, every second, both in namespace
    /// `kubenurse` as the checked-in alert rules select them, with those rules loaded
    /// ([`ALERT_RULES`]) and evaluated every second.
    pub fn prometheus_config(&self) -> String {
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n");
        config.push_str(&format!("rule_files: ['{ALERT_RULES}']\nscrape_configs:\n"));
        config.push_str("  - job_name: kubenurse\n    static_configs:\n");
        for a in &self.cluster.agents {
            let target = kubenurse_agent::checks::host_port(&a.sim.bind.to_string(), a.port);
            config.push_str(&format!(
                "      - targets: ['{target}']\n        labels: {{namespace: '{NAMESPACE}', node: '{}', zone: '{}'}}\n",
                a.sim.node, a.sim.zone
            ));
        }
        config.push_str(&format!(
            "  - job_name: kubenurse-aggregator\n    static_configs:\n      - targets: ['{}']\n        labels: {{namespace: '{NAMESPACE}'}}\n",
            self.aggregator.http
        ));
        config
    }

    /// Stops everything.
    pub async fn stop(self) -> anyhow::Result<()> {
        drop(self.simulated);
        // The aggregator first: its watches end before the fake API server they watch does.
        let aggregator = self.aggregator.stop().await;
        self.cluster.stop().await?;
        aggregator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_faults() {
        assert_eq!("delay:node-03:+80ms".parse(), Ok(FaultSpec::Delay("node-03".into(), Duration::from_millis(80))));
        assert_eq!("refuse:node-01".parse(), Ok(FaultSpec::Refuse("node-01".into())));
        assert_eq!("partition:zone-b".parse(), Ok(FaultSpec::Partition("zone-b".into())));
        assert_eq!("loss:node-05:20%".parse(), Ok(FaultSpec::Loss("node-05".into(), 20)));
        for bad in ["loss:node-05:20", "loss:node-05:0%", "loss:node-05:101%", "loss:node-05"] {
            assert!(bad.parse::<FaultSpec>().is_err(), "{bad:?}");
        }
        assert_eq!("apiserver:slow:2s".parse(), Ok(FaultSpec::ApiSlow(Duration::from_secs(2))));
        assert_eq!("apiserver:fail".parse(), Ok(FaultSpec::ApiFail));
        assert_eq!("heal".parse(), Ok(FaultSpec::Heal));
        assert_eq!(
            "heal:delay:node-07:80ms".parse(),
            Ok(FaultSpec::HealOne(Box::new(FaultSpec::Delay("node-07".into(), Duration::from_millis(80)))))
        );
        assert!("heal:heal".parse::<FaultSpec>().is_err());
        for spec in [
            "delay:node-07:80ms",
            "refuse:node-01",
            "partition:zone-c",
            "apiserver:slow:2000ms",
            "heal:drop:node-02",
            "loss:node-05:20%",
        ] {
            assert_eq!(spec.parse::<FaultSpec>().map(|f| f.to_string()), Ok(spec.to_string()), "prints as it parses");
        }
        for bad in ["delay:node-03", "delay:node-03:fast", "refuse:", "explode:node-01", ""] {
            assert!(bad.parse::<FaultSpec>().is_err(), "{bad:?}");
        }
    }
}
