//! Simulated agents for the aggregator's benches: streams that say hello and send what the
//! bench gives them, each over its own HTTP/2 connection as an agent's is in a cluster
//! (`BENCH_STREAMS_PER_CONNECTION` shares connections, to tell the connections' cost apart).

use std::time::{Duration, Instant};

use kubenurse_proto::v1::nurse_client::NurseClient;
use kubenurse_proto::v1::{agent_message, AgentMessage, CheckResult, Hello, Outcome, ResultBatch, RoundEnd};
use kubenurse_testkit::http::http_get;
use tokio::sync::mpsc;

/// Each simulated agent's sender and its targets.
pub type Agents = Vec<(mpsc::Sender<AgentMessage>, Vec<String>)>;

/// The name of simulated node `i`.
pub fn node(i: usize) -> String {
    format!("node-{i:05}")
}

/// Results the aggregator (or the bare sink) at `http` has recorded so far.
pub async fn ingested(http: &str) -> u64 {
    // /api/v1/status is cheap; /metrics would recompute 100,000 per-cell gauges every poll.
    let Ok((_, body)) = http_get(&format!("http://{http}/api/v1/status")).await else { return 0 };
    serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["results_ingested"].as_u64()).unwrap_or(0)
}

/// `nodes` agents streaming to `grpc`, each targeting the next `limit` nodes on a ring.
pub async fn connect_agents(grpc: &str, nodes: usize, limit: usize) -> anyhow::Result<Agents> {
    let per_connection: usize =
        std::env::var("BENCH_STREAMS_PER_CONNECTION").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let connections = nodes.div_ceil(per_connection);
    let mut channels = Vec::with_capacity(connections);
    let mut senders = Vec::with_capacity(nodes);
    for i in 0..nodes {
        // Each connection says hello as soon as it is open, as an agent's does: connecting all
        // 10,000 first would outlast the aggregator's hello deadline for the first ones.
        if channels.len() < connections {
            channels.push(tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?.connect().await?);
        }
        let (tx, rx) = mpsc::channel::<AgentMessage>(4);
        let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut client = NurseClient::new(channels[i % connections].clone());
        let targets: Vec<String> = (1..=limit).map(|k| node((i + k) % nodes)).collect();
        let hello = Hello {
            protocol: 1,
            node: node(i),
            zone: format!("zone-{}", i % 3),
            interval_micros: 5_000_000,
            neighbour_limit: limit as u32,
            targets: targets.clone(),
            ..Hello::default()
        };
        tx.send(AgentMessage { msg: Some(agent_message::Msg::Hello(hello)) }).await?;
        tokio::spawn(async move {
            if let Ok(resp) = client.report(outbound).await {
                let mut inbound = resp.into_inner();
                while let Ok(Some(_)) = inbound.message().await {}
            }
        });
        senders.push((tx, targets));
    }
    Ok(senders)
}

/// Waits (10 s at most) until `http` answers `/healthz`.
pub async fn wait_healthy(http: &str, what: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while http_get(&format!("http://{http}/healthz")).await.is_err() {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "{what} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Sends round `round` of every agent: one passed path check of each target, lasting
/// `duration(agent, target)` µs, and the round's end.
pub async fn send_round(agents: &Agents, round: u64, duration: impl Fn(usize, usize) -> u64) -> anyhow::Result<()> {
    for (i, (tx, targets)) in agents.iter().enumerate() {
        let results = targets
            .iter()
            .enumerate()
            .map(|(k, t)| CheckResult {
                check_type: format!("path_{t}"),
                target_node: t.clone(),
                round,
                duration_micros: duration(i, k),
                outcome: Outcome::Ok.into(),
                ..CheckResult::default()
            })
            .collect();
        let end = RoundEnd { round, all_ok: true, ..RoundEnd::default() };
        let batch = ResultBatch { results, round_ends: vec![end], ..ResultBatch::default() };
        tx.send(AgentMessage { msg: Some(agent_message::Msg::Batch(batch)) }).await?;
    }
    Ok(())
}
