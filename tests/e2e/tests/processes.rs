//! Faults that need a process of their own, so this test binary re-runs itself as one (no
//! harness; `KUBENURSE_E2E_ROLE` says which part it plays):
//! - an agent under a low `RLIMIT_NOFILE` whose file descriptors a connection flood takes: its
//!   checks fail as its own (`local_…`), and the aggregator names no zone and no other node;
//! - the aggregator killed with SIGKILL under load: agents count what they queue, reconnect
//!   when it is back, and deliver what they queued.
//!
//! Every child is killed when its guard drops, also when an assertion fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use kubenurse_aggregator::auth::DEFAULT_AUDIENCE;
use kubenurse_lab::aggregator::LocalAggregator;
use kubenurse_lab::cluster::{write_agent_token, ClusterSpec, LocalCluster};
use kubenurse_testkit::apiserver::FakeApiServer;
use kubenurse_testkit::http::{eventually, http_get};
use kubenurse_testkit::sim::{agent_env, NAMESPACE, SERVICE_ACCOUNT};
use serde_json::Value;

const ROLE: &str = "KUBENURSE_E2E_ROLE";
/// The low file-descriptor limit of the starved agent: its listener then holds at most 64
/// connections (the floor of its connection limit), enough for a flood to take them all.
const STARVED_NOFILE: u32 = 64;

fn main() -> ExitCode {
    match std::env::var(ROLE).as_deref() {
        Ok("agent") => child(|| async {
            let config = kubenurse_agent::config::Config::from_lookup(&|k| std::env::var(k).ok())?;
            kubenurse_agent::run(config, None, kubenurse_common::signal::shutdown_signal()).await?;
            Ok(())
        }),
        Ok("aggregator") => child(|| async {
            let args = kubenurse_aggregator::config::parse_args([std::ffi::OsString::from("kubenurse-aggregator")])
                .map_err(|(_, text)| anyhow::anyhow!(text))?;
            let config = kubenurse_aggregator::config::Config::from_args(args)?;
            kubenurse_aggregator::run(config, None, kubenurse_common::signal::shutdown_signal()).await?;
            Ok(())
        }),
        _ => parent(),
    }
}

fn child<F: std::future::Future<Output = anyhow::Result<()>>>(body: impl FnOnce() -> F) -> ExitCode {
    kubenurse_common::logging::init(tracing::Level::WARN);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    match runtime.map_err(anyhow::Error::from).and_then(|r| r.block_on(body())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("child: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parent() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for (name, result) in [
        ("an_agent_out_of_file_descriptors_blames_itself", runtime.block_on(starved_agent())),
        ("the_aggregator_killed_under_load", runtime.block_on(aggregator_killed())),
    ] {
        match result {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n{e:?}");
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A child process of this binary in `role`, killed (SIGKILL) when dropped.
struct ChildGuard(Child);

impl ChildGuard {
    fn spawn(role: &str, env: &HashMap<String, String>, nofile: Option<u32>, log: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut cmd = match nofile {
            // The limit applies to the child alone.
            Some(n) => {
                let mut c = Command::new("bash");
                c.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\"")).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).envs(env).env(ROLE, role);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(log)?);
        Ok(Self(cmd.spawn()?))
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn suspects(agg_url: &str) -> Option<Vec<Value>> {
    let (_, body) = http_get(&format!("{agg_url}/api/v1/suspects")).await.ok()?;
    serde_json::from_str::<Value>(&body).ok()?["suspects"].as_array().cloned()
}

async fn starved_agent() -> anyhow::Result<()> {
    let dir = workdir("process-starved");
    let subnet = 87;
    let api = FakeApiServer::start(&dir).await?;
    let agg = LocalAggregator::reviewing(&api, subnet).await?;
    let mut cluster = LocalCluster::start_on(api, &ClusterSpec::streaming(subnet, 6, &agg.grpc_url()), &dir).await?;
    // node-01 runs as its own process under the low limit.
    let starved = cluster.agents.remove(0);
    let sim = starved.sim.clone();
    starved.stop().await?;
    let mut env = agent_env(&cluster.api, &sim, 18080, "500ms", 10);
    env.insert("KUBENURSE_AGGREGATOR_URL".into(), agg.grpc_url());
    let token = write_agent_token(&cluster.api, &dir, &sim, DEFAULT_AUDIENCE)?;
    env.insert("KUBENURSE_AGGREGATOR_TOKEN_FILE".into(), token.display().to_string());
    env.insert("KUBECONFIG".into(), cluster.api.kubeconfig_path().display().to_string());
    let child = ChildGuard::spawn("agent", &env, Some(STARVED_NOFILE), &dir.join("starved-agent.log"))?;
    let result = async {
        let agg_url = agg.url();
        eventually("a healthy matrix with the starved agent in it", Duration::from_secs(30), || {
            let agg_url = agg_url.clone();
            async move {
                let (_, status) = http_get(&format!("{agg_url}/api/v1/status")).await.ok()?;
                let status: Value = serde_json::from_str(&status).ok()?;
                (status["connected_agents"] == 6 && suspects(&agg_url).await?.is_empty()).then_some(())
            }
        })
        .await?;
        // The flood: keep the agent's port full of idle connections (its header timeout closes
        // them after 10 s; they are opened again), so its descriptors run out.
        let target = std::net::SocketAddr::new(sim.ip, 18080);
        let flood = tokio::spawn(async move {
            let mut open = Vec::new();
            let until = Instant::now() + Duration::from_secs(25);
            while Instant::now() < until {
                open.retain(|s: &tokio::net::TcpStream| s.peer_addr().is_ok());
                while open.len() < 300 {
                    match tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(target)).await
                    {
                        Ok(Ok(s)) => open.push(s),
                        _ => break,
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let verdict = eventually("node-01 named as a local source", Duration::from_secs(20), || {
            let agg_url = agg_url.clone();
            let node = sim.node.clone();
            async move {
                let list = suspects(&agg_url).await?;
                let local =
                    list.iter().any(|s| s["kind"] == "source" && s["cause"] == "local" && s["node"] == node.as_str());
                local.then_some(list)
            }
        })
        .await;
        // Whatever was named, it is never a zone, the cluster, or any node but the starved one.
        let list = suspects(&agg.url()).await.unwrap_or_default();
        flood.abort();
        let list = verdict.map(|_| list)?;
        for s in &list {
            anyhow::ensure!(s["kind"] != "zone" && s["kind"] != "cluster", "a {} suspect: {list:?}", s["kind"]);
            anyhow::ensure!(s["node"] == sim.node.as_str(), "another node named: {list:?}");
        }
        println!("starved agent: suspects {}", serde_json::to_string(&list)?);
        anyhow::Ok(())
    }
    .await;
    drop(child);
    cluster.stop().await?;
    agg.stop().await?;
    result
}

async fn aggregator_killed() -> anyhow::Result<()> {
    let dir = workdir("process-sigkill");
    let subnet = 88;
    let api = FakeApiServer::start(&dir).await?;
    let ip = format!("127.0.{subnet}.254");
    let env: HashMap<String, String> = HashMap::from([
        ("KUBENURSE_AGGREGATOR_GRPC_ADDRESS".into(), format!("{ip}:50051")),
        ("KUBENURSE_AGGREGATOR_HTTP_ADDRESS".into(), format!("{ip}:18080")),
        ("KUBENURSE_AGGREGATOR_AUTH_SERVICE_ACCOUNT".into(), format!("{NAMESPACE}:{SERVICE_ACCOUNT}")),
        ("KUBECONFIG".into(), api.kubeconfig_path().display().to_string()),
    ]);
    let agg_url = format!("http://{ip}:18080");
    let status = |agg_url: String| async move {
        let (_, body) = http_get(&format!("{agg_url}/api/v1/status")).await.ok()?;
        serde_json::from_str::<Value>(&body).ok()
    };
    let mut aggregator = ChildGuard::spawn("aggregator", &env, None, &dir.join("aggregator-1.log"))?;
    eventually("aggregator up", Duration::from_secs(20), || status(agg_url.clone())).await?;
    let cluster =
        LocalCluster::start_on(api, &ClusterSpec::streaming(subnet, 4, &format!("http://{ip}:50051")), &dir).await?;
    let result = async {
        eventually("4 agents streaming", Duration::from_secs(20), || {
            let s = status(agg_url.clone());
            async move { (s.await?["connected_agents"] == 4).then_some(()) }
        })
        .await?;
        aggregator.kill(); // SIGKILL: no GoAway, connections reset.
        let metrics = format!("{}/metrics", cluster.agents[0].url());
        eventually("the agent sees its stream gone", Duration::from_secs(10), || {
            let metrics = metrics.clone();
            async move { http_get(&metrics).await.ok()?.1.contains("kubenurse_aggregator_connected 0").then_some(()) }
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (_, m) = http_get(&metrics).await?;
        anyhow::ensure!(m.contains("kubenurse_aggregator_dropped_results_total 0"), "nothing dropped in 5 s: {m}");
        let restarted = Instant::now();
        let _aggregator = ChildGuard::spawn("aggregator", &env, None, &dir.join("aggregator-2.log"))?;
        eventually("4 agents back", Duration::from_secs(20), || {
            let s = status(agg_url.clone());
            async move { (s.await?["connected_agents"] == 4).then_some(()) }
        })
        .await?;
        let back = restarted.elapsed();
        // What they queued arrives at once: ≥ 10 rounds × 7 checks × 4 agents = 280 were queued
        // in the outage (≥ 5 s at 500 ms), while live rounds bring 56 a second: 250 within 2 s
        // (the status is read from a snapshot at most a 1 s tick old) takes the queued ones.
        let ingested = eventually("the queued results delivered", Duration::from_secs(2), || {
            let s = status(agg_url.clone());
            async move { s.await?["results_ingested"].as_u64().filter(|n| *n >= 250) }
        })
        .await?;
        println!("aggregator SIGKILL: agents back {back:?} after the restart, {ingested} results within 2 s");
        anyhow::Ok(())
    }
    .await;
    cluster.stop().await?;
    result
}
