//! The p99 matrix of a 1,000-node cluster (10 neighbours each: 10,000 cells), two ways, side
//! by side on the same samples:
//!
//! - **Real Prometheus** (Debian package `prometheus`) scrapes the agents' path histograms
//!   (`kubenurse_httpclient_request_duration_seconds`, the agent's default buckets, one series
//!   set per source node and `type="path_<destination>"`) and computes the matrix with
//!   `histogram_quantile(0.99, sum by (node, type, le) (rate(..._bucket[..])))`. The agents'
//!   "5 minutes at 5 s" (61 samples a series) is compressed into 61 scrapes at 1 s, so the
//!   query reads the same number of samples; its median time and Prometheus's RSS after.
//! - **The aggregator** ingests the same 60 rounds over gRPC from 1,000 simulated agents and
//!   answers `/api/v1/matrix?window=5m` (computed afresh by the owner on every request, no
//!   shared render) and the default `/api/v1/matrix` (the shared snapshot's document); their
//!   median times and the aggregator's RSS after.
//!
//! Then, cell by cell: whether the two p99s fall in the same bucket of the agent's histogram,
//! or in neighbouring ones.
//! Run: `cargo bench -p kubenurse-aggregator --bench matrix_vs_prometheus`
//! (`BENCH_NODES` to change the cluster; needs `prometheus` on PATH, else it says so and stops).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubenurse_testkit::http::query_escape;
use kubenurse_testkit::measure::{median, proc_stat};

mod sim;
use sim::{connect_agents, ingested, node, send_round, wait_healthy};

const BIN: &str = env!("CARGO_BIN_EXE_kubenurse-aggregator");
const LIMIT: usize = 10;
/// Rounds of the agents: 5 minutes at 5 s.
const ROUNDS: usize = 60;
/// The agent's default histogram buckets (seconds), what `KUBENURSE_HISTOGRAM_BUCKETS` defaults to.
const BUCKETS: &[f64] = kubenurse_agent::config::DEFAULT_BUCKETS;
const PROMETHEUS: &str = "127.0.0.1:18161";
const EXPORTER: &str = "127.0.0.1:18162";
const GRPC: &str = "127.0.0.1:18163";
const HTTP: &str = "127.0.0.1:18164";
const FAMILY: &str = "kubenurse_httpclient_request_duration_seconds";

/// Kills a child process however the bench ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A deterministic duration (µs) of cell `cell`'s check in `round`: a per-cell base of 1–5 ms,
/// ±30 % jitter, and 3 % of the samples 5–30× slower (a tail worth a p99).
fn duration_micros(cell: usize, round: usize) -> u64 {
    let mut h = (cell as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (round as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    let base = 1_000 + (cell as u64 * 7919) % 4_000;
    let jitter = 700 + h % 600; // per mille
    let tail = if h % 100 < 3 { 5 + (h >> 8) % 26 } else { 1 };
    base * jitter / 1000 * tail
}

/// The exposition of every source node's path histograms after `rounds` rounds.
fn exposition(nodes: usize, rounds: usize) -> String {
    let mut out = String::with_capacity(nodes * LIMIT * (BUCKETS.len() + 3) * 110);
    let _ = writeln!(out, "# HELP {FAMILY} Path check durations.\n# TYPE {FAMILY} histogram");
    for src in 0..nodes {
        for k in 1..=LIMIT {
            let cell = src * LIMIT + (k - 1);
            let labels = format!("node=\"{}\",type=\"path_{}\"", node(src), node((src + k) % nodes));
            let samples: Vec<f64> = (0..rounds).map(|r| duration_micros(cell, r) as f64 / 1e6).collect();
            for le in BUCKETS {
                let n = samples.iter().filter(|s| **s <= *le).count();
                let _ = writeln!(out, "{FAMILY}_bucket{{{labels},le=\"{le}\"}} {n}");
            }
            let _ = writeln!(out, "{FAMILY}_bucket{{{labels},le=\"+Inf\"}} {rounds}");
            let _ = writeln!(out, "{FAMILY}_sum{{{labels}}} {}", samples.iter().sum::<f64>());
            let _ = writeln!(out, "{FAMILY}_count{{{labels}}} {rounds}");
        }
    }
    out
}

/// The bucket of the agent's histogram a value (seconds) falls in (its index; `BUCKETS.len()`
/// for +Inf).
fn bucket_of(seconds: f64) -> usize {
    BUCKETS.iter().position(|le| seconds <= *le).unwrap_or(BUCKETS.len())
}

/// GET `url` with `client` (one client, kept: building one per request costs milliseconds):
/// request-to-last-byte ms and the JSON.
async fn timed_json(client: &reqwest::Client, url: &str) -> anyhow::Result<(f64, serde_json::Value)> {
    let t = Instant::now();
    let resp = client.get(url).send().await?;
    let code = resp.status().as_u16();
    let body = resp.text().await?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(code == 200, "{url} answered {code}: {}", body.chars().take(300).collect::<String>());
    Ok((ms, serde_json::from_str(&body)?))
}

fn main() -> anyhow::Result<()> {
    let nodes: usize = std::env::var("BENCH_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    if Command::new("prometheus").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        println!("matrix_vs_prometheus: no `prometheus` on PATH (Debian package prometheus): nothing measured");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(nodes))
}

async fn run(nodes: usize) -> anyhow::Result<()> {
    let cells = nodes * LIMIT;
    println!("p99 matrix of {nodes} nodes x {LIMIT} neighbours ({cells} cells), {ROUNDS} rounds, buckets {BUCKETS:?}");
    // Every round's exposition, made before the clock starts: each scrape only copies one.
    let pages: Arc<Vec<String>> = Arc::new((0..=ROUNDS).map(|r| exposition(nodes, r)).collect());
    println!("  exposition: {:.1} MiB a scrape", pages[ROUNDS].len() as f64 / 1048576.0);
    // Round 0 (every series at zero) until Prometheus holds it, then one round a second, so
    // every round's increments fall inside the range it is asked about.
    let started = Arc::new(std::sync::OnceLock::<Instant>::new());
    let (pages_, started_) = (pages.clone(), started.clone());
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (pages, started) = (pages_.clone(), started_.clone());
            async move {
                let round = started.get().map_or(0, |t0| (t0.elapsed().as_secs() as usize + 1).min(ROUNDS));
                pages[round].clone()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(EXPORTER).await?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("matrix_vs_prometheus");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: agents\n    static_configs:\n      - targets: ['{EXPORTER}']\n"
        ),
    )?;
    let prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
            .spawn()?,
    );
    let aggregator = Killed(
        Command::new(BIN)
            .args(["--grpc-address", GRPC, "--http-address", HTTP, "--auth", "none", "--discovery", "false"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );

    // The aggregator: the same 60 rounds, as fast as it takes them.
    wait_healthy(HTTP, "the aggregator").await?;
    let agents = connect_agents(GRPC, nodes, LIMIT).await?;
    for round in 0..ROUNDS {
        send_round(&agents, round as u64 + 1, |src, k| duration_micros(src * LIMIT + k, round)).await?;
    }
    let expected = (cells * ROUNDS) as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while ingested(HTTP).await < expected {
        anyhow::ensure!(Instant::now() < deadline, "the aggregator did not ingest {expected} results");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Prometheus: every series at zero first, then the rounds, until the last is scraped.
    let client = kubenurse_testkit::http::client()?;
    let holds = |q: String| {
        let (client, url) = (client.clone(), format!("http://{PROMETHEUS}/api/v1/query?query={}", query_escape(&q)));
        async move {
            let Ok((_, v)) = timed_json(&client, &url).await else { return false };
            v["data"]["result"][0]["value"][1].as_str() == Some(&cells.to_string())
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !holds(format!("count({FAMILY}_count == 0)")).await {
        anyhow::ensure!(Instant::now() < deadline, "Prometheus did not scrape the agents' series");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let t0 = *started.get_or_init(Instant::now);
    let deadline = Instant::now() + Duration::from_secs(ROUNDS as u64 + 60);
    while !holds(format!("count({FAMILY}_count == {ROUNDS})")).await {
        anyhow::ensure!(Instant::now() < deadline, "Prometheus did not scrape {ROUNDS} rounds");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // From the last scrapes at zero to now.
    let range = t0.elapsed().as_secs() + 3;
    let query = format!(
        "histogram_quantile(0.99, sum by (node, type, le) (rate({FAMILY}_bucket{{type=~\"path_.*\"}}[{range}s])))"
    );
    // Every query evaluated at the same instant, so each reads the same samples.
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    let url = format!("http://{PROMETHEUS}/api/v1/query?query={}&time={at:.3}", query_escape(&query));
    let (mut prom_times, mut prom_answer) = (Vec::new(), serde_json::Value::Null);
    for _ in 0..5 {
        let (ms, v) = timed_json(&client, &url).await?;
        prom_times.push(ms);
        prom_answer = v;
    }
    let prom_ms = median(prom_times);
    let prom_rss = proc_stat(prometheus.0.id()).map_or(0.0, |p| p.rss_mib());

    let fresh_url = format!("http://{HTTP}/api/v1/matrix?window=5m&stat=p99");
    let (mut fresh_times, mut matrix) = (Vec::new(), serde_json::Value::Null);
    for _ in 0..15 {
        let (ms, v) = timed_json(&client, &fresh_url).await?;
        fresh_times.push(ms);
        matrix = v;
        // Under the API's rate for dashboards, so no answer is refused.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let mut shared_times = Vec::new();
    for _ in 0..15 {
        shared_times.push(timed_json(&client, &format!("http://{HTTP}/api/v1/matrix?stat=p99")).await?.0);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let (fresh_ms, shared_ms) = (median(fresh_times), median(shared_times));
    let agg_rss = proc_stat(aggregator.0.id()).map_or(0.0, |p| p.rss_mib());

    // Cell by cell.
    let mut prom: HashMap<(String, String), f64> = HashMap::new();
    for s in prom_answer["data"]["result"].as_array().into_iter().flatten() {
        let (Some(src), Some(dst)) = (s["metric"]["node"].as_str(), s["metric"]["type"].as_str()) else { continue };
        let Some(v) = s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()) else { continue };
        prom.insert((src.to_string(), dst.trim_start_matches("path_").to_string()), v);
    }
    let (mut same, mut adjacent, mut compared) = (0, 0, 0);
    let mut differing = Vec::new();
    for c in matrix["cells"].as_array().into_iter().flatten() {
        let (Some(src), Some(dst), Some(p99)) = (c["src"].as_str(), c["dst"].as_str(), c["p99_ms"].as_f64()) else {
            continue;
        };
        let Some(&theirs) = prom.get(&(src.to_string(), dst.to_string())) else { continue };
        compared += 1;
        let (ours, theirs_bucket) = (bucket_of(p99 / 1e3), bucket_of(theirs));
        if ours == theirs_bucket {
            same += 1;
        } else if ours.abs_diff(theirs_bucket) == 1 {
            adjacent += 1;
        }
        if ours != theirs_bucket && differing.len() < 3 {
            differing.push(format!("{src}->{dst}: aggregator {p99:.2} ms, Prometheus {:.2} ms", theirs * 1e3));
        }
    }
    println!("  Prometheus: {} series answered, median {prom_ms:.1} ms over 5 queries (range {range}s: the zero scrape and {ROUNDS} rounds at 1 s), RSS {prom_rss:.1} MiB", prom.len());
    println!("  aggregator: {} cells, ?window=5m (computed on each request) median {fresh_ms:.2} ms, shared snapshot median {shared_ms:.2} ms, RSS {agg_rss:.1} MiB", matrix["cells"].as_array().map_or(0, Vec::len));
    println!(
        "  Prometheus / aggregator: {:.0} x (computed), {:.0} x (shared)   [target >= 300 x]",
        prom_ms / fresh_ms,
        prom_ms / shared_ms
    );
    println!(
        "  cells whose two p99s fall in the same histogram bucket: {same} of {compared}, in neighbouring buckets: {adjacent} (the aggregator's sketch is exact to 5 %, so a p99 near a bucket bound may cross it)   [target: all within one bucket]"
    );
    for d in differing {
        println!("    e.g. {d}");
    }
    drop(agents);
    Ok(())
}
