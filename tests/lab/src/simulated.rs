//! The rest of a big lab cluster: thousands of realistic Nodes (the kit's `scale`) whose agents
//! are simulated. Each simulated agent has a projected token of its own pod and node, streams
//! to the aggregator like a real one (hello with its ring targets, a batch of results every
//! interval) and its pod's address is one of the real agents', so the real agents' path checks
//! to it are answered. Real agents check and are checked through real HTTP; the simulated ones
//! only add the load and the size an aggregator of a 5,000-node cluster sees.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kubenurse_aggregator::auth::DEFAULT_AUDIENCE;
use kubenurse_neighbours::ring::{node_hash, Neighbour, Ring};
use kubenurse_proto::v1::nurse_client::NurseClient;
use kubenurse_proto::v1::{agent_message, AgentMessage, CheckResult, Hello, Outcome, ResultBatch, RoundEnd};
use kubenurse_proto::{CheckKind, PROTOCOL_REVISION};
use kubenurse_testkit::apiserver::{FakeApiServer, TokenRequest};
use kubenurse_testkit::scale::{churn, node_name, pod_name, populate};
use kubenurse_testkit::sim::{SimNode, NAMESPACE, SERVICE_ACCOUNT};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cluster::TOKEN_TTL;

/// Simulated streams sharing one HTTP/2 connection, as many agents' would through a Service.
const STREAMS_PER_CONNECTION: usize = 100;

/// The simulated agents and the kubelet-like churn; stopped when dropped.
pub struct SimulatedAgents {
    /// How many.
    pub count: usize,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SimulatedAgents {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn micros_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// One round's results of a simulated agent: every target ok in 0.5–3.5 ms (a fixed spread
/// per cell, so the matrix has texture), and the round's end.
fn round_batch(targets: &[Neighbour], round: u64, seed: u64) -> ResultBatch {
    let now = micros_now();
    let results = targets
        .iter()
        .map(|t| {
            let kind = CheckKind::Path { node: t.node_name.clone() };
            let spread = (t.node_hash ^ seed).wrapping_add(round) % 3000;
            let mut r = CheckResult {
                check: Some(kind.to_wire()),
                check_type: kind.label().into_owned(),
                target_node: t.node_name.clone(),
                round,
                start_unix_micros: now,
                duration_micros: 500 + spread,
                status_code: 200,
                ..CheckResult::default()
            };
            r.set_outcome(Outcome::Ok);
            r
        })
        .collect();
    let end = RoundEnd { round, all_ok: true, neighbourhood_state: "ok".into(), end_unix_micros: now };
    ResultBatch { results, round_ends: vec![end], ..ResultBatch::default() }
}

impl SimulatedAgents {
    /// Adds `count` realistic Nodes with agent pods to `api` (pod addresses borrowed from
    /// `real`, round robin) and starts their simulated agents streaming to `grpc_url` every
    /// `interval` with `limit` targets on the shared ring; `churn_per_second` Node status
    /// updates (0: none) run as long as they do.
    pub async fn start(
        api: &FakeApiServer,
        grpc_url: &str,
        real: &[SimNode],
        count: usize,
        interval: Duration,
        limit: usize,
        churn_per_second: u32,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!real.is_empty(), "simulated agents borrow the real agents' addresses: start some");
        let borrowed = |i: usize| real[i % real.len()].ip.to_string();
        populate(api, count, borrowed);
        // The ring over every agent pod, real and simulated, as discovery sees it.
        let mut eligible: BTreeMap<String, Vec<Neighbour>> = BTreeMap::new();
        let mut add = |node: String, pod: String, ip: String| {
            let n = Neighbour {
                pod_name: pod,
                pod_ip: ip.clone(),
                host_ip: ip,
                node_hash: node_hash(&node),
                node_name: node,
            };
            eligible.insert(n.node_name.clone(), vec![n]);
        };
        for sim in real {
            add(sim.node.clone(), sim.pod.clone(), sim.ip.to_string());
        }
        for i in 0..count {
            add(node_name(i), pod_name(i), borrowed(i));
        }
        let ring = Ring::new(eligible);
        let mut channels = Vec::new();
        for _ in 0..count.div_ceil(STREAMS_PER_CONNECTION) {
            channels.push(tonic::transport::Endpoint::from_shared(grpc_url.to_string())?.connect_lazy());
        }
        let mut tasks = Vec::with_capacity(count + 1);
        let started = Instant::now();
        for i in 0..count {
            let (node, pod) = (node_name(i), pod_name(i));
            let token = api.issue_token(&TokenRequest {
                namespace: NAMESPACE.into(),
                service_account: SERVICE_ACCOUNT.into(),
                pod: Some(pod.clone()),
                node: Some(node.clone()),
                audience: DEFAULT_AUDIENCE.into(),
                ttl: TOKEN_TTL,
            });
            let targets = ring.targets_of(&node, &pod, limit);
            let hello = Hello {
                protocol: PROTOCOL_REVISION,
                node: node.clone(),
                pod: pod.clone(),
                pod_ip: borrowed(i),
                host_ip: borrowed(i),
                zone: format!("eu-west-1{}", ['a', 'b', 'c'][i % 3]),
                agent_version: "simulated".into(),
                interval_micros: interval.as_micros() as u64,
                neighbour_limit: limit as u32,
                targets: targets.iter().map(|t| t.node_name.clone()).collect(),
                wants_targets: false,
            };
            let channel = channels[i % channels.len()].clone();
            // Spread the agents' rounds over the interval, as real nodes' are.
            let offset = interval.mul_f64(i as f64 / count as f64);
            tasks.push(tokio::spawn(simulate(channel, token, hello, targets, interval, offset, i as u64)));
        }
        if churn_per_second > 0 {
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    churn(&api, count, churn_per_second, Duration::from_secs(3600)).await;
                }
            }));
        }
        tracing::info!(count, took_ms = started.elapsed().as_millis() as u64, "simulated agents started");
        Ok(Self { count, tasks })
    }
}

/// One simulated agent: (re)connects with its token, says hello, sends a round every interval.
async fn simulate(
    channel: tonic::transport::Channel,
    token: String,
    hello: Hello,
    targets: Vec<Neighbour>,
    interval: Duration,
    offset: Duration,
    seed: u64,
) {
    tokio::time::sleep(offset).await;
    let mut round = 0u64;
    loop {
        let (tx, rx) = mpsc::channel::<AgentMessage>(4);
        let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut request = tonic::Request::new(outbound);
        if let Ok(bearer) = format!("Bearer {token}").parse() {
            request.metadata_mut().insert("authorization", bearer);
        }
        if tx.send(AgentMessage { msg: Some(agent_message::Msg::Hello(hello.clone())) }).await.is_err() {
            return;
        }
        let mut client = NurseClient::new(channel.clone());
        let stream = tokio::spawn(async move {
            if let Ok(resp) = client.report(request).await {
                let mut inbound = resp.into_inner();
                while let Ok(Some(_)) = inbound.message().await {}
            }
        });
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            round += 1;
            let batch = round_batch(&targets, round, seed);
            if stream.is_finished()
                || tx.send(AgentMessage { msg: Some(agent_message::Msg::Batch(batch)) }).await.is_err()
            {
                break;
            }
        }
        // The aggregator went away or refused us: reconnect after a while, as agents do.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
