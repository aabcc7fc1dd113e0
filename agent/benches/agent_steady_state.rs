//! Agent benchmarks (a bench binary that prints figures, not a timed test):
//!
//! 1. Steady state: one agent process with 10 neighbours at a 1 s interval on loopback —
//!    resident memory and CPU per round over at least 60 rounds (`BENCH_ROUNDS`).
//! 2. Measurement overhead: the latency the agent's check client reports for `/alwayshappy`
//!    minus that of a bare hyper client doing the same request, median over 1000+ each.
//!
//! 3. The floor of the CPU per round: a bare hyper client process (this binary again,
//!    `BENCH_ROLE=bare`) doing the same 14 requests every second, as concurrently: 2 over TLS
//!    to the API server with the token, 2 to an agent's own endpoint, 10 to neighbours; and,
//!    unless `BENCH_CHECK_UDP=false`, the same UDP exchanges from a bare tokio socket (the
//!    default `KUBENURSE_UDP_PACKETS` to each neighbour's echo, spaced over the same window).
//!    The measured agent also answers its ten neighbours' checks and echoes; the floor does
//!    not, so the ratio is an upper bound.
//!
//! Run: `cargo bench -p kubenurse-agent --bench agent_steady_state`

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use kubenurse_agent::config::vars::UDP_PACKETS;
use kubenurse_agent::probe::ProbeClient;
use kubenurse_agent::udp::wire::{Datagram, Direction, LEN};
use kubenurse_agent::udp::RoundTiming;
use kubenurse_testkit::apiserver::{kubenurse_pod, node, FakeApiServer};
use kubenurse_testkit::http::{eventually, http_get};
use kubenurse_testkit::measure::{median, proc_stat, ticks_per_second};
use kubenurse_testkit::sim::{agent_env, udp_port, SimNode, NAMESPACE};

const BIN: &str = env!("CARGO_BIN_EXE_kubenurse-agent");

fn rounds_done(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("kubenurse_httpclient_request_duration_seconds_count{type=\"api_server_direct\"}"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Agent processes of this build, one per simulated node; killed when dropped.
struct Agents(Vec<std::process::Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Registers `sim`'s node and pod and starts its agent process.
fn start_agent(api: &FakeApiServer, sim: &SimNode, log: &std::path::Path) -> anyhow::Result<std::process::Child> {
    api.apply_node(node(&sim.node, &sim.zone));
    api.apply_pod(kubenurse_pod(NAMESPACE, &sim.pod, &sim.node, &sim.ip.to_string()));
    let mut env = agent_env(api, sim, 18080, "1s", 10);
    // BENCH_REUSE_CONNECTIONS=true measures the keep-alive variant.
    if let Ok(reuse) = std::env::var("BENCH_REUSE_CONNECTIONS") {
        env.insert("KUBENURSE_REUSE_CONNECTIONS".into(), reuse);
    }
    // BENCH_CHECK_UDP=false: without the UDP probes (and their echoes), to tell the costs apart.
    if let Ok(udp) = std::env::var("BENCH_CHECK_UDP") {
        env.insert("KUBENURSE_CHECK_UDP".into(), udp);
    }
    Ok(Command::new(BIN)
        .env_clear()
        .envs(env)
        .env("KUBECONFIG", api.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?)
}

async fn steady_state(api: &FakeApiServer, dir: &std::path::Path, rounds: u64, floor_ms: f64) -> anyhow::Result<()> {
    let sim = SimNode::new(71, 11);
    let mut child = start_agent(api, &sim, &dir.join("measured-agent.log"))?;
    let pid = child.id();
    let metrics_url = format!("http://{}:18080/metrics", sim.ip);
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Warm-up: a few rounds so the watches, pools and allocator settle.
        loop {
            if let Ok((200, m)) = http_get(&metrics_url).await {
                if rounds_done(&m) >= 5 {
                    break;
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "measured agent did not start (see measured-agent.log)");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (_, m0) = http_get(&metrics_url).await?;
        let s0 = proc_stat(pid)?;
        let (cpu0, rss0) = (s0.cpu_ticks, s0.rss_kib);
        let r0 = rounds_done(&m0);
        let t0 = Instant::now();
        let mut rss_samples = Vec::new();
        // Scraping costs the agent CPU too: only /proc is read while measuring.
        while t0.elapsed() < Duration::from_secs(rounds) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            rss_samples.push(proc_stat(pid)?.rss_kib as f64);
        }
        let s1 = proc_stat(pid)?;
        let (cpu1, rss1, hwm) = (s1.cpu_ticks, s1.rss_kib, s1.hwm_kib);
        let (_, m1) = http_get(&metrics_url).await?;
        let r1 = rounds_done(&m1);
        let elapsed = t0.elapsed();
        let paths = m1.matches("kubenurse_httpclient_request_duration_seconds_count{type=\"path_").count();
        let cpu_ms = (cpu1 - cpu0) as f64 / ticks_per_second() * 1e3;
        let n = (r1 - r0) as f64;
        let reuse = std::env::var("BENCH_REUSE_CONNECTIONS").unwrap_or_else(|_| "false".into());
        println!(
            "steady state (KUBENURSE_REUSE_CONNECTIONS={reuse}): {} rounds in {:.1}s, {paths} neighbours checked per round",
            r1 - r0,
            elapsed.as_secs_f64()
        );
        println!(
            "  resident memory: start {:.1} MiB, end {:.1} MiB, median {:.1} MiB, peak (VmHWM) {:.1} MiB   [target <= 15 MiB]",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            median(rss_samples) / 1024.0,
            hwm as f64 / 1024.0
        );
        println!(
            "  CPU: {cpu_ms:.0} ms over {n} rounds = {:.2} ms per round = {:.2} x the bare client   [target <= 1.5 x]",
            cpu_ms / n,
            cpu_ms / n / floor_ms
        );
        anyhow::Ok(())
    }
    .await;
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();
    result
}

async fn bare_hyper(host: &str, port: u16) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/alwayshappy")
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let took = start.elapsed();
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    resp.into_body().collect().await?;
    Ok(took)
}

async fn overhead(target: &SimNode, requests: usize) -> anyhow::Result<()> {
    let tls = kubenurse_agent::tls::client_config(false, std::path::Path::new("/nonexistent"), &[])?;
    let client = ProbeClient::new(tls, false);
    let host = target.ip.to_string();
    let uri: http::Uri = format!("http://{host}:18080/alwayshappy").parse()?;
    let headers = http::HeaderMap::new();
    let (mut agent, mut bare) = (Vec::new(), Vec::new());
    for i in 0..requests * 2 {
        // Interleaved so both see the same machine load.
        if i % 2 == 0 {
            let r = client.get(&uri, &headers, Duration::from_secs(5)).await;
            anyhow::ensure!(r.failure.is_none(), "probe failed: {:?}", r.failure);
            agent.push(r.duration.as_secs_f64() * 1e6);
        } else {
            bare.push(bare_hyper(&host, 18080).await?.as_secs_f64() * 1e6);
        }
    }
    let (ma, mb) = (median(agent), median(bare));
    println!(
        "measurement overhead: {requests} requests each, new connection per request (keep-alive off, as the agent)"
    );
    println!("  agent check client median {ma:.1} us, bare hyper median {mb:.1} us");
    println!("  overhead {:.1} us (ratio {:.3})   [target <= 50 us]", ma - mb, ma / mb);
    Ok(())
}

/// An HTTPS GET of `/version` with the token, new connection, `name` as the TLS server name.
async fn bare_tls(
    connector: &tokio_rustls::TlsConnector,
    api: std::net::SocketAddr,
    name: &str,
    token_file: &std::path::Path,
) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(token_file)?;
    let tcp = tokio::net::TcpStream::connect(api).await?;
    tcp.set_nodelay(true)?;
    let server = rustls::pki_types::ServerName::try_from(name.to_string())?;
    let tls = connector.connect(server, tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/version")
        .header(http::header::HOST, format!("{name}:{}", api.port()))
        .header(http::header::AUTHORIZATION, format!("Bearer {}", token.trim()))
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    resp.into_body().collect().await?;
    Ok(())
}

/// One round of UDP exchanges as the agent's prober makes them: `timing.packets` datagrams to
/// every peer, spaced over `timing.window`, replies read until `timing.linger` after it.
/// Returns the replies received.
async fn bare_udp_round(
    socket: &tokio::net::UdpSocket,
    peers: &[std::net::SocketAddr],
    timing: RoundTiming,
) -> anyhow::Result<usize> {
    let start = tokio::time::Instant::now();
    let spacing = timing.window / timing.packets.max(1);
    let send = async {
        for seq in 0..timing.packets {
            tokio::time::sleep_until(start + spacing * seq).await;
            for (i, peer) in peers.iter().enumerate() {
                let d = Datagram { direction: Direction::Request, nonce: i as u64, seq, sent_micros: 0 };
                socket.send_to(&d.encode(), peer).await?;
            }
        }
        anyhow::Ok(())
    };
    let receive = async {
        let (deadline, expected) = (start + timing.window + timing.linger, peers.len() * timing.packets as usize);
        let (mut buf, mut got) = ([0u8; LEN + 1], 0);
        while got < expected {
            match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) => got += usize::from(Datagram::decode(&buf[..n]).is_ok()),
                _ => break,
            }
        }
        got
    };
    let (sent, got) = futures::join!(send, receive);
    sent?;
    Ok(got)
}

/// `BENCH_ROLE=bare`: `BENCH_BARE_ROUNDS` rounds, one a second, of an agent's 14 requests
/// with a bare hyper client; prints the CPU ticks the rounds took.
fn run_bare() -> anyhow::Result<()> {
    let var = |k: &str| std::env::var(k).map_err(|_| anyhow::anyhow!("{k} not set"));
    let plain: Vec<String> = var("BENCH_BARE_PLAIN")?.split(',').map(String::from).collect();
    let api: std::net::SocketAddr = var("BENCH_BARE_API")?.parse()?;
    let sa_dir = PathBuf::from(var("BENCH_BARE_SA_DIR")?);
    let rounds: u64 = var("BENCH_BARE_ROUNDS")?.parse()?;
    // BENCH_BARE_UDP: the neighbours' echo addresses, when the agents probe over UDP.
    let udp_peers: Vec<std::net::SocketAddr> = match std::env::var("BENCH_BARE_UDP") {
        Ok(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        Err(_) => Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let tls = kubenurse_agent::tls::client_config(false, &sa_dir.join("ca.crt"), &[])?;
        let connector = tokio_rustls::TlsConnector::from(tls);
        let token = sa_dir.join("token");
        let packets = (UDP_PACKETS.parse)(UDP_PACKETS.var.default_text()).map_err(anyhow::Error::msg)?;
        let timing = RoundTiming::for_interval(packets, Duration::from_secs(1));
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let mut replies = 0;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        let start = proc_stat(std::process::id())?.cpu_ticks;
        for _ in 0..rounds {
            ticker.tick().await;
            let tls_checks = ["127.0.0.1", "localhost"].map(|name| bare_tls(&connector, api, name, &token));
            let plain_checks = plain.iter().map(|hp| {
                let (host, port) = hp.rsplit_once(':').unwrap_or((hp.as_str(), "18080"));
                let port: u16 = port.parse().unwrap_or(18080);
                async move { bare_hyper(host, port).await.map(|_| ()) }
            });
            let udp_round = async {
                match udp_peers.is_empty() {
                    true => Ok(0),
                    false => bare_udp_round(&udp, &udp_peers, timing).await,
                }
            };
            let (a, b, u) = futures::join!(
                futures::future::join_all(tls_checks),
                futures::future::join_all(plain_checks),
                udp_round
            );
            for r in a.into_iter().chain(b) {
                r?;
            }
            replies += u?;
        }
        println!("ticks {}", proc_stat(std::process::id())?.cpu_ticks - start);
        println!("udp replies {replies}");
        anyhow::Ok(())
    })
}

/// The floor: a bare client process doing `rounds` agent rounds; CPU ms per round.
fn bare_floor(api: &FakeApiServer, sims: &[SimNode], rounds: u64) -> anyhow::Result<f64> {
    // An agent's own two checks go to its own endpoint: here the first neighbour's.
    let own = format!("{}:18080", sims[0].ip);
    let plain: Vec<String> =
        [own.clone(), own].into_iter().chain(sims.iter().map(|s| format!("{}:18080", s.ip))).collect();
    let mut bare = Command::new(std::env::current_exe()?);
    if std::env::var("BENCH_CHECK_UDP").as_deref() != Ok("false") {
        let echoes: Vec<String> = sims.iter().map(|s| format!("{}:{}", s.ip, udp_port(18080))).collect();
        bare.env("BENCH_BARE_UDP", echoes.join(","));
    }
    let out = bare
        .env("BENCH_ROLE", "bare")
        .env("BENCH_BARE_PLAIN", plain.join(","))
        .env("BENCH_BARE_API", api.addr().to_string())
        .env("BENCH_BARE_SA_DIR", api.service_account_dir())
        .env("BENCH_BARE_ROUNDS", rounds.to_string())
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(out.status.success(), "bare client: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> anyhow::Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bare client printed {text:?}"))
    };
    let (ticks, replies) = (field("ticks ")?, field("udp replies ")?);
    println!("  bare client: {replies} UDP replies over {rounds} rounds");
    Ok(ticks / ticks_per_second() * 1e3 / rounds as f64)
}

fn main() -> anyhow::Result<()> {
    if std::env::var("BENCH_ROLE").as_deref() == Ok("bare") {
        return run_bare();
    }
    let rounds: u64 = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let requests: usize = std::env::var("BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-agent");
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        // Ten neighbour agents and the measured one, each in its own process.
        std::fs::create_dir_all(&dir)?;
        let api = FakeApiServer::start(&dir).await?;
        let sims: Vec<SimNode> = (1..=10).map(|i| SimNode::new(71, i)).collect();
        let mut neighbours = Agents(Vec::new());
        for sim in &sims {
            neighbours.0.push(start_agent(&api, sim, &dir.join(format!("{}.log", sim.node)))?);
        }
        let ready = format!("http://{}:18080/ready", sims[0].ip);
        eventually("neighbour agents listening", Duration::from_secs(30), || {
            let ready = ready.clone();
            async move { http_get(&ready).await.ok().filter(|(code, _)| *code == 200) }
        })
        .await?;
        overhead(&sims[0], requests).await?;
        let floor_rounds = rounds.min(30);
        let floor = tokio::task::block_in_place(|| bare_floor(&api, &sims, floor_rounds))?;
        let udp = if std::env::var("BENCH_CHECK_UDP").as_deref() == Ok("false") { "" } else { " and UDP exchanges" };
        println!("bare hyper client doing the same 14 requests{udp} a round: {floor:.2} ms CPU per round over {floor_rounds} rounds (the floor)");
        steady_state(&api, &dir, rounds, floor).await
    })
}
