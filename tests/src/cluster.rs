//! A local cluster on one machine: the fake API server plus one in-process agent per simulated
//! node, each on its own loopback address (127.0.S.N) with the same ports, as in pods.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use kubenurse_agent::checks::host_port;
use kubenurse_agent::config::Config;
use kubenurse_agent::AgentError;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::apiserver::{kubenurse_pod, node, FakeApiServer};
use crate::proxy::{Fault, FaultProxy, Rule};

/// Namespace the simulated kubenurse pods live in.
pub const NAMESPACE: &str = "kubenurse";
/// Zones the simulated nodes are spread over.
pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

/// One simulated node's identity.
#[derive(Debug, Clone)]
pub struct SimNode {
    /// Node name (`node-01`, …).
    pub node: String,
    /// Its kubenurse pod.
    pub pod: String,
    /// Its pod address (what neighbours check; a fault proxy's when the cluster is proxied).
    pub ip: IpAddr,
    /// Where its agent listens (= `ip`, or a second address behind the proxy).
    pub bind: IpAddr,
    /// Its zone.
    pub zone: String,
}

impl SimNode {
    /// Node number `i` (1-based) on subnet `127.0.subnet.0/24`.
    pub fn new(subnet: u8, i: u8) -> Self {
        Self {
            node: format!("node-{i:02}"),
            pod: format!("kubenurse-{i:02}"),
            ip: IpAddr::V4(Ipv4Addr::new(127, 0, subnet, i)),
            bind: IpAddr::V4(Ipv4Addr::new(127, 0, subnet, i)),
            zone: ZONES[usize::from(i) % ZONES.len()].to_string(),
        }
    }
}

/// The nodes the neighbour filter makes `own` check, among `present` (the expected targets).
pub fn ring_targets<'a>(own: &SimNode, present: impl IntoIterator<Item = &'a SimNode>, limit: usize) -> Vec<String> {
    use kubenurse_agent::ring::{node_hash, select_neighbours, Neighbour};
    let others = present
        .into_iter()
        .filter(|n| n.node != own.node)
        .map(|n| Neighbour {
            pod_name: n.pod.clone(),
            pod_ip: n.ip.to_string(),
            host_ip: n.ip.to_string(),
            node_name: n.node.clone(),
            node_hash: node_hash(&n.node),
        })
        .collect();
    select_neighbours(&own.node, others, limit).into_iter().map(|n| n.node_name).collect()
}

/// The environment an agent of `sim` gets (the same variables a pod would have).
pub fn agent_env(
    api: &FakeApiServer,
    sim: &SimNode,
    port: u16,
    interval: &str,
    limit: usize,
) -> HashMap<String, String> {
    let me = format!("http://{}", host_port(&sim.ip.to_string(), port));
    HashMap::from([
        ("KUBENURSE_INGRESS_URL".into(), me.clone()),
        ("KUBENURSE_SERVICE_URL".into(), me),
        ("KUBENURSE_NAMESPACE".into(), NAMESPACE.into()),
        ("KUBENURSE_NEIGHBOUR_FILTER".into(), "app.kubernetes.io/name=kubenurse".into()),
        ("KUBENURSE_NEIGHBOUR_LIMIT".into(), limit.to_string()),
        ("KUBENURSE_CHECK_INTERVAL".into(), interval.into()),
        ("KUBENURSE_CHECK_TIMEOUT".into(), "2s".into()),
        ("KUBENURSE_SHUTDOWN_DURATION".into(), "0s".into()),
        ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
        ("KUBERNETES_SERVICE_PORT".into(), api.addr().port().to_string()),
        ("KUBERNETES_SERVICE_DNS".into(), "localhost".into()),
        ("KUBENURSE_SERVICE_ACCOUNT_DIR".into(), api.service_account_dir().display().to_string()),
        ("KUBENURSE_POD_NAME".into(), sim.pod.clone()),
        ("KUBENURSE_NODE_NAME".into(), sim.node.clone()),
        ("KUBENURSE_BIND_ADDRESS".into(), sim.bind.to_string()),
        ("KUBENURSE_HTTP_PORT".into(), port.to_string()),
    ])
}

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
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self { nodes: 5, subnet: 1, port: 8080, interval: "1s".into(), limit: 10, env: Vec::new(), proxied: false }
    }
}

impl LocalCluster {
    /// Starts the API server, creates nodes and pods, and starts every agent.
    pub async fn start(spec: &ClusterSpec, dir: &Path) -> anyhow::Result<Self> {
        let api = FakeApiServer::start(dir).await?;
        let mut nodes = Vec::new();
        let mut agents = Vec::new();
        anyhow::ensure!(!spec.proxied || spec.subnet <= 155, "a proxied cluster needs subnet <= 155");
        let mut proxies = Vec::new();
        for i in 1..=spec.nodes {
            let mut sim = SimNode::new(spec.subnet, i);
            if spec.proxied {
                sim.bind = IpAddr::V4(Ipv4Addr::new(127, 0, spec.subnet + 100, i));
                let listen = std::net::SocketAddr::new(sim.ip, spec.port);
                proxies.push(FaultProxy::start(listen, std::net::SocketAddr::new(sim.bind, spec.port)).await?);
            }
            api.apply_node(node(&sim.node, &sim.zone));
            api.apply_pod(kubenurse_pod(NAMESPACE, &sim.pod, &sim.node, &sim.ip.to_string()));
            nodes.push(sim);
        }
        // Agents on real nodes do not start their rounds in the same millisecond; here they share
        // two cores, so spread their starts over one interval to avoid synchronised bursts.
        let interval = kubenurse_common::duration::parse_go_duration(&spec.interval).unwrap_or(Duration::from_secs(1));
        let stagger = (interval / u32::from(spec.nodes.max(1))).min(Duration::from_millis(200));
        for sim in &nodes {
            if !agents.is_empty() {
                tokio::time::sleep(stagger).await;
            }
            let mut env = agent_env(&api, sim, spec.port, &spec.interval, spec.limit);
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
        anyhow::ensure!(self.proxies.len() == self.nodes.len(), "cluster is not proxied");
        for (sim, proxy) in self.nodes.iter().zip(&self.proxies) {
            let rule = match zone {
                None => Rule::default(),
                Some(z) => {
                    let inside = sim.zone == z;
                    let sources = self.nodes.iter().filter(|n| (n.zone == z) != inside).map(|n| n.bind).collect();
                    Rule { fault: Fault::Refuse, only_from: Some(sources) }
                }
            };
            proxy.set(rule);
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

/// A plain-HTTP GET for tests: status and body, with a timeout.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    http_get_with(url, &[]).await
}

/// A plain-HTTP GET with extra headers.
pub async fn http_get_with(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
    let uri: http::Uri = url.parse()?;
    let host = uri.host().ok_or_else(|| anyhow::anyhow!("no host in {url}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(80);
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, host_port(&host, port));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender.send_request(req.body(Empty::<Bytes>::new())?).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await?
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
