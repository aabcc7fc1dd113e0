//! The one-shot `kubenurse-aggregator check` against a lab: healthy → 0, a refusing node → 1
//! naming it, healed → 0 again, too few agents → 1, aggregator down → 2. Subnet 127.0.57.x.

use std::path::PathBuf;
use std::time::Duration;

use kubenurse_aggregator::check::{run, CheckArgs, Outcome, Output};
use kubenurse_aggregator::state::Settings;
use kubenurse_lab::cluster::ClusterSpec;
use kubenurse_lab::lab::{FaultSpec, Lab};
use kubenurse_testkit::http::eventually;

fn args(url: &str, expect_nodes: usize, wait: Duration, output: Output) -> CheckArgs {
    CheckArgs { url: url.to_string(), expect_nodes, wait, output }
}

/// Runs the check until it gives `want`, up to `limit`: the last outcome and text.
async fn until(url: &str, want: Outcome, limit: Duration) -> anyhow::Result<String> {
    eventually(&format!("check says {want:?}"), limit, || async move {
        let (outcome, text) = run(&args(url, 5, Duration::ZERO, Output::Text)).await;
        (outcome == want).then_some(text)
    })
    .await
}

#[tokio::test]
async fn the_check_exits_by_the_verdict() -> anyhow::Result<()> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("check-e2e");
    let _ = std::fs::remove_dir_all(&dir);
    let spec = ClusterSpec::scenario(5, 57);
    let mut lab = Lab::start(spec, Settings { tick_micros: 250_000, ..Settings::default() }, &dir).await?;
    let url = lab.aggregator.url();

    // A fresh install: --wait rides out the agents connecting and filling the window.
    let (outcome, text) = run(&args(&url, 5, Duration::from_secs(60), Output::Text)).await;
    assert_eq!(outcome, Outcome::Healthy, "{text}");
    assert_eq!(text, "healthy: 5 agents streaming, every node covered, no suspect\n");
    let (outcome, text) = run(&args(&url, 6, Duration::ZERO, Output::Text)).await;
    assert_eq!(outcome, Outcome::Unhealthy, "{text}");
    assert!(text.contains("5 agents stream to the aggregator, 6 expected"), "{text}");

    // A node that refuses connections: exit 1, naming it; JSON says the same.
    lab.apply(&FaultSpec::Refuse("node-03".into())).await?;
    let text = until(&url, Outcome::Unhealthy, lab.interval * 15).await?;
    assert!(text.contains("suspect node node-03 (destination Errors)"), "{text}");
    let (outcome, json) = run(&args(&url, 5, Duration::ZERO, Output::Json)).await;
    let json: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!((outcome, &json["outcome"]), (Outcome::Unhealthy, &serde_json::json!("unhealthy")), "{json}");
    assert!(json["suspects"].as_array().is_some_and(|s| s.iter().any(|s| s["node"] == "node-03")), "{json}");

    // Healed: healthy again.
    lab.apply(&FaultSpec::Heal).await?;
    until(&url, Outcome::Healthy, lab.interval * 15).await?;

    // The aggregator gone: exit 2.
    lab.stop().await?;
    let (outcome, text) = run(&args(&url, 5, Duration::ZERO, Output::Text)).await;
    assert_eq!(outcome, Outcome::Error, "{text}");
    assert!(text.starts_with("error: GET "), "{text}");
    Ok(())
}
