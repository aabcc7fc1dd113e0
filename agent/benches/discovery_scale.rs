//! Discovery at scale (a bench binary that prints figures, not a timed test): a few real
//! agent processes in a big cluster of the fake API server (realistic cloud Nodes and their
//! agent Pods, kubelet-like churn of Node status), first with local discovery (upstream's:
//! every agent watches every Node), then with pushed discovery (an in-process aggregator
//! watches once and pushes targets), side by side:
//! per-agent resident memory and CPU while Node updates arrive, time to the first full round,
//! watch events the API server sent per Node update, API requests per second, and what the
//! aggregator and fake API server cost (this process).
//!
//! `BENCH_NODES` (5000), `BENCH_AGENTS` (4), `BENCH_CHURN` Node updates/s (50),
//! `BENCH_SECONDS` measured per case (20).
//! Run: `cargo bench -p kubenurse-agent --bench discovery_scale`

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubenurse_aggregator::config::{AuthConfig, Config};
use kubenurse_aggregator::discovery::DiscoveryConfig;
use kubenurse_aggregator::state::Settings;
use kubenurse_neighbours::selector::LabelSelector;
use kubenurse_proto::CheckKind;
use kubenurse_testkit::apiserver::FakeApiServer;
use kubenurse_testkit::http::http_get;
use kubenurse_testkit::measure::{median, proc_stat, ticks_per_second, ProcStat};
use kubenurse_testkit::scale::{churn, node_name, pod_ip, pod_name, populate};
use kubenurse_testkit::sim::{agent_env as kit_agent_env, SimNode, NAMESPACE, NEIGHBOUR_FILTER};

const BIN: &str = env!("CARGO_BIN_EXE_kubenurse-agent");
const LIMIT: usize = 10;
const PORT: u16 = 18080;
const AGGREGATOR_GRPC: &str = "127.0.49.254:50051";
const AGGREGATOR_HTTP: &str = "127.0.49.254:18091";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Agent processes; killed when dropped, also when the bench fails.
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The variables of the agent of big-cluster node `i` (the kit's, on that node's address).
fn agent_env(api: &FakeApiServer, i: usize) -> anyhow::Result<HashMap<String, String>> {
    let ip: std::net::IpAddr = pod_ip(i).parse()?;
    let sim = SimNode { node: node_name(i), pod: pod_name(i), ip, bind: ip, zone: String::new() };
    let mut env = kit_agent_env(api, &sim, PORT, "5s", LIMIT);
    env.insert("KUBECONFIG".into(), api.kubeconfig_path().display().to_string());
    env.insert("RUST_LOG".into(), "warn".into());
    Ok(env)
}

/// What one case measured.
struct Row {
    agent_rss_mib: f64,
    agent_cpu_ms_per_s: f64,
    first_round_s: f64,
    events_per_update: f64,
    requests_per_s: f64,
    this_process_cpu_ms_per_s: f64,
}

/// Requests the API server answered (not counting watch events).
fn api_requests(api: &FakeApiServer) -> u64 {
    ["list pods", "list nodes", "list nodes by name", "watch pods", "watch nodes", "watch nodes by name", "version"]
        .iter()
        .map(|k| api.requests(k))
        .sum()
}

fn node_events(api: &FakeApiServer) -> u64 {
    api.requests("events nodes") + api.requests("events nodes by name")
}

async fn run_case(
    api: &FakeApiServer,
    nodes: usize,
    agents: usize,
    mode: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Row> {
    let (churn_rate, seconds) = (env_or("BENCH_CHURN", 50) as u32, env_or("BENCH_SECONDS", 20));
    let started = Instant::now();
    let mut children = Agents(Vec::new());
    for i in 1..=agents {
        let mut env = agent_env(api, i)?;
        env.insert("KUBENURSE_DISCOVERY".into(), mode.into());
        if mode != "local" {
            env.insert("KUBENURSE_AGGREGATOR_URL".into(), format!("http://{AGGREGATOR_GRPC}"));
        }
        children.0.push(
            Command::new(BIN)
                .env_clear()
                .envs(env)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("agent-{mode}-{i}.log")))?)
                .spawn()?,
        );
    }
    // Time to the first round that checked all its neighbours, per agent. Polled from a thread
    // of its own: this process's runtime also serves the fake API server, whose LIST bodies
    // (40 MiB of Nodes per agent) would delay the polls by seconds and the figure with them.
    let urls: Vec<String> = (1..=agents).map(|i| format!("http://{}:{PORT}/alive", pod_ip(i))).collect();
    let mode_name = mode.to_string();
    let first_round = tokio::task::spawn_blocking(move || first_rounds(&urls, started, &mode_name)).await??;
    // Settle, then measure while kubelet-like churn runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids: Vec<u32> = children.0.iter().map(Child::id).collect();
    let before: Vec<ProcStat> = pids.iter().map(|p| proc_stat(*p)).collect::<Result<_, _>>()?;
    let me0 = proc_stat(std::process::id())?;
    let (events0, requests0) = (node_events(api), api_requests(api));
    let t0 = Instant::now();
    let updates = churn(api, nodes, churn_rate, Duration::from_secs(seconds)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let after: Vec<ProcStat> = pids.iter().map(|p| proc_stat(*p)).collect::<Result<_, _>>()?;
    let me1 = proc_stat(std::process::id())?;
    let (events1, requests1) = (node_events(api), api_requests(api));
    let tps = ticks_per_second();
    let cpu: Vec<f64> =
        before.iter().zip(&after).map(|(b, a)| (a.cpu_ticks - b.cpu_ticks) as f64 / tps * 1e3 / elapsed).collect();
    Ok(Row {
        agent_rss_mib: median(after.iter().map(ProcStat::rss_mib).collect()),
        agent_cpu_ms_per_s: median(cpu),
        first_round_s: median(first_round),
        events_per_update: (events1 - events0) as f64 / updates.max(1) as f64,
        requests_per_s: (requests1 - requests0) as f64 / elapsed,
        this_process_cpu_ms_per_s: (me1.cpu_ticks - me0.cpu_ticks) as f64 / tps * 1e3 / elapsed,
    })
}

/// Seconds from `started` to each agent's first round that checked all its neighbours
/// (`/alive` polled every 50 ms on a runtime of this thread's own).
fn first_rounds(urls: &[String], started: Instant, mode: &str) -> anyhow::Result<Vec<f64>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut first_round = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            loop {
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(120),
                    "agent {} ({mode}) never completed a round",
                    i + 1
                );
                if let Ok((_, body)) = http_get(url).await {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let paths = v["last_check_result"]
                        .as_object()
                        .map_or(0, |o| o.keys().filter(|k| CheckKind::is_path_label(k)).count());
                    if paths == LIMIT {
                        first_round.push(started.elapsed().as_secs_f64());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(first_round)
    })
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let (nodes, agents) = (env_or("BENCH_NODES", 5000) as usize, env_or("BENCH_AGENTS", 4) as usize);
        anyhow::ensure!(agents >= 1 && agents < nodes, "BENCH_AGENTS must be 1 .. BENCH_NODES - 1");
        let dir = std::env::temp_dir().join(format!("kubenurse-discovery-scale-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let api = FakeApiServer::start(&dir).await?;
        populate(&api, nodes, pod_ip);
        let base = proc_stat(std::process::id())?;
        println!(
            "discovery at scale: {nodes} Nodes (realistic, {} churn/s), {agents} real agents, limit {LIMIT}; fake API server holds them: {:.0} MiB",
            env_or("BENCH_CHURN", 50),
            base.rss_mib()
        );
        let local = run_case(&api, nodes, agents, "local", &dir).await?;

        let before_aggregator = proc_stat(std::process::id())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = Config {
            grpc_address: AGGREGATOR_GRPC.parse::<SocketAddr>()?,
            http_address: AGGREGATOR_HTTP.parse::<SocketAddr>()?,
            settings: Settings::default(),
            tls: None,
            auth: AuthConfig::None,
            cell_metrics: kubenurse_aggregator::metrics::CellMetrics::None,
            node_conditions: None,
            discovery: Some(DiscoveryConfig {
                namespace: Some(NAMESPACE.into()),
                neighbour_filter: LabelSelector::parse(NEIGHBOUR_FILTER)?,
                neighbour_limit: LIMIT,
                allow_unschedulable: false,
            }),
        };
        let aggregator = tokio::spawn(kubenurse_aggregator::run(config, Some(api.kube_config()), async move {
            let _ = stopped.await;
        }));
        let pushed = run_case(&api, nodes, agents, "aggregator", &dir).await;
        let after_aggregator = proc_stat(std::process::id())?;
        let _ = stop.send(());
        let _ = aggregator.await;
        let pushed = pushed?;

        println!("| figure | local discovery | pushed discovery |");
        println!("|---|---|---|");
        println!("| agent RSS (median of {agents}) | {:.1} MiB | {:.1} MiB |", local.agent_rss_mib, pushed.agent_rss_mib);
        println!(
            "| agent CPU while Node updates arrive | {:.1} ms/s | {:.1} ms/s |",
            local.agent_cpu_ms_per_s, pushed.agent_cpu_ms_per_s
        );
        println!("| time to first full round | {:.2} s | {:.2} s |", local.first_round_s, pushed.first_round_s);
        println!(
            "| Node watch events sent per Node update | {:.2} | {:.2} |",
            local.events_per_update, pushed.events_per_update
        );
        println!("| API requests/s | {:.2} | {:.2} |", local.requests_per_s, pushed.requests_per_s);
        println!(
            "| this process's CPU (fake API server, + aggregator when pushed) | {:.1} ms/s | {:.1} ms/s |",
            local.this_process_cpu_ms_per_s, pushed.this_process_cpu_ms_per_s
        );
        println!(
            "aggregator: this process grew {:.1} MiB while it ran (its caches of {nodes} Pods and Nodes and {agents} streams)",
            after_aggregator.rss_mib() - before_aggregator.rss_mib()
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}
