//! UDP probe benchmark (a bench binary that prints figures, not a timed test), on loopback
//! (subnet 127.0.49.0/24, the benches' own):
//!
//! 1. CPU per round of the agent's `UdpProber` at k = 10 neighbours × 10 packets, against the
//!    floor: a bare std UDP client doing the same 100 exchanges in the same pattern (each of
//!    the 10 steps sends one datagram to every neighbour, then reads their replies). Both are
//!    timed on their own thread (`/proc/thread-self/schedstat`, ns), so the echo servers'
//!    CPU (another thread) counts for neither.
//! 2. The RTT the prober reports against the bare client's, median over ≥ 1,000 each
//!    (target: ≤ 20 µs apart).
//!
//! Run: `cargo bench -p kubenurse-agent --bench udp_probe` (`BENCH_ROUNDS`, default 40).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubenurse_agent::config::DEFAULT_BUCKETS;
use kubenurse_agent::metrics::Metrics;
use kubenurse_agent::ring::Neighbour;
use kubenurse_agent::udp::wire::{Datagram, Direction, LEN};
use kubenurse_agent::udp::{echo, RoundTiming, UdpProber};
use kubenurse_testkit::measure::median;

const NEIGHBOURS: u8 = 10;
const PACKETS: u32 = 10;
const PORT: u16 = 18_491;
/// The round's send window and reply wait: short, so the bench is quick; CPU per round does
/// not depend on them (the same number of datagrams and wake-ups).
const TIMING: RoundTiming =
    RoundTiming { packets: PACKETS, window: Duration::from_millis(100), linger: Duration::from_millis(20) };

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 49, last))
}

/// CPU time this thread has used, ns (the first field of schedstat).
fn thread_cpu_ns() -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    Ok(s.split_whitespace().next().unwrap_or("0").parse()?)
}

fn neighbours() -> Vec<Neighbour> {
    (0..NEIGHBOURS)
        .map(|i| Neighbour {
            pod_name: format!("kubenurse-{i}"),
            pod_ip: ip(11 + i).to_string(),
            host_ip: ip(11 + i).to_string(),
            node_name: format!("node-{i:02}"),
            node_hash: u64::from(i),
        })
        .collect()
}

/// Echo servers of every neighbour on a runtime of their own thread, until `stop` is sent.
fn start_echoes() -> anyhow::Result<(std::thread::JoinHandle<()>, tokio::sync::watch::Sender<bool>)> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let metrics = Arc::new(Metrics::new(DEFAULT_BUCKETS)?);
    let sockets = (0..NEIGHBOURS)
        .map(|i| StdUdpSocket::bind(SocketAddr::new(ip(11 + i), PORT)))
        .collect::<Result<Vec<_>, _>>()?;
    let handle = std::thread::spawn(move || {
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for s in sockets {
                s.set_nonblocking(true).expect("nonblocking");
                let s = tokio::net::UdpSocket::from_std(s).expect("tokio socket");
                tasks.push(tokio::spawn(echo::serve(s, metrics.clone(), stopped.clone())));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    });
    Ok((handle, stop))
}

/// The prober's rounds: CPU per round (ms) and every RTT it reported (µs).
fn prober_rounds(rounds: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>, u32)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let socket = tokio::net::UdpSocket::bind(SocketAddr::new(ip(1), 0)).await?;
        let prober = UdpProber::new(socket, PORT, TIMING, Arc::new(Metrics::new(DEFAULT_BUCKETS)?));
        let neighbours = neighbours();
        let (mut cpu, mut rtts, mut lost) = (Vec::new(), Vec::new(), 0);
        for round in 0..rounds + 3 {
            let before = thread_cpu_ns()?;
            let reports = prober.run_round(&neighbours).await;
            let used = thread_cpu_ns()? - before;
            if round < 3 {
                continue; // warm-up
            }
            cpu.push(used as f64 / 1e6);
            for r in reports {
                lost += r.lost();
                rtts.extend(r.rtts.iter().map(|d| d.as_secs_f64() * 1e6));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((cpu, rtts, lost))
    })
}

/// The bare floor: the same exchanges from a blocking std socket.
fn bare_rounds(rounds: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>, u32)> {
    let socket = StdUdpSocket::bind(SocketAddr::new(ip(2), 0))?;
    socket.set_read_timeout(Some(TIMING.linger))?;
    let peers: Vec<SocketAddr> = (0..NEIGHBOURS).map(|i| SocketAddr::new(ip(11 + i), PORT)).collect();
    let spacing = TIMING.window / PACKETS;
    let (mut cpu, mut rtts, mut lost) = (Vec::new(), Vec::new(), 0);
    let mut buf = [0u8; LEN + 1];
    for round in 0..rounds + 3 {
        let before = thread_cpu_ns()?;
        let start = Instant::now();
        for seq in 0..PACKETS {
            if let Some(wait) = (start + spacing * seq).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let mut sent_at = Vec::with_capacity(peers.len());
            for (i, peer) in peers.iter().enumerate() {
                let d = Datagram { direction: Direction::Request, nonce: i as u64, seq, sent_micros: 0 };
                sent_at.push(Instant::now());
                socket.send_to(&d.encode(), peer)?;
            }
            let mut got = vec![false; peers.len()];
            while got.iter().any(|g| !g) {
                match socket.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        let now = Instant::now();
                        if let Ok(d) = Datagram::decode(&buf[..n]) {
                            let i = d.nonce as usize;
                            if d.seq == seq && i < got.len() && !got[i] {
                                got[i] = true;
                                if round >= 3 {
                                    rtts.push((now - sent_at[i]).as_secs_f64() * 1e6);
                                }
                            }
                        }
                    }
                    Err(_) => break,
                }
            }
            if round >= 3 {
                lost += got.iter().filter(|g| !**g).count() as u32;
            }
        }
        let used = thread_cpu_ns()? - before;
        if round >= 3 {
            cpu.push(used as f64 / 1e6);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((cpu, rtts, lost))
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let (echoes, stop) = start_echoes()?;
    // Alternate the two so drift on a noisy machine hits both alike.
    let (mut p_cpu, mut p_rtt, mut p_lost) = (Vec::new(), Vec::new(), 0);
    let (mut b_cpu, mut b_rtt, mut b_lost) = (Vec::new(), Vec::new(), 0);
    for _ in 0..4 {
        let (c, r, l) = prober_rounds(rounds / 4)?;
        p_cpu.extend(c);
        p_rtt.extend(r);
        p_lost += l;
        let (c, r, l) = bare_rounds(rounds / 4)?;
        b_cpu.extend(c);
        b_rtt.extend(r);
        b_lost += l;
    }
    let _ = stop.send(true);
    let _ = echoes.join();
    let (pc, bc) = (median(p_cpu.clone()), median(b_cpu.clone()));
    println!("udp probe, k = {NEIGHBOURS} neighbours x {PACKETS} packets, {} rounds each", p_cpu.len());
    println!("  CPU per round: prober median {pc:.3} ms, bare std client {bc:.3} ms, ratio {:.2}", pc / bc);
    let (pr, br) = (median(p_rtt.clone()), median(b_rtt.clone()));
    println!(
        "  RTT median: prober {pr:.1} us over {} replies, bare {br:.1} us over {}, apart {:.1} us (target <= 20)",
        p_rtt.len(),
        b_rtt.len(),
        (pr - br).abs()
    );
    println!("  lost: prober {p_lost}, bare {b_lost}");
    anyhow::ensure!(p_rtt.len() >= 1000 && b_rtt.len() >= 1000, "fewer than 1,000 RTTs: raise BENCH_ROUNDS");
    Ok(())
}
