//! `kubenurse-lab`: a local demo cluster on loopback — the fake API server, one agent per
//! simulated node on 127.0.S.N with the standard port — printing the URLs to open.
//! Ctrl-C stops everything.

use std::time::Duration;

use anyhow::Context;
use kubenurse_tests::cluster::{http_get, ClusterSpec, LocalCluster};

const USAGE: &str = "Usage: kubenurse-lab [--nodes N] [--port P] [--interval DURATION] [--limit N] [--subnet S]

Starts a fake Kubernetes API server and N kubenurse agents on 127.0.S.1 … 127.0.S.N (loopback),
prints the URLs to open and a status line, and stops everything on Ctrl-C.

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

async fn run(spec: ClusterSpec) -> anyhow::Result<()> {
    init_logs();
    let dir = std::env::temp_dir().join(format!("kubenurse-lab-{}", std::process::id()));
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
    println!("  Ctrl-C stops everything.");
    let interval = kubenurse_agent::duration::parse_go_duration(&spec.interval)?.max(Duration::from_secs(1));
    let mut ticker = tokio::time::interval(interval);
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
                println!("  status: {healthy}/{} agents report all checks ok", cluster.agents.len());
            }
        }
    }
    println!("stopping…");
    cluster.stop().await?;
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
