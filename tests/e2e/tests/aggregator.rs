//! End to end with the aggregator: 8 agents on 127.0.S.N stream to an in-process aggregator;
//! the matrix holds exactly the ring's pairs; a dead node becomes the top suspect; a restarted
//! aggregator fills up again; agents do not care whether it runs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubenurse_aggregator::state::Settings;
use kubenurse_lab::aggregator::{AggregatorOptions, LocalAggregator};
use kubenurse_lab::cluster::{ClusterSpec, LocalCluster};
use kubenurse_testkit::http::{eventually, http_get};
use kubenurse_testkit::sim::{ring_targets, SimNode};
use serde_json::Value;

const LIMIT: usize = 3;

fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn ring_pairs(nodes: &[SimNode]) -> BTreeSet<(String, String)> {
    nodes.iter().flat_map(|own| ring_targets(own, nodes, LIMIT).into_iter().map(|t| (own.node.clone(), t))).collect()
}

fn fresh_pairs(matrix: &Value) -> BTreeSet<(String, String)> {
    pairs_where(matrix, |c| c["stale"] == false && c["count"].as_u64().unwrap_or(0) > 0)
}

/// Fresh pairs with at least one successful check in the window: agents start one after another,
/// so a pair's first check may find its destination not yet listening (connection refused).
fn answered_pairs(matrix: &Value) -> BTreeSet<(String, String)> {
    pairs_where(matrix, |c| {
        c["stale"] == false && c["count"].as_u64().unwrap_or(0) > c["errors"].as_u64().unwrap_or(u64::MAX)
    })
}

fn pairs_where(matrix: &Value, keep: impl Fn(&Value) -> bool) -> BTreeSet<(String, String)> {
    matrix["cells"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| keep(c))
        .map(|c| (c["src"].as_str().unwrap_or_default().to_string(), c["dst"].as_str().unwrap_or_default().to_string()))
        .collect()
}

fn settings() -> Settings {
    Settings { tick_micros: 200_000, ..Settings::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_suspects_and_restarts() -> anyhow::Result<()> {
    let interval = Duration::from_secs(1);
    let grpc = "127.0.0.1:18051".parse()?;
    let http = "127.0.0.1:18052".parse()?;
    let aggregator = LocalAggregator::start(grpc, http, settings()).await?;
    let spec = ClusterSpec {
        nodes: 8,
        subnet: 81,
        port: 18080,
        interval: "1s".into(),
        limit: LIMIT,
        // This aggregator runs without discovery (no API server): agents discover for themselves.
        env: vec![
            ("KUBENURSE_AGGREGATOR_URL".into(), aggregator.grpc_url()),
            ("KUBENURSE_DISCOVERY".into(), "local".into()),
        ],
        proxied: false,
        token_audience: None,
        client_cert_dir: None,
    };
    let mut cluster = LocalCluster::start(&spec, &workdir("aggregator-e2e")).await?;
    let want = ring_pairs(&cluster.nodes);
    assert_eq!(want.len(), 8 * LIMIT);

    // The matrix fills with exactly the pairs the neighbour filter selects, each answered.
    let agg_url = aggregator.url();
    eventually("matrix = ring pairs, answered", Duration::from_secs(20), || {
        let url = agg_url.clone();
        let want = want.clone();
        async move {
            let (_, body) = http_get(&format!("{url}/api/v1/matrix?stat=p50&window=1m")).await.ok()?;
            let m: Value = serde_json::from_str(&body).ok()?;
            (fresh_pairs(&m) == want && answered_pairs(&m) == want).then_some(())
        }
    })
    .await?;
    let (code, m) = aggregator.get_json("/api/v1/matrix?stat=p50&window=1m").await?;
    assert_eq!(code, 200);
    let cell = &m["cells"][0];
    for field in [
        "src",
        "dst",
        "count",
        "errors",
        "error_ratio",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "last_ms",
        "last_error",
        "last_seen",
        "stale",
    ] {
        assert!(cell.get(field).is_some(), "cell lacks {field}: {cell}");
    }
    // Milliseconds (not µs or s): a loopback check, even on a machine busy with other tests
    // (one run under load saw a p50 above 100 ms), stays far below a second.
    assert!(cell["p50_ms"].as_f64().is_some_and(|v| v > 0.0 && v < 1000.0), "{cell}");
    let (_, suspects) = aggregator.get_json("/api/v1/suspects").await?;
    assert_eq!(suspects["suspects"], serde_json::json!([]), "healthy cluster has suspects: {suspects}");
    let (_, coverage) = aggregator.get_json("/api/v1/coverage").await?;
    assert_eq!(coverage["complete"], true, "{coverage}");
    eventually("merged /alive is 200", Duration::from_secs(10), || {
        let url = agg_url.clone();
        async move { (http_get(&format!("{url}/alive")).await.ok()?.0 == 200).then_some(()) }
    })
    .await?;
    let (_, metrics) = http_get(&format!("{agg_url}/metrics")).await?;
    let cell_series = metrics.lines().filter(|l| l.starts_with("kubenurse_matrix_p99_seconds{")).count();
    assert_eq!(cell_series, 8 * LIMIT, "per-cell gauges must stay <= nodes x limit");
    assert!(metrics.contains("kubenurse_aggregator_connected_agents 8"), "{metrics}");

    // One node dies (its agent and listener stop): top suspect within 3 intervals.
    let victim = cluster.agents.remove(4);
    let victim_node = victim.sim.node.clone();
    victim.stop().await?;
    let start = Instant::now();
    let top = eventually("the dead node is the top suspect", interval * 6, || {
        let url = agg_url.clone();
        let victim_node = victim_node.clone();
        async move {
            let (_, body) = http_get(&format!("{url}/api/v1/suspects")).await.ok()?;
            let s: Value = serde_json::from_str(&body).ok()?;
            let top = s["suspects"].get(0)?.clone();
            (top["node"] == victim_node.as_str()).then_some(top)
        }
    })
    .await?;
    let took = start.elapsed();
    println!("dead node {victim_node} top suspect after {took:?}: {top}");
    assert!(took <= interval * 3 + Duration::from_millis(500), "took {took:?}");
    assert!(top["kind"] == "node" || top["kind"] == "destination", "{top}");
    let (code, _) = aggregator.get_json("/alive").await?;
    assert_eq!(code, 500, "merged /alive must show the failing checks into the dead node");

    // Aggregator restarted: the matrix refills within 2 intervals of it being back.
    aggregator.stop().await?;
    // Agents do not care: /alive and /metrics keep answering.
    let agent = cluster.agents[0].url();
    tokio::time::sleep(interval * 2).await;
    assert!(http_get(&format!("{agent}/alive")).await.is_ok());
    let (_, agent_metrics) = http_get(&format!("{agent}/metrics")).await?;
    assert!(agent_metrics.contains("kubenurse_aggregator_connected 0"), "{agent_metrics}");
    let aggregator = LocalAggregator::start(grpc, http, settings()).await?;
    let restart = Instant::now();
    let alive_pairs: BTreeSet<(String, String)> = want.iter().filter(|(s, _)| *s != victim_node).cloned().collect();
    let agg_url = aggregator.url();
    eventually("matrix refilled after restart", interval * 6, || {
        let url = agg_url.clone();
        let alive_pairs = alive_pairs.clone();
        async move {
            let (_, body) = http_get(&format!("{url}/api/v1/matrix")).await.ok()?;
            let m: Value = serde_json::from_str(&body).ok()?;
            let have = fresh_pairs(&m);
            alive_pairs.is_subset(&have).then_some(())
        }
    })
    .await?;
    let refill = restart.elapsed();
    println!("matrix refilled {refill:?} after the aggregator restarted");
    assert!(refill <= interval * 2 + Duration::from_millis(500), "refill took {refill:?}");
    aggregator.stop().await?;
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_gets_every_stream() -> anyhow::Result<()> {
    // Two replicas; each must receive every agent's results. (A headless Service name resolving
    // to both addresses takes the same path: every resolved address gets a stream.)
    let v4 = LocalAggregator::start("127.0.0.1:18061".parse()?, "127.0.0.1:18062".parse()?, settings()).await?;
    let v6 = LocalAggregator::start("[::1]:18061".parse()?, "[::1]:18062".parse()?, settings()).await?;
    let spec = ClusterSpec {
        nodes: 3,
        subnet: 82,
        port: 18080,
        interval: "500ms".into(),
        limit: LIMIT,
        env: vec![
            ("KUBENURSE_AGGREGATOR_URL".into(), "http://127.0.0.1:18061,http://[::1]:18061".into()),
            ("KUBENURSE_DISCOVERY".into(), "local".into()),
        ],
        proxied: false,
        token_audience: None,
        client_cert_dir: None,
    };
    let cluster = LocalCluster::start(&spec, &workdir("aggregator-ha")).await?;
    let want = ring_pairs(&cluster.nodes);
    for replica in [&v4, &v6] {
        let url = replica.url();
        eventually(&format!("replica {} has the whole matrix", replica.http), Duration::from_secs(20), || {
            let url = url.clone();
            let want = want.clone();
            async move {
                let (_, body) = http_get(&format!("{url}/api/v1/matrix")).await.ok()?;
                (fresh_pairs(&serde_json::from_str(&body).ok()?) == want).then_some(())
            }
        })
        .await?;
    }
    let (_, metrics) = http_get(&format!("{}/metrics", cluster.agents[0].url())).await?;
    assert!(metrics.contains("kubenurse_aggregator_connected 2"), "{metrics}");
    cluster.stop().await?;
    v4.stop().await?;
    v6.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_over_tls_verifies_the_aggregator() -> anyhow::Result<()> {
    use kubenurse_testkit::pki::{write_file, TestCa};
    let dir = workdir("aggregator-tls");
    let ca = TestCa::new("aggregator-ca")?;
    let leaf = ca.leaf(&["127.0.0.1", "localhost"])?;
    let ca_file = write_file(&dir, "aggregator-ca.crt", &ca.cert_pem())?;
    let other_ca_file = write_file(&dir, "other-ca.crt", &TestCa::new("someone-else")?.cert_pem())?;
    let tls = Some((leaf.cert_pem.into_bytes(), leaf.key_pem.into_bytes()));
    let options = AggregatorOptions { tls, ..AggregatorOptions::default() };
    let aggregator =
        LocalAggregator::start_with("127.0.0.1:18071".parse()?, "127.0.0.1:18072".parse()?, settings(), options)
            .await?;
    let spec = |subnet: u8, ca: &std::path::Path| ClusterSpec {
        nodes: 3,
        subnet,
        port: 18080,
        interval: "500ms".into(),
        limit: LIMIT,
        env: vec![
            ("KUBENURSE_DISCOVERY".into(), "local".into()),
            ("KUBENURSE_AGGREGATOR_URL".into(), "https://127.0.0.1:18071".into()),
            ("KUBENURSE_AGGREGATOR_CA".into(), ca.display().to_string()),
        ],
        proxied: false,
        token_audience: None,
        client_cert_dir: None,
    };
    // Agents trusting another CA never connect.
    let strangers = LocalCluster::start(&spec(84, &other_ca_file), &workdir("aggregator-tls-strangers")).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, status) = aggregator.get_json("/api/v1/status").await?;
    assert_eq!(status["connected_agents"], 0, "an unverified aggregator must not get results: {status}");
    let (_, m) = http_get(&format!("{}/metrics", strangers.agents[0].url())).await?;
    assert!(m.contains("kubenurse_aggregator_connected 0"), "{m}");
    strangers.stop().await?;

    // Agents trusting the right CA stream over TLS.
    let cluster = LocalCluster::start(&spec(83, &ca_file), &dir).await?;
    let want = ring_pairs(&cluster.nodes);
    let url = aggregator.url();
    eventually("matrix over TLS", Duration::from_secs(20), || {
        let (url, want) = (url.clone(), want.clone());
        async move {
            let (_, body) = http_get(&format!("{url}/api/v1/matrix")).await.ok()?;
            (fresh_pairs(&serde_json::from_str(&body).ok()?) == want).then_some(())
        }
    })
    .await?;
    cluster.stop().await?;
    aggregator.stop().await
}
