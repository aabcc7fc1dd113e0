//! Attacks on the agent that must no longer work (issue: trusted stream, bounded everywhere).

use std::path::PathBuf;
use std::time::Duration;

use kubenurse_lab::cluster::{ClusterSpec, LocalCluster};
use kubenurse_testkit::http::{eventually, http_get, http_get_with};

fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn incoming(metrics: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix("kubenurse_neighbourhood_incoming_checks ")?.trim().parse().ok())
}

/// Made-up `KUBENURSE-NEIGHBOUR-ORIGIN` values are not neighbours: they neither count in the
/// incoming gauge nor crowd the real neighbours out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_origins_do_not_count() -> anyhow::Result<()> {
    let spec =
        ClusterSpec { nodes: 4, subnet: 71, port: 18080, interval: "500ms".into(), limit: 3, ..ClusterSpec::default() };
    let cluster = LocalCluster::start(&spec, &workdir("attack-origins")).await?;
    let result = async {
        let target = cluster.agents[0].url();
        let metrics = format!("{target}/metrics");
        // Everyone checks everyone: three real origins.
        eventually("incoming gauge = 3", Duration::from_secs(20), || {
            let metrics = metrics.clone();
            async move { (incoming(&http_get(&metrics).await.ok()?.1)? == 3.0).then_some(()) }
        })
        .await?;
        let happy = format!("{target}/alwayshappy");
        for i in 0..300 {
            let origin = format!("kubenurse-fake-{i}");
            let (code, _) = http_get_with(&happy, &[("KUBENURSE-NEIGHBOUR-ORIGIN", origin.as_str())]).await?;
            anyhow::ensure!(code == 200, "/alwayshappy answered {code}");
        }
        // Two more rounds of real checks; the gauge still counts only the three neighbours.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (_, m) = http_get(&metrics).await?;
        assert_eq!(incoming(&m), Some(3.0), "made-up origins counted or real ones crowded out");
        anyhow::Ok(())
    }
    .await;
    cluster.stop().await?;
    result
}

fn rounds(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("kubenurse_httpclient_request_duration_seconds_count{type=\"api_server_direct\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
}

/// 2,000 connections held open on one agent's port (never sending a byte): its rounds go on,
/// its `/alive` answers, and its neighbours still reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_leaves_rounds_and_alive_alone() -> anyhow::Result<()> {
    let spec =
        ClusterSpec { nodes: 3, subnet: 73, port: 18080, interval: "500ms".into(), limit: 2, ..ClusterSpec::default() };
    let cluster = LocalCluster::start(&spec, &workdir("attack-connections")).await?;
    let result = async {
        let target = cluster.agents[0].url();
        let metrics = format!("{target}/metrics");
        let before = eventually("a first round", Duration::from_secs(20), || {
            let metrics = metrics.clone();
            async move { rounds(&http_get(&metrics).await.ok()?.1).filter(|n| *n >= 1.0) }
        })
        .await?;
        let addr = std::net::SocketAddr::new(cluster.agents[0].sim.bind, spec.port);
        let mut flood = Vec::with_capacity(2000);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while flood.len() < 2000 && tokio::time::Instant::now() < deadline {
            flood.push(tokio::net::TcpStream::connect(addr).await?);
        }
        anyhow::ensure!(flood.len() == 2000, "opened only {} connections", flood.len());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (code, body) = http_get(&format!("{target}/alive")).await?;
        assert_eq!(code, 200, "/alive under the flood: {body}");
        let after = rounds(&http_get(&metrics).await?.1).unwrap_or(0.0);
        assert!(after >= before + 2.0, "rounds stalled under the flood: {before} -> {after}");
        let (code, body) = http_get(&format!("{}/alive", cluster.agents[1].url())).await?;
        assert_eq!(code, 200, "a neighbour's checks of the flooded node: {body}");
        drop(flood);
        anyhow::Ok(())
    }
    .await;
    cluster.stop().await?;
    result
}
