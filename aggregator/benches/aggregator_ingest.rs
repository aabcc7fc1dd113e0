//! Aggregator benchmarks (a bench binary that prints figures):
//!
//! 1. Ingest: results per second one aggregator process sustains over gRPC from a load
//!    generator simulating 10,000 nodes × 10 neighbours (one stream per simulated agent), and
//!    its resident memory afterwards.
//!    The same load again while 8 clients loop `/api/v1/matrix` (asking for gzip as browsers
//!    do; `BENCH_CLIENT_GZIP=0` for the plain 25 MiB) and `/metrics`: the ratio of the two
//!    rates (the API answers from snapshots, off the owner task), and where the CPU went.
//! 2. `/api/v1/matrix` with those 100,000 cells: median response time, plain and gzipped,
//!    beside serde_json writing the same number of cells from a Vec (the floor); `/metrics`
//!    median time and size (`BENCH_CELL_METRICS=all` for per-cell series).
//!
//! Floor of the ingest figure: a bare tonic sink (this binary again, `BENCH_ROLE=sink`) that
//! only decodes the same messages and counts their results, fed by the same generator.
//!
//! Floor and aggregator trials alternate (both processes run throughout; the simulated agents
//! connect to one, then the other), so a drift in the machine's speed hits both.
//!
//! The aggregator's window is 10 s (`BENCH_WINDOW`), ten slots of a second: the bench's
//! rounds fill every slot of it, as five minutes of a real cluster fill the default window,
//! so the memory figure is a full window's (with the default window they would fill one slot).
//!
//! The load generator runs in this process, on the same 2 cores as the aggregator: the ingest
//! figure is what the aggregator achieves while sharing the machine with its load.
//! Run: `cargo bench -p kubenurse-aggregator --bench aggregator_ingest`
//! (`BENCH_NODES`, `BENCH_ROUNDS` (rounds per trial, 10) to change the load).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt as _;
use kubenurse_proto::v1::nurse_server::{Nurse, NurseServer};
use kubenurse_proto::v1::{agent_message, AgentMessage, AggregatorMessage};
use kubenurse_proto::MAX_MESSAGE_BYTES;
use kubenurse_testkit::http::http_get;
use kubenurse_testkit::measure::{median, proc_stat, ticks_per_second};

mod sim;
use sim::{connect_agents, ingested, node, send_round, wait_healthy, Agents};

const BIN: &str = env!("CARGO_BIN_EXE_kubenurse-aggregator");
const LIMIT: usize = 10;

/// CPU time a process has used so far, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    proc_stat(pid).map_or(0.0, |p| p.cpu_ticks as f64 / ticks_per_second())
}

/// Sends rounds `rounds` from every simulated agent and waits until all are ingested: results/s.
async fn ingest_rounds(http: &str, senders: &Agents, rounds: std::ops::Range<u64>) -> anyhow::Result<f64> {
    let base = ingested(http).await;
    let t0 = Instant::now();
    let count = rounds.end.saturating_sub(rounds.start);
    for round in rounds {
        send_round(senders, round, |i, k| 150 + ((i * 7 + k * 13) % 400) as u64).await?;
    }
    let expected = base + senders.len() as u64 * LIMIT as u64 * count;
    let mut done = ingested(http).await;
    while done < expected && t0.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        done = ingested(http).await;
    }
    Ok((done - base) as f64 / t0.elapsed().as_secs_f64())
}

/// Rounds before the measured ones (they create the cells).
const WARM_UP: u64 = 2;
/// Trials of each measurement; the medians are printed.
const TRIALS: u64 = 3;

/// Rounds `rounds` while 8 clients loop `/api/v1/matrix` and `/metrics` (or only the matrix),
/// asking for gzip as browsers do (or not): results/s, and how many answers the clients got.
async fn while_queried(
    http: &'static str,
    senders: &Agents,
    rounds: std::ops::Range<u64>,
    with_metrics: bool,
    gzip: bool,
) -> anyhow::Result<(f64, u32, u32)> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for k in 0..8 {
        let path = if k % 2 == 0 || !with_metrics { "/api/v1/matrix" } else { "/metrics" };
        let stop = stop.clone();
        loops.push(tokio::spawn(async move {
            // One client per loop, keeping its connection, as a dashboard's browser does; the
            // body read as bytes (a client building a TLS root store and decoding 1.6 MiB of
            // gzip as text per request cost more CPU on these 2 cores than the aggregator).
            let Ok(client) = kubenurse_testkit::http::client() else { return (0, 0) };
            let url = format!("http://{http}{path}");
            let (mut served, mut limited) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) && served < 10_000 {
                let mut req = client.get(&url);
                if gzip {
                    req = req.header("accept-encoding", "gzip");
                }
                let answer = match req.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        resp.bytes().await.map(|b| (status, b.len())).ok()
                    }
                    Err(_) => None,
                };
                match answer {
                    Some((200, len)) if len > 0 => served += 1,
                    // Beyond the API's rate (429) or its permits (503): back off as
                    // Retry-After says.
                    other => {
                        limited += u32::from(matches!(other, Some((429 | 503, _))));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            (served, limited)
        }));
    }
    let rate = ingest_rounds(http, senders, rounds).await;
    stop.store(true, Ordering::Relaxed);
    let (mut served, mut limited) = (0, 0);
    for l in loops {
        let (s, l) = l.await.unwrap_or((0, 0));
        (served, limited) = (served + s, limited + l);
    }
    Ok((rate?, served, limited))
}

/// The floor: decodes every message of every stream and counts the results, nothing else.
struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl Nurse for Sink {
    type ReportStream = Pin<Box<dyn futures::Stream<Item = Result<AggregatorMessage, tonic::Status>> + Send>>;

    async fn report(
        &self,
        request: tonic::Request<tonic::Streaming<AgentMessage>>,
    ) -> Result<tonic::Response<Self::ReportStream>, tonic::Status> {
        let (mut inbound, count) = (request.into_inner(), self.0.clone());
        // Nothing goes back; the reply stream ends when the agent's stream does (as the
        // aggregator's does), so its connection closes.
        let (ended, replies) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(agent_message::Msg::Batch(b)) = m.msg {
                    count.fetch_add(b.results.len() as u64, Ordering::Relaxed);
                }
            }
            drop(ended);
        });
        let replies = futures::stream::once(replies).filter_map(|_| std::future::ready(None));
        Ok(tonic::Response::new(Box::pin(replies)))
    }
}

/// `BENCH_ROLE=sink`: the bare sink on `BENCH_SINK_GRPC`, its count on `BENCH_SINK_HTTP`
/// `/api/v1/status` (as the aggregator's), with the aggregator's gRPC server settings.
fn run_sink() -> anyhow::Result<()> {
    let grpc: std::net::SocketAddr = std::env::var("BENCH_SINK_GRPC")?.parse()?;
    let http = std::env::var("BENCH_SINK_HTTP")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let count = Arc::new(AtomicU64::new(0));
        let seen = count.clone();
        let status = axum::routing::get(move || {
            let n = seen.load(Ordering::Relaxed);
            async move { axum::Json(serde_json::json!({ "results_ingested": n })) }
        });
        let app = axum::Router::new()
            .route("/api/v1/status", status)
            .route("/healthz", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind(&http).await?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        let service = NurseServer::new(Sink(count))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        tonic::transport::Server::builder()
            .initial_stream_window_size(Some(64 * 1024))
            .initial_connection_window_size(Some(256 * 1024))
            .add_service(service)
            .serve(grpc)
            .await?;
        anyhow::Ok(())
    })
}

/// Median time from request to last body byte over `n` fresh connections, and the body size.
async fn timed_get(http: &str, path: &str, gzip: bool, n: usize) -> anyhow::Result<(f64, usize)> {
    let mut times = Vec::new();
    let mut size = 0;
    let mut limited = 0;
    while times.len() < n {
        let t = Instant::now();
        let tcp = tokio::net::TcpStream::connect(http).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::get(path).header(http::header::HOST, http);
        if gzip {
            req = req.header(http::header::ACCEPT_ENCODING, "gzip");
        }
        let resp = sender.send_request(req.body(http_body_util::Empty::<hyper::body::Bytes>::new())?).await?;
        if resp.status() == 429 && limited < 10 * n {
            // Beyond the API's rate: wait as Retry-After says, and time the next one instead.
            limited += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        anyhow::ensure!(resp.status() == 200, "{path} answered {}", resp.status());
        size = http_body_util::BodyExt::collect(resp.into_body()).await?.to_bytes().len();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(times), size))
}

/// The matrix floor: serde_json writing `cells` cells of the API's shape from a Vec, median ms.
fn serde_floor_ms(cells: usize) -> f64 {
    #[derive(serde::Serialize)]
    struct Cell {
        src: String,
        dst: String,
        count: u64,
        errors: u64,
        error_ratio: f64,
        p50_ms: Option<f64>,
        p90_ms: Option<f64>,
        p99_ms: Option<f64>,
        last_ms: Option<f64>,
        last_error: Option<String>,
        last_seen: i64,
        stale: bool,
        failing: bool,
        slow: bool,
        value: Option<f64>,
    }
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        cells: &'a [Cell],
    }
    let v: Vec<Cell> = (0..cells)
        .map(|i| Cell {
            src: node(i / LIMIT),
            dst: node((i / LIMIT + 1 + i % LIMIT) % (cells / LIMIT).max(1)),
            count: 60,
            errors: 0,
            error_ratio: 0.0,
            p50_ms: Some(0.31),
            p90_ms: Some(0.42),
            p99_ms: Some(0.55),
            last_ms: Some(0.3),
            last_error: None,
            last_seen: 1_780_000_000_000_000,
            stale: false,
            failing: false,
            slow: false,
            value: Some(0.55),
        })
        .collect();
    let times = (0..5)
        .map(|_| {
            let t = Instant::now();
            let mut buf = Vec::with_capacity(cells * 300);
            let _ = serde_json::to_writer(&mut buf, &Doc { cells: &v });
            std::hint::black_box(buf.len());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(times)
}

fn main() -> anyhow::Result<()> {
    if std::env::var("BENCH_ROLE").as_deref() == Ok("sink") {
        return run_sink();
    }
    let nodes: usize = std::env::var("BENCH_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let rounds = rounds as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // The floor: the same generator against a sink that only decodes. Both processes run from
    // the start and their trials alternate, so a change in the machine's speed (these machines
    // drift by a third within minutes) hits the floor and the aggregator alike.
    let (sink_grpc, sink_http) = ("127.0.0.1:18153", "127.0.0.1:18154");
    let mut sink = Command::new(std::env::current_exe()?)
        .env("BENCH_ROLE", "sink")
        .env("BENCH_SINK_GRPC", sink_grpc)
        .env("BENCH_SINK_HTTP", sink_http)
        .stdin(Stdio::null())
        .spawn()?;
    let sink_pid = sink.id();
    let per_result = |cpu: f64| cpu * 1e6 / (nodes as f64 * LIMIT as f64 * rounds as f64);

    let (grpc, http) = ("127.0.0.1:18151", "127.0.0.1:18152");
    let cell_metrics = std::env::var("BENCH_CELL_METRICS").unwrap_or_else(|_| "none".into());
    let window = std::env::var("BENCH_WINDOW").unwrap_or_else(|_| "10s".into());
    let mut child = Command::new(BIN)
        .args(["--grpc-address", grpc, "--http-address", http, "--auth", "none", "--discovery", "false"])
        .args(["--cell-metrics", &cell_metrics, "--window", &window])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let result = runtime.block_on(async {
        wait_healthy(sink_http, "the bare sink").await?;
        wait_healthy(http, "the aggregator").await?;
        // One trial: connect every simulated agent to `grpc`, warm up (the first rounds create
        // the cells), time `rounds` rounds, and close the streams again (one process's 10,000
        // connections at a time). Rounds are numbered on across trials.
        let mut next = 0u64;
        let mut trial = async |grpc: &str, http: &str, pid: u32, warm_up: u64| -> anyhow::Result<(f64, f64)> {
            let senders = connect_agents(grpc, nodes, LIMIT).await?;
            ingest_rounds(http, &senders, next..next + warm_up).await?;
            next += warm_up;
            let before = cpu_seconds(pid);
            let rate = ingest_rounds(http, &senders, next..next + rounds).await?;
            next += rounds;
            let cpu = cpu_seconds(pid) - before;
            drop(senders);
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok((rate, cpu))
        };
        let (mut floors, mut sink_cpu, mut alone, mut cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for t in 0..TRIALS {
            let warm_up = if t == 0 { WARM_UP } else { 1 };
            let (rate, used) = trial(sink_grpc, sink_http, sink_pid, warm_up).await?;
            floors.push(rate);
            sink_cpu.push(used);
            let (rate, used) = trial(grpc, http, pid, warm_up).await?;
            alone.push(rate);
            cpu.push(used);
        }
        let (floor, alone, cpu) = (median(floors), median(alone), median(cpu));
        println!("ingest: {nodes} simulated agents x {LIMIT} neighbours, medians of {TRIALS} trials of {rounds} rounds each (floor and aggregator trials alternating), window {window}");
        println!("  a bare tonic sink decoding the same messages (the floor): {floor:.0} results/s");
        println!("  the aggregator alone: {alone:.0} results/s = {:.2} x the floor   [target >= 0.5]", alone / floor);
        println!(
            "  CPU per result: aggregator {:.2} us, bare sink {:.2} us (the generator shares the 2 cores with either)",
            per_result(cpu),
            per_result(median(sink_cpu))
        );
        println!(
            "  aggregator resident memory after the trials (every agent connected {TRIALS} times): {:.1} MiB   [target <= 256 MiB after queries]",
            proc_stat(pid).map_or(0.0, |p| p.rss_mib())
        );
        let senders = connect_agents(grpc, nodes, LIMIT).await?;
        ingest_rounds(http, &senders, next..next + 1).await?;
        next += 1;
        println!(
            "  aggregator resident memory with every agent connected again, before queries: {:.1} MiB",
            proc_stat(pid).map_or(0.0, |p| p.rss_mib())
        );
        // BENCH_LOOP_METRICS=0: all 8 loop the matrix (to tell the two costs apart).
        let with_metrics = std::env::var("BENCH_LOOP_METRICS").map_or(true, |v| v != "0");
        // BENCH_CLIENT_GZIP=0: the clients take the 25 MiB plain matrix (browsers ask for gzip).
        let gzip = std::env::var("BENCH_CLIENT_GZIP").map_or(true, |v| v != "0");
        // Alone and busy trials alternate, so a change in the machine's speed hits both.
        let (mut quiet, mut busy, mut quiet_cpu, mut served, mut shed) = (Vec::new(), Vec::new(), Vec::new(), 0, 0);
        // Where the CPU goes while queried: the aggregator's, and this process's (the load
        // generator and the 8 clients reading the answers), per result, in both phases.
        let (mut busy_cpu, mut own_alone, mut own_busy) = (Vec::new(), Vec::new(), Vec::new());
        let me = std::process::id();
        for _ in 0..TRIALS {
            let (before, own) = (cpu_seconds(pid), cpu_seconds(me));
            quiet.push(ingest_rounds(http, &senders, next..next + rounds).await?);
            quiet_cpu.push(cpu_seconds(pid) - before);
            own_alone.push(cpu_seconds(me) - own);
            next += rounds;
            let (before, own) = (cpu_seconds(pid), cpu_seconds(me));
            let (rate, answers, refused) =
                while_queried(http, &senders, next..next + rounds, with_metrics, gzip).await?;
            busy_cpu.push(cpu_seconds(pid) - before);
            own_busy.push(cpu_seconds(me) - own);
            busy.push(rate);
            served += answers;
            shed += refused;
            next += rounds;
        }
        let (quiet, busy) = (median(quiet), median(busy));
        let what = match (with_metrics, gzip) {
            (true, true) => "/api/v1/matrix (gzip, as browsers ask) and /metrics",
            (true, false) => "/api/v1/matrix (plain) and /metrics",
            (false, true) => "/api/v1/matrix (gzip, as browsers ask)",
            (false, false) => "/api/v1/matrix (plain)",
        };
        println!(
            "  while 8 clients loop {what}: {busy:.0} results/s = {:.2} x alone ({quiet:.0}/s in the trials between) ({served} answers with 200, {shed} refused by the API's rates and permits)   [target >= 0.9]",
            busy / quiet
        );
        println!(
            "    CPU per result while queried: aggregator {:.2} us (alone {:.2}); this process (generator + clients) {:.2} us (alone {:.2})",
            per_result(median(busy_cpu)),
            per_result(median(quiet_cpu)),
            per_result(median(own_busy)),
            per_result(median(own_alone))
        );

        println!(
            "  aggregator resident memory after the queried trials: {:.1} MiB",
            proc_stat(pid).map_or(0.0, |p| p.rss_mib())
        );
        let (plain_ms, size) = timed_get(http, "/api/v1/matrix", false, 15).await?;
        let (gzip_ms, gzip_size) = timed_get(http, "/api/v1/matrix", true, 15).await?;
        let cells = {
            let (_, body) = http_get(&format!("http://{http}/api/v1/matrix")).await?;
            body.matches("\"src\"").count()
        };
        let floor_ms = serde_floor_ms(cells);
        println!(
            "/api/v1/matrix: {cells} cells, {:.1} MiB JSON, median {plain_ms:.1} ms over 15 requests (request to last byte, shared render)",
            size as f64 / 1048576.0
        );
        println!("  gzipped: {:.1} MiB, median {gzip_ms:.1} ms", gzip_size as f64 / 1048576.0);
        println!(
            "  serde_json writing {cells} cells of the same shape from a Vec (the floor): {floor_ms:.1} ms; plain = {:.2} x, gzipped = {:.2} x the floor",
            plain_ms / floor_ms,
            gzip_ms / floor_ms
        );
        let (metrics_ms, metrics_size) = timed_get(http, "/metrics", false, 15).await?;
        println!(
            "/metrics (--cell-metrics {cell_metrics}): {:.2} MiB, median {metrics_ms:.1} ms   [target <= 1000 ms]",
            metrics_size as f64 / 1048576.0
        );
        println!("  aggregator resident memory after queries: {:.1} MiB   [target <= 256 MiB]", proc_stat(pid).map_or(0.0, |p| p.rss_mib()));
        drop(senders);
        anyhow::Ok(())
    });
    let _ = sink.kill();
    let _ = sink.wait();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();
    result
}
