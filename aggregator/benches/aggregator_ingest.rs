//! Aggregator benchmarks (a bench binary that prints figures):
//!
//! 1. Ingest: results per second one aggregator process sustains over gRPC from a load
//!    generator simulating 10,000 nodes × 10 neighbours (one stream per simulated agent), and
//!    its resident memory afterwards.
//!    The same load again while 8 clients loop `/api/v1/matrix` and `/metrics`: the ratio of
//!    the two rates (the API answers from snapshots, off the owner task).
//! 2. `/api/v1/matrix` with those 100,000 cells: median response time.
//!
//! The load generator runs in this process, on the same 2 cores as the aggregator: the ingest
//! figure is what the aggregator achieves while sharing the machine with its load.
//! Run: `cargo bench -p kubenurse-aggregator --bench aggregator_ingest`
//! (`BENCH_NODES`, `BENCH_ROUNDS` to change the load).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubenurse_proto::v1::nurse_client::NurseClient;
use kubenurse_proto::v1::{agent_message, AgentMessage, CheckResult, Hello, Outcome, ResultBatch, RoundEnd};
use kubenurse_testkit::http::http_get;
use kubenurse_testkit::measure::{median, proc_stat};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_kubenurse-aggregator");
const LIMIT: usize = 10;

fn node(i: usize) -> String {
    format!("node-{i:05}")
}

async fn ingested(http: &str) -> u64 {
    // /api/v1/status is cheap; /metrics would recompute 100,000 per-cell gauges every poll.
    let Ok((_, body)) = http_get(&format!("http://{http}/api/v1/status")).await else { return 0 };
    serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["results_ingested"].as_u64()).unwrap_or(0)
}

/// Sends rounds `rounds` from every simulated agent and waits until all are ingested: results/s.
async fn ingest_rounds(
    http: &str,
    senders: &[(mpsc::Sender<AgentMessage>, Vec<String>)],
    rounds: std::ops::Range<u64>,
) -> anyhow::Result<f64> {
    let base = ingested(http).await;
    let t0 = Instant::now();
    let count = rounds.end.saturating_sub(rounds.start);
    for round in rounds {
        for (i, (tx, targets)) in senders.iter().enumerate() {
            let results = targets
                .iter()
                .enumerate()
                .map(|(k, t)| CheckResult {
                    check_type: format!("path_{t}"),
                    target_node: t.clone(),
                    round,
                    duration_micros: 150 + ((i * 7 + k * 13) % 400) as u64,
                    outcome: Outcome::Ok.into(),
                    ..CheckResult::default()
                })
                .collect();
            let end = RoundEnd { round, all_ok: true, ..RoundEnd::default() };
            let batch = ResultBatch { results, round_ends: vec![end] };
            tx.send(AgentMessage { msg: Some(agent_message::Msg::Batch(batch)) }).await?;
        }
    }
    let expected = base + senders.len() as u64 * LIMIT as u64 * count;
    let mut done = ingested(http).await;
    while done < expected && t0.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        done = ingested(http).await;
    }
    Ok((done - base) as f64 / t0.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let nodes: usize = std::env::var("BENCH_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let (grpc, http) = ("127.0.0.1:18151", "127.0.0.1:18152");
    let mut child = Command::new(BIN)
        .args(["--grpc-address", grpc, "--http-address", http, "--auth", "none"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = runtime.block_on(async {
        let start = Instant::now();
        while http_get(&format!("http://{http}/healthz")).await.is_err() {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "aggregator did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A few HTTP/2 connections carry all the streams, as many agents' would through a Service.
        let mut channels = Vec::new();
        for _ in 0..nodes.div_ceil(100) {
            channels.push(tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?.connect().await?);
        }
        let mut senders = Vec::with_capacity(nodes);
        for i in 0..nodes {
            let (tx, rx) = mpsc::channel::<AgentMessage>(4);
            let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
            let mut client = NurseClient::new(channels[i % channels.len()].clone());
            let targets: Vec<String> = (1..=LIMIT).map(|k| node((i + k) % nodes)).collect();
            let hello = Hello {
                protocol: 1,
                node: node(i),
                zone: format!("zone-{}", i % 3),
                interval_micros: 5_000_000,
                neighbour_limit: LIMIT as u32,
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
        let rounds = rounds as u64;
        let alone = ingest_rounds(http, &senders, 0..rounds).await?;
        println!("ingest: {nodes} simulated agents x {LIMIT} neighbours x {rounds} rounds");
        println!("  alone: {alone:.0} results/s   [target >= 200000]");
        println!("  aggregator resident memory after ingest: {:.1} MiB   [target <= 512 MiB]", proc_stat(pid).map_or(0.0, |p| p.rss_mib()));

        // The same load again while 8 clients loop /api/v1/matrix and /metrics.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut loops = Vec::new();
        // BENCH_LOOP_METRICS=0: all 8 loop the matrix (to tell the two costs apart).
        let with_metrics = std::env::var("BENCH_LOOP_METRICS").map_or(true, |v| v != "0");
        for k in 0..8 {
            let path = if k % 2 == 0 || !with_metrics { "/api/v1/matrix" } else { "/metrics" };
            let stop = stop.clone();
            loops.push(tokio::spawn(async move {
                let mut served = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && served < 10_000 {
                    match http_get(&format!("http://{http}{path}")).await {
                        Ok((200, _)) => served += 1,
                        // Busy (beyond the expensive-query permits): back off as Retry-After says.
                        _ => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                }
                served
            }));
        }
        let busy = ingest_rounds(http, &senders, rounds..2 * rounds).await?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut served = 0;
        for l in loops {
            served += l.await.unwrap_or(0);
        }
        let what = if with_metrics { "/api/v1/matrix and /metrics" } else { "/api/v1/matrix" };
        println!(
            "  while 8 clients loop {what}: {busy:.0} results/s = {:.2} x alone ({served} answers with 200)   [target >= 0.9]",
            busy / alone
        );
        println!("  aggregator resident memory after that: {:.1} MiB", proc_stat(pid).map_or(0.0, |p| p.rss_mib()));

        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..15 {
            // Request sent to last body byte received, on a fresh connection.
            let t = Instant::now();
            let tcp = tokio::net::TcpStream::connect(http).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let req = http::Request::get("/api/v1/matrix")
                .header(http::header::HOST, http)
                .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
            let resp = sender.send_request(req).await?;
            anyhow::ensure!(resp.status() == 200, "matrix answered {}", resp.status());
            size = http_body_util::BodyExt::collect(resp.into_body()).await?.to_bytes().len();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let cells = {
            let (_, body) = http_get(&format!("http://{http}/api/v1/matrix")).await?;
            body.matches("\"src\"").count()
        };
        println!(
            "/api/v1/matrix: {cells} cells, {:.1} MiB JSON, median {:.1} ms over 15 requests   [target <= 100 ms]",
            size as f64 / 1048576.0,
            median(times)
        );
        println!("  aggregator resident memory after queries: {:.1} MiB", proc_stat(pid).map_or(0.0, |p| p.rss_mib()));
        drop(senders);
        anyhow::Ok(())
    });
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();
    result
}
