//! Attacks on the aggregator's gRPC port that must no longer work (issue: trusted stream),
//! against the chart's default (`--auth tokenreview`) with real agents streaming, and the
//! faults it must ride out: half-open connections, an outsider framing, blinding, hijacking
//! and flooding, an insider's bad hello, the API server failing for 30 s.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubenurse_aggregator::auth::DEFAULT_AUDIENCE;
use kubenurse_aggregator::ingest::HELLO_TIMEOUT;
use kubenurse_aggregator::state::Settings;
use kubenurse_lab::aggregator::LocalAggregator;
use kubenurse_lab::cluster::{ClusterSpec, LocalCluster};
use kubenurse_lab::impostor::{failure, hello, open, refusal, token_for};
use kubenurse_proto::v1::{aggregator_message, AggregatorMessage};
use kubenurse_testkit::apiserver::{FakeApiServer, Faults};
use kubenurse_testkit::http::{eventually, http_get};
use kubenurse_testkit::sim::{SimNode, SERVICE_ACCOUNT};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// An aggregator reviewing tokens with a fresh API server, and `nodes` agents with tokens.
async fn authenticated_cluster(
    subnet: u8,
    nodes: u8,
    dir: &std::path::Path,
) -> anyhow::Result<(LocalCluster, LocalAggregator)> {
    let api = FakeApiServer::start(dir).await?;
    let agg = LocalAggregator::reviewing(&api, subnet).await?;
    let cluster = LocalCluster::start_on(api, &ClusterSpec::streaming(subnet, nodes, &agg.grpc_url()), dir).await?;
    Ok((cluster, agg))
}

/// The healthy picture: every cell fresh and fine, no suspect, `/alive` 200, every agent streaming.
async fn healthy(agg: &LocalAggregator, nodes: usize) -> Option<()> {
    let (code, _) = http_get(&format!("{}/alive", agg.url())).await.ok()?;
    let (_, m) = agg.get_json("/api/v1/matrix").await.ok()?;
    let cells = m["cells"].as_array()?;
    let fine = cells.iter().filter(|c| c["stale"] == false && c["failing"] != true).count();
    let (_, s) = agg.get_json("/api/v1/suspects").await.ok()?;
    let (_, status) = agg.get_json("/api/v1/status").await.ok()?;
    let ok = code == 200
        && fine == nodes * (nodes - 1)
        && s["suspects"].as_array().is_some_and(Vec::is_empty)
        && status["connected_agents"] == nodes
        && status["nodes"] == nodes;
    ok.then_some(())
}

/// Connections that never finish the HTTP/2 handshake (or never open a stream after it) are
/// closed once `HELLO_TIMEOUT` passes; a real stream on the same port lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_closed() -> anyhow::Result<()> {
    let agg = LocalAggregator::start("127.0.78.254:50051".parse()?, "127.0.78.254:18080".parse()?, Settings::default())
        .await?;
    let (a, b) = (SimNode::new(78, 1), SimNode::new(78, 2));
    let mut real = open(&agg.grpc_url(), None, hello(&a, &[&b])).await?;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let settings_frame = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let mut sockets = Vec::new();
    for i in 0..600 {
        let mut s = tokio::net::TcpStream::connect(agg.grpc).await?;
        match i % 3 {
            0 => {}                                                             // TCP only
            1 => s.write_all(&preface[..10]).await?,                            // half a preface
            _ => s.write_all(&[&preface[..], &settings_frame].concat()).await?, // HTTP/2, no stream
        }
        sockets.push(s);
    }
    let opened = Instant::now();
    let mut closed = 0;
    let mut late = Vec::new();
    for mut s in sockets {
        let left = (HELLO_TIMEOUT + Duration::from_secs(3)).saturating_sub(opened.elapsed());
        let mut buf = [0u8; 4096];
        // Read (and discard the server's SETTINGS) until the end of the stream.
        let end = tokio::time::timeout(left.max(Duration::from_millis(10)), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        match end {
            Ok(()) => closed += 1,
            Err(_) => late.push(s.local_addr().ok()),
        }
    }
    let took = opened.elapsed();
    assert_eq!(
        closed,
        600,
        "{} connections still open {took:?} after opening: {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
    assert!(took >= HELLO_TIMEOUT - Duration::from_secs(1), "closed before the hello deadline ({took:?})");
    // The admitted stream outlived the deadline.
    match real.send(failure(&b, 1)).await? {
        Some(AggregatorMessage { msg: Some(aggregator_message::Msg::Ack(_)) }) => {}
        other => anyhow::bail!("the real stream should still be acked, got {other:?}"),
    }
    agg.stop().await
}

/// An outsider without a valid token frames, blinds, hijacks and floods; an insider with a
/// stolen token sends a blinding hello. None of it changes what the matrix says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_can_neither_frame_blind_hijack_nor_flood() -> anyhow::Result<()> {
    let dir = workdir("attack-stream");
    let (cluster, agg) = authenticated_cluster(79, 4, &dir).await?;
    let result = async {
        eventually("healthy matrix", Duration::from_secs(20), || healthy(&agg, 4)).await?;
        let nodes: Vec<SimNode> = cluster.nodes.clone();
        let url = agg.grpc_url();
        let mut refused = 0.0;
        // Framing node-02: hellos as node-02 (no token, a made-up token) sending failures at 4 Hz.
        for token in [None, Some("eyJhbGciOiJub25lIn0.eyJzdWIiOiJub2RlLTAyIn0.")] {
            for _ in 0..8 {
                let status = refusal(&url, token, hello(&nodes[0], &[&nodes[1]]), &nodes[1]).await;
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                refused += 1.0;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        // Blinding: hellos declaring a 1 µs interval; hijack: node-03 targeting node-01 only.
        let mut blind = hello(&nodes[2], &[&nodes[0]]);
        blind.interval_micros = 1;
        for h in [blind.clone(), hello(&nodes[2], &[&nodes[0]])] {
            let status = refusal(&url, None, h, &nodes[0]).await;
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            refused += 1.0;
        }
        // Flood: 1,000 made-up nodes.
        for i in 0..1000u32 {
            let fake = SimNode { node: format!("fake-{i:04}"), pod: format!("fake-{i:04}"), ..nodes[0].clone() };
            let status = refusal(&url, None, hello(&fake, &[&nodes[0]]), &nodes[0]).await;
            assert_eq!(status.code(), Code::Unauthenticated, "flood hello {i}: {status:?}");
            refused += 1.0;
        }
        assert_eq!(agg.auth_failures("no_token").await? + agg.auth_failures("invalid_token").await?, refused);
        // An insider with node-03's stolen token: the blinding hello is refused for what it says.
        let stolen = token_for(&cluster.api, &nodes[2], DEFAULT_AUDIENCE, SERVICE_ACCOUNT, Duration::from_secs(600));
        let status = refusal(&url, Some(&stolen), blind, &nodes[0]).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("bad_hello"), "{status:?}");
        // Nothing changed: same nodes, all cells fresh and fine, no suspect, /alive 200 (read
        // after the API's snapshot, at most a 100 ms tick old, has caught up).
        tokio::time::sleep(Duration::from_millis(300)).await;
        eventually("still healthy", Duration::from_secs(5), || healthy(&agg, 4)).await?;
        let (_, status) = agg.get_json("/api/v1/status").await?;
        assert_eq!(status["nodes"], 4, "{status}");
        anyhow::Ok(())
    }
    .await;
    cluster.stop().await?;
    agg.stop().await?;
    result
}

/// The API server failing for 30 s: streams accepted before stay up (TokenReview is not asked
/// again), and once it heals the agents' discovery is ok again within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_for_30_seconds() -> anyhow::Result<()> {
    let dir = workdir("fault-api-30s");
    let (cluster, agg) = authenticated_cluster(85, 3, &dir).await?;
    let result = async {
        eventually("healthy matrix", Duration::from_secs(20), || healthy(&agg, 3)).await?;
        cluster.api.set_faults(Faults { failing: true, ..Faults::default() });
        let down = Instant::now();
        while down.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let (_, status) = agg.get_json("/api/v1/status").await?;
            assert_eq!(status["connected_agents"], 3, "{:?} into the outage: {status}", down.elapsed());
        }
        cluster.api.set_faults(Faults::default());
        let healed = Instant::now();
        let urls: Vec<String> = cluster.agents.iter().map(|a| a.url()).collect();
        eventually("discovery ok on every agent", Duration::from_secs(10), || {
            let urls = urls.clone();
            async move {
                for url in urls {
                    let (_, body) = http_get(&format!("{url}/alive")).await.ok()?;
                    let v: Value = serde_json::from_str(&body).ok()?;
                    if v["last_check_result"]["neighbourhood_state"] != "ok" {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await?;
        println!("discovery ok {:?} after the API server healed", healed.elapsed());
        assert_eq!(agg.auth_failures("review_unavailable").await?, 0.0, "no agent needed a new review");
        anyhow::Ok(())
    }
    .await;
    cluster.stop().await?;
    agg.stop().await?;
    result
}
