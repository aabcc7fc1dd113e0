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
