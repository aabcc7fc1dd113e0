//! A local cluster on one machine: the fake API server plus one in-process agent per simulated
//! node, each on its own loopback address (127.0.S.N) with the same ports, as in pods.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubenurse_agent::config::Config;
use kubenurse_agent::AgentError;
use kubenurse_testkit::apiserver::{kubenurse_pod, node, FakeApiServer, TokenRequest};
use kubenurse_testkit::http::{eventually, http_get};
use kubenurse_testkit::pki::write_file;
use kubenurse_testkit::proxy::{Fault, FaultProxy, Rule};
use kubenurse_testkit::sim::{agent_env, host_port, SimNode, NAMESPACE, SERVICE_ACCOUNT};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An agent running as a task in this process.
pub struct LocalAgent {
    /// Which node it simulates.
    pub sim: SimNode,
    /// Its HTTP port.
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AgentError>>,
}

impl LocalAgent {
    /// Starts an agent with `env` against `api`; fails on a config error.
    pub fn start(api: &FakeApiServer, sim: SimNode, port: u16, env: HashMap<String, String>) -> anyhow::Result<Self> {
        let config = Config::from_lookup(&|k| env.get(k).cloned())?;
        let (stop, stopped) = oneshot::channel::<()>();
        let kube = api.kube_config();
        let task = tokio::spawn(kubenurse_agent::run(config, Some(kube), async move {
            let _ = stopped.await;
        }));
        Ok(Self { sim, port, stop: Some(stop), task })
    }

    /// Base URL of its HTTP listener.
    pub fn url(&self) -> String {
        format!("http://{}", host_port(&self.sim.ip.to_string(), self.port))
    }

    /// Graceful stop; returns the agent's own result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fake API server with `n` nodes and one agent each.
pub struct LocalCluster {
    /// The API server.
    pub api: FakeApiServer,
    /// Agents by position (node-01 first).
    pub agents: Vec<LocalAgent>,
    /// Simulated nodes, also those whose agent was stopped.
    pub nodes: Vec<SimNode>,
    /// Where the kit's files live.
    pub dir: PathBuf,
    /// Fault proxies by node position (empty unless the spec asked for them).
    pub proxies: Vec<FaultProxy>,
}

/// What a local cluster looks like.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Simulated nodes.
    pub nodes: u8,
    /// Third octet of the agents' addresses (tests running at once use different ones).
    pub subnet: u8,
    /// Every agent's HTTP port.
    pub port: u16,
    /// `KUBENURSE_CHECK_INTERVAL`.
    pub interval: String,
    /// `KUBENURSE_NEIGHBOUR_LIMIT`.
    pub limit: usize,
    /// Variables set on every agent on top of the defaults (an empty value removes one).
    pub env: Vec<(String, String)>,
    /// Put a fault proxy on each pod address (agents then listen on 127.0.(S+100).N).
    pub proxied: bool,
    /// Give each agent a projected token of this audience for the aggregator
    /// (`KUBENURSE_AGGREGATOR_TOKEN_FILE`), issued by the fake API server for its pod and node.
    pub token_audience: Option<String>,
    /// Give each agent a client certificate for an aggregator with `--auth mtls`:
    /// `DIR/<node>.crt` and `DIR/<node>.key` (`KUBENURSE_AGGREGATOR_CERT`, `_KEY`).
    pub client_cert_dir: Option<PathBuf>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            nodes: 5,
            subnet: 1,
            port: 8080,
            interval: "1s".into(),
            limit: 10,
            env: Vec::new(),
            proxied: false,
            token_audience: None,
            client_cert_dir: None,
        }
    }
}

impl ClusterSpec {
    /// The fault scenarios' cluster: `nodes` agents on `subnet`, every agent behind a fault
    /// proxy, a round a second, 10 neighbours, checks timing out after 500 ms.
    pub fn scenario(nodes: u8, subnet: u8) -> Self {
        Self {
            nodes,
            subnet,
            port: 18080,
            interval: "1s".into(),
            limit: 10,
            env: vec![("KUBENURSE_CHECK_TIMEOUT".into(), "500ms".into())],
            proxied: true,
            token_audience: None,
            client_cert_dir: None,
        }
    }

    /// `nodes` agents on `subnet` (port 18080, every 500 ms) streaming to `aggregator_url`
    /// with projected tokens of the default audience: what an authenticated install looks like.
    pub fn streaming(subnet: u8, nodes: u8, aggregator_url: &str) -> Self {
        Self {
            nodes,
            subnet,
            port: 18080,
            interval: "500ms".into(),
            limit: 10,
            env: vec![("KUBENURSE_AGGREGATOR_URL".into(), aggregator_url.into())],
            token_audience: Some(kubenurse_aggregator::auth::DEFAULT_AUDIENCE.into()),
            ..Self::default()
        }
    }
}

/// Lifetime of the tokens the cluster gives its agents (the chart's default projection).
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Issues `sim`'s agent a token for `audience` (bound to its pod and node, as the kubelet's
/// projection is) and writes it where `KUBENURSE_AGGREGATOR_TOKEN_FILE` will point.
pub fn write_agent_token(api: &FakeApiServer, dir: &Path, sim: &SimNode, audience: &str) -> anyhow::Result<PathBuf> {
    let token = api.issue_token(&TokenRequest {
        namespace: NAMESPACE.into(),
        service_account: SERVICE_ACCOUNT.into(),
        pod: Some(sim.pod.clone()),
        node: Some(sim.node.clone()),
        audience: audience.into(),
        ttl: TOKEN_TTL,
    });
    Ok(write_file(&dir.join("tokens"), &sim.node, &token)?)
}

impl LocalCluster {
    /// Starts the API server, creates nodes and pods, and starts every agent.
    pub async fn start(spec: &ClusterSpec, dir: &Path) -> anyhow::Result<Self> {
        Self::start_on(FakeApiServer::start(dir).await?, spec, dir).await
    }

    /// Same, on an API server already running (one an aggregator reviews tokens with).
    pub async fn start_on(api: FakeApiServer, spec: &ClusterSpec, dir: &Path) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        let mut agents = Vec::new();
        anyhow::ensure!(!spec.proxied || spec.subnet <= 155, "a proxied cluster needs subnet <= 155");
        let mut proxies = Vec::new();
        for i in 1..=spec.nodes {
            let mut sim = SimNode::new(spec.subnet, i);
            if spec.proxied {
                sim.bind = IpAddr::V4(Ipv4Addr::new(127, 0, spec.subnet + 100, i));
                let listen = std::net::SocketAddr::new(sim.ip, spec.port);
                let upstream = std::net::SocketAddr::new(sim.bind, spec.port);
                let udp = kubenurse_testkit::sim::udp_port(spec.port);
                proxies.push(FaultProxy::start_with_udp(listen, upstream, udp).await?);
            }
            api.apply_node(node(&sim.node, &sim.zone));
            api.apply_pod(kubenurse_pod(NAMESPACE, &sim.pod, &sim.node, &sim.ip.to_string()));
            nodes.push(sim);
        }
        // Agents on real nodes do not start their rounds in the same millisecond; here they share
        // two cores, so spread their starts over one interval to avoid synchronised bursts.
        let interval = kubenurse_common::duration::parse_go_duration(&spec.interval)
            .map_err(|e| anyhow::anyhow!("cluster interval {:?}: {e}", spec.interval))?;
        let stagger = (interval / u32::from(spec.nodes.max(1))).min(Duration::from_millis(200));
        for sim in &nodes {
            if !agents.is_empty() {
                tokio::time::sleep(stagger).await;
            }
            let mut env = agent_env(&api, sim, spec.port, &spec.interval, spec.limit);
            if let Some(audience) = &spec.token_audience {
                let token = write_agent_token(&api, dir, sim, audience)?;
                env.insert("KUBENURSE_AGGREGATOR_TOKEN_FILE".into(), token.display().to_string());
            }
            if let Some(certs) = &spec.client_cert_dir {
                let file = |ext: &str| certs.join(format!("{}.{ext}", sim.node)).display().to_string();
                env.insert("KUBENURSE_AGGREGATOR_CERT".into(), file("crt"));
                env.insert("KUBENURSE_AGGREGATOR_KEY".into(), file("key"));
            }
            for (k, v) in &spec.env {
                if v.is_empty() {
                    env.remove(k);
                } else {
                    env.insert(k.clone(), v.clone());
                }
            }
            agents.push(LocalAgent::start(&api, sim.clone(), spec.port, env)?);
        }
        for a in &agents {
            let url = format!("{}/ready", a.url());
            eventually(&format!("{} listening", a.sim.node), Duration::from_secs(20), || {
                let url = url.clone();
                async move { http_get(&url).await.ok().map(|_| ()) }
            })
            .await?;
        }
        Ok(Self { api, agents, nodes, dir: dir.to_path_buf(), proxies })
    }

    /// Sets the fault on node `node`'s inbound path (proxied clusters only).
    pub fn fault(&self, node: &str, rule: Rule) -> anyhow::Result<()> {
        let i = self.nodes.iter().position(|n| n.node == node).ok_or_else(|| anyhow::anyhow!("no node {node}"))?;
        self.proxies.get(i).ok_or_else(|| anyhow::anyhow!("cluster is not proxied"))?.set(rule);
        Ok(())
    }

    /// Cuts `zone` off from the other zones in both directions (connections closed unanswered);
    /// `None` heals every partition.
    pub fn partition(&self, zone: Option<&str>) -> anyhow::Result<()> {
        let rules = self.nodes.iter().map(|sim| zone.map(|z| self.partition_rule(sim, z)).into_iter().collect());
        self.set_rules(rules.collect())
    }

    /// The rule of `sim`'s proxy that cuts `zone` off from the other zones: it refuses the
    /// sources on the other side of the zone's border.
    pub fn partition_rule(&self, sim: &SimNode, zone: &str) -> Rule {
        let inside = sim.zone == zone;
        let sources = self.nodes.iter().filter(|n| (n.zone == zone) != inside).map(|n| n.bind).collect();
        Rule { fault: Fault::Refuse, only_from: Some(sources) }
    }

    /// Whether every node's agent is behind a fault proxy.
    pub fn proxied(&self) -> bool {
        !self.proxies.is_empty() && self.proxies.len() == self.nodes.len()
    }

    /// Sets every proxy's rules at once: `rules[i]` for node `i` (composed, see
    /// [`kubenurse_testkit::proxy::effect`]).
    pub fn set_rules(&self, rules: Vec<Vec<Rule>>) -> anyhow::Result<()> {
        anyhow::ensure!(self.proxies.len() == self.nodes.len(), "cluster is not proxied");
        anyhow::ensure!(rules.len() == self.proxies.len(), "one rule list per node");
        for (proxy, rules) in self.proxies.iter().zip(rules) {
            proxy.set_all(rules);
        }
        Ok(())
    }

    /// Stops every agent gracefully.
    pub async fn stop(self) -> anyhow::Result<()> {
        let Self { agents, api, .. } = self;
        for a in agents {
            a.stop().await?;
        }
        drop(api);
        Ok(())
    }
}
