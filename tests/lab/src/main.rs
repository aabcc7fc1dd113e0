//! `kubenurse-lab`: the whole system on loopback — a fake API server, one agent per simulated
//! node on 127.0.S.N (behind a fault proxy) with the standard port, and the aggregator on
//! 127.0.S.254 — printing the URLs to open and a live status line. Faults can be injected at
//! start (`--fault`), typed on stdin, or sent to the control endpoint. Ctrl-C stops everything.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use kubenurse_aggregator::conditions::plan::CONDITION_TYPE;
use kubenurse_aggregator::state::Settings;
use kubenurse_lab::cluster::ClusterSpec;
use kubenurse_lab::lab::{FaultSpec, Lab, FAULT_SYNTAX};
use kubenurse_testkit::http::http_get;
use tokio::io::AsyncBufReadExt;
use tokio::sync::Mutex;

/// Command line of the demo (clap, like the other binaries).
#[derive(Debug, Parser)]
#[command(
    name = "kubenurse-lab",
    version,
    about = "Starts, on loopback only, a fake Kubernetes API server, N kubenurse agents on 127.0.S.1 … 127.0.S.N \
             (each behind a fault proxy, nodes spread over 3 zones) and the aggregator on 127.0.S.254, prints the \
             URLs to open and a status line, and stops everything on Ctrl-C or SIGTERM.",
    after_help = format!(
        "Faults (also typed on stdin, or GET http://127.0.S.253:P/fault?spec=SPEC while running):\n  {FAULT_SYNTAX}"
    )
)]
struct Args {
    /// Nodes of the cluster (beyond --agents, realistic Nodes whose agents are simulated).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    nodes: u16,
    /// Real agents (at most 250; default: one per node up to 250, else 20). The other nodes'
    /// agents are simulated: they stream to the aggregator like real ones, their pods share
    /// the real agents' addresses.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=250))]
    agents: Option<u8>,
    /// Node status updates per second of the simulated nodes, as their kubelets would send
    /// (default: each Node every 2 minutes).
    #[arg(long)]
    churn: Option<u32>,
    /// Every agent's HTTP port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The agents' KUBENURSE_CHECK_INTERVAL (Go duration).
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    interval: String,
    /// The agents' KUBENURSE_NEIGHBOUR_LIMIT.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Third octet of the addresses.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=155))]
    subnet: u8,
    /// Inject a fault at start (repeatable).
    #[arg(long = "fault", value_name = "SPEC")]
    faults: Vec<FaultSpec>,
    /// Also start `prometheus` (if on PATH) scraping every agent and the aggregator.
    #[arg(long)]
    prometheus: bool,
}

fn parse_interval(v: &str) -> Result<String, String> {
    kubenurse_common::duration::parse_go_duration(v).map_err(|e| e.to_string())?;
    Ok(v.to_string())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let Args { nodes, agents, churn, port, interval, limit, subnet, faults, prometheus } = Args::parse();
    let real = match agents {
        Some(a) if u16::from(a) > nodes => {
            eprintln!("kubenurse-lab: --agents {a} is more than --nodes {nodes}");
            return std::process::ExitCode::from(2);
        }
        Some(a) => a,
        None => u8::try_from(nodes).ok().filter(|n| *n <= 250).unwrap_or(20),
    };
    let simulated = usize::from(nodes) - usize::from(real);
    let churn = churn.unwrap_or_else(|| (simulated as u32).div_ceil(120));
    let spec = ClusterSpec { nodes: real, port, interval, limit, subnet, proxied: true, ..ClusterSpec::default() };
    match run(spec, simulated, churn, faults, prometheus).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubenurse-lab: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The lab's files (the fake API server's CA key among them): removed however the lab stops.
struct LabDir(std::path::PathBuf);

impl Drop for LabDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills Prometheus when the lab stops, however it stops.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The running lab, taken out (`None`) when it stops.
type Shared = Arc<Mutex<Option<Lab>>>;

async fn apply(lab: &Shared, spec: &str) -> String {
    let fault = match spec.parse::<FaultSpec>() {
        Ok(f) => f,
        Err(e) => return format!("fault: {e}"),
    };
    let mut guard = lab.lock().await;
    let Some(lab) = guard.as_mut() else { return "fault: the lab is stopping".into() };
    match lab.apply(&fault).await {
        Ok(done) => format!("fault: {done}"),
        Err(e) => format!("fault {spec:?} failed: {e:#}"),
    }
}

async fn control(State(lab): State<Shared>, Query(q): Query<std::collections::HashMap<String, String>>) -> String {
    match q.get("spec") {
        Some(spec) => {
            let out = apply(&lab, spec).await;
            println!("  {out}");
            out + "\n"
        }
        None => format!("GET /fault?spec=SPEC with SPEC one of: {FAULT_SYNTAX}\n"),
    }
}

async fn run(
    spec: ClusterSpec,
    simulated: usize,
    churn: u32,
    faults: Vec<FaultSpec>,
    prometheus: bool,
) -> anyhow::Result<()> {
    kubenurse_common::logging::init(tracing::Level::ERROR);
    let lab_dir = LabDir(std::env::temp_dir().join(format!("kubenurse-lab-{}", std::process::id())));
    let dir = lab_dir.0.clone();
    // The aggregator runs with the binary's own defaults.
    let mut lab = Lab::start(spec.clone(), Settings::default(), &dir).await?;
    if simulated > 0 {
        println!("  adding {simulated} realistic Nodes with simulated agents ({churn} Node status updates/s)…");
        lab.simulate(simulated, churn).await?;
    }
    for f in &faults {
        println!("  fault: {}", lab.apply(f).await?);
    }
    let a = &lab.cluster.agents[0];
    let (agg, first, first_node, api, kubeconfig) =
        (lab.aggregator.url(), a.url(), a.sim.node.clone(), lab.cluster.api.addr(), lab.cluster.api.kubeconfig_path());
    let prometheus_config = lab.prometheus_config();
    let lab: Shared = Arc::new(Mutex::new(Some(lab)));
    let control_addr = format!("127.0.{}.253:{}", spec.subnet, spec.port);
    let listener = tokio::net::TcpListener::bind(&control_addr)
        .await
        .with_context(|| format!("control endpoint {control_addr}"))?;
    let app = Router::new().route("/fault", get(control)).route("/", get(control)).with_state(lab.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let _prometheus = if prometheus { start_prometheus(&prometheus_config, &dir, spec.subnet)? } else { None };

    if simulated > 0 {
        println!(
            "kubenurse lab: {} nodes ({} real agents, {simulated} simulated), interval {}, neighbour limit {}",
            usize::from(spec.nodes) + simulated,
            spec.nodes,
            spec.interval,
            spec.limit
        );
    } else {
        println!(
            "kubenurse lab: {} nodes over 3 zones, interval {}, neighbour limit {}",
            spec.nodes, spec.interval, spec.limit
        );
    }
    println!("  heatmap           {agg}/");
    println!("  merged /alive     {agg}/alive");
    println!(
        "  matrix API        {agg}/api/v1/matrix   suspects: {agg}/api/v1/suspects   coverage: {agg}/api/v1/coverage"
    );
    println!("  aggregator        {agg}/metrics");
    println!("  {first_node} /alive     {first}/alive");
    println!("  {first_node} /metrics   {first}/metrics");
    println!(
        "  agents            http://127.0.{s}.1:{p} … http://127.0.{s}.{n}:{p}",
        s = spec.subnet,
        p = spec.port,
        n = spec.nodes
    );
    println!("  fake API server   https://{api}  (kubeconfig {})", kubeconfig.display());
    println!("  node conditions   a suspected node gets KubenurseNetworkProblem=True (and an Event); watch it with");
    println!(
        "                    kubectl --kubeconfig {} get nodes -o custom-columns='NAME:.metadata.name,NETWORK:.status.conditions[?(@.type==\"{CONDITION_TYPE}\")].status,REASON:.status.conditions[?(@.type==\"{CONDITION_TYPE}\")].reason'",
        kubeconfig.display()
    );
    println!("                    kubectl --kubeconfig {} get events.events.k8s.io -n default", kubeconfig.display());
    println!("  faults            type e.g. `delay:node-03:80ms`, `refuse:node-02`, `partition:zone-b` (they add up),");
    println!("                    `heal:delay:node-03:80ms` for one, `heal` for all,");
    println!("                    or: curl 'http://{control_addr}/fault?spec=refuse:node-02'");
    println!("  Ctrl-C stops everything.");

    let interval = kubenurse_common::duration::parse_go_duration(&spec.interval)?.max(Duration::from_secs(1));
    let stop = kubenurse_common::signal::shutdown_signal();
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(interval);
    let mut last: Option<(std::time::Instant, u64)> = None;
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(l)) if !l.trim().is_empty() => println!("  {}", apply(&lab, l.trim()).await),
                Ok(Some(_)) => {}
                _ => stdin_open = false,
            },
            _ = ticker.tick() => {
                let (urls, faults): (Vec<String>, String) = lab
                    .lock()
                    .await
                    .as_ref()
                    .map(|l| (l.cluster.agents.iter().map(|a| a.url()).collect(), l.describe_active()))
                    .unwrap_or_default();
                let mut healthy = 0;
                for u in &urls {
                    if matches!(http_get(&format!("{u}/alive")).await, Ok((200, _))) {
                        healthy += 1;
                    }
                }
                let status = get_json(&agg, "/api/v1/status").await;
                let ingested = status["results_ingested"].as_u64().unwrap_or(0);
                let now = std::time::Instant::now();
                let rate = last.map_or(0.0, |(t, n)| ingested.saturating_sub(n) as f64 / now.duration_since(t).as_secs_f64());
                last = Some((now, ingested));
                let suspects = get_json(&agg, "/api/v1/suspects").await;
                let names: Vec<String> = suspects["suspects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        let target = s["node"].as_str().or(s["zone"].as_str()).unwrap_or("cluster");
                        format!("{} {target} ({})", s["kind"].as_str().unwrap_or("?"), s["cause"].as_str().unwrap_or("?"))
                    })
                    .collect();
                println!(
                    "  status: {healthy}/{} agents all ok · {} streaming · {rate:.0} results/s · faults: {faults} · suspects: {}",
                    urls.len(),
                    status["connected_agents"].as_u64().unwrap_or(0),
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                );
            }
        }
    }
    println!("stopping…");
    let taken = lab.lock().await.take();
    if let Some(lab) = taken {
        lab.stop().await?;
    }
    drop(lab_dir);
    println!("stopped.");
    Ok(())
}

async fn get_json(base: &str, path: &str) -> serde_json::Value {
    match http_get(&format!("{base}{path}")).await {
        Ok((_, body)) => serde_json::from_str(&body).unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

fn start_prometheus(config: &str, dir: &std::path::Path, subnet: u8) -> anyhow::Result<Option<Prometheus>> {
    if Command::new("prometheus").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        println!("  --prometheus: no `prometheus` on PATH (Debian package prometheus); continuing without it");
        return Ok(None);
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config)?;
    let listen = format!("127.0.{subnet}.252:9090");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", path.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()))
        .arg(format!("--web.listen-address={listen}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
        .spawn()?;
    println!("  prometheus        http://{listen}/  (config {})", path.display());
    Ok(Some(Prometheus(child)))
}
