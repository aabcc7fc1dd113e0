//! `kubenurse-lab`: a local demo cluster on loopback — the fake API server, one agent per
//! simulated node on 127.0.S.N with the standard port, and the aggregator on 127.0.S.254 —
//! printing the URLs to open and a live status line. Ctrl-C stops everything.

use std::time::Duration;

use anyhow::Context;
use kubenurse_aggregator::state::Settings;
use kubenurse_tests::aggregator::LocalAggregator;
use kubenurse_tests::cluster::{http_get, ClusterSpec, LocalCluster};

const USAGE: &str = "Usage: kubenurse-lab [--nodes N] [--port P] [--interval DURATION] [--limit N] [--subnet S]

Starts a fake Kubernetes API server, N kubenurse agents on 127.0.S.1 … 127.0.S.N and the
aggregator on 127.0.S.254 (loopback only), prints the URLs to open and a status line, and stops
everything on Ctrl-C.

  --nodes N        simulated nodes, 1-250            (default 5)
  --port P         every agent's HTTP port           (default 8080)
  --interval D     KUBENURSE_CHECK_INTERVAL          (default 2s)
  --limit N        KUBENURSE_NEIGHBOUR_LIMIT         (default 10)
  --subnet S       third octet of the addresses      (default 1)
";

fn parse_args() -> anyhow::Result<Option<ClusterSpec>> {
    let mut spec = ClusterSpec { interval: "2s".into(), ..ClusterSpec::default() };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--nodes" => {
                spec.nodes = value("--nodes")?.parse().context("--nodes: expected a number 1-250")?;
                anyhow::ensure!((1..=250).contains(&spec.nodes), "--nodes: expected a number 1-250");
            }
            "--port" => spec.port = value("--port")?.parse().context("--port: expected a port number")?,
            "--interval" => {
                let v = value("--interval")?;
                kubenurse_agent::duration::parse_go_duration(&v).with_context(|| format!("--interval {v:?}"))?;
                spec.interval = v;
            }
            "--limit" => spec.limit = value("--limit")?.parse().context("--limit: expected a number")?,
            "--subnet" => spec.subnet = value("--subnet")?.parse().context("--subnet: expected 0-255")?,
            other => anyhow::bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(Some(spec))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let spec = match parse_args() {
        Ok(Some(spec)) => spec,
        Ok(None) => {
            print!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kubenurse-lab: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(spec).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubenurse-lab: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(mut spec: ClusterSpec) -> anyhow::Result<()> {
    init_logs();
    let dir = std::env::temp_dir().join(format!("kubenurse-lab-{}", std::process::id()));
    let agg_ip = format!("127.0.{}.254", spec.subnet);
    let aggregator = LocalAggregator::start(
        format!("{agg_ip}:50051").parse()?,
        format!("{agg_ip}:{}", spec.port).parse()?,
        Settings::default(),
    )
    .await?;
    spec.env.push(("KUBENURSE_AGGREGATOR_URL".into(), aggregator.grpc_url()));
    let cluster = LocalCluster::start(&spec, &dir).await?;
    let first = &cluster.agents[0];
    println!("kubenurse lab: {} nodes, interval {}, neighbour limit {}", spec.nodes, spec.interval, spec.limit);
    println!(
        "  fake API server   https://{}  (kubeconfig: {})",
        cluster.api.addr(),
        cluster.api.kubeconfig_path().display()
    );
    println!("  {} /alive        {}/alive", first.sim.node, first.url());
    println!("  {} /metrics      {}/metrics", first.sim.node, first.url());
    println!(
        "  agents            http://127.0.{}.1:{} … http://127.0.{}.{}:{}",
        spec.subnet, spec.port, spec.subnet, spec.nodes, spec.port
    );
    let agg = aggregator.url();
    println!("  aggregator /alive {agg}/alive   (merged over every agent)");
    println!("  matrix API        {agg}/api/v1/matrix   suspects: {agg}/api/v1/suspects");
    println!("  aggregator        {agg}/metrics   coverage: {agg}/api/v1/coverage");
    println!("  Ctrl-C stops everything.");
    let interval = kubenurse_agent::duration::parse_go_duration(&spec.interval)?.max(Duration::from_secs(1));
    let mut ticker = tokio::time::interval(interval);
    let mut last: Option<(std::time::Instant, u64)> = None;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => {
                let mut healthy = 0;
                for a in &cluster.agents {
                    if matches!(http_get(&format!("{}/alive", a.url())).await, Ok((200, _))) {
                        healthy += 1;
                    }
                }
                let status = aggregator.get_json("/api/v1/status").await.map(|(_, v)| v).unwrap_or_default();
                let ingested = status["results_ingested"].as_u64().unwrap_or(0);
                let now = std::time::Instant::now();
                let rate = last.map_or(0.0, |(t, n)| ingested.saturating_sub(n) as f64 / now.duration_since(t).as_secs_f64());
                last = Some((now, ingested));
                let suspects = aggregator.get_json("/api/v1/suspects").await.map(|(_, v)| v).unwrap_or_default();
                let names: Vec<String> = suspects["suspects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| format!("{} {} ({})", s["kind"].as_str().unwrap_or("?"),
                        s["node"].as_str().or(s["zone"].as_str()).unwrap_or("cluster"), s["cause"].as_str().unwrap_or("?")))
                    .collect();
                println!(
                    "  status: {healthy}/{} agents all ok, {} streaming, {rate:.0} results/s, suspects: {}",
                    cluster.agents.len(),
                    status["connected_agents"].as_u64().unwrap_or(0),
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                );
            }
        }
    }
    println!("stopping…");
    cluster.stop().await?;
    aggregator.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("stopped.");
    Ok(())
}

/// Agents' warnings (failed checks, watch errors) on stderr; `RUST_LOG` (e.g. `info`) for more.
fn init_logs() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::WARN));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::io::stderr))
        .with(filter)
        .init();
}
