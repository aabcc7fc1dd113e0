//! UDP echo probes, which see loss that TCP hides in retransmits: every agent answers echo
//! requests ([`echo`]) and, each round, sends every path neighbour `KUBENURSE_UDP_PACKETS`
//! sequenced datagrams spread over the first half of the round ([`UdpProber`]); replies are
//! matched by source, per-round random nonce and sequence ([`book`]).

pub mod book;
pub mod echo;
pub mod wire;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubenurse_common::backoff::random_u64;
use kubenurse_proto::CheckKind;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::ring::Neighbour;
use book::{LinkReport, RoundBook};

/// Share of the round interval over which a round's packets are spread.
pub const SEND_SHARE: f64 = 0.5;
/// How long after its last packet a round waits for replies at most (a quarter of the
/// interval when that is shorter); later replies count as lost.
pub const MAX_LINGER: Duration = Duration::from_secs(1);

/// The `/alive` key of a neighbour's UDP result, beside its path check's.
pub fn alive_key(kind: &CheckKind) -> String {
    format!("{}_udp", kind.label())
}

/// Binds a UDP socket to `ip` (all addresses, dual-stack when the host has IPv6, when `None`).
pub async fn bind(ip: Option<IpAddr>, port: u16) -> std::io::Result<UdpSocket> {
    match ip {
        Some(ip) => UdpSocket::bind(SocketAddr::new(ip, port)).await,
        None => match UdpSocket::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)).await {
            Ok(s) => Ok(s),
            Err(_) => UdpSocket::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)).await,
        },
    }
}

/// How one round is timed.
#[derive(Debug, Clone, Copy)]
pub struct RoundTiming {
    /// Packets per neighbour.
    pub packets: u32,
    /// Time over which they are spread.
    pub window: Duration,
    /// Wait for replies after the last packet.
    pub linger: Duration,
}

impl RoundTiming {
    /// The timing for rounds every `interval`.
    pub fn for_interval(packets: u32, interval: Duration) -> Self {
        Self { packets, window: interval.mul_f64(SEND_SHARE), linger: (interval / 4).min(MAX_LINGER) }
    }
}

/// Sends the probes of each round from one socket (rounds never overlap).
pub struct UdpProber {
    socket: UdpSocket,
    port: u16,
    timing: RoundTiming,
    epoch: Instant,
    previous: Mutex<HashSet<u64>>,
    metrics: Arc<Metrics>,
}

impl UdpProber {
    /// A prober sending from `socket` to neighbours' `port`.
    pub fn new(socket: UdpSocket, port: u16, timing: RoundTiming, metrics: Arc<Metrics>) -> Self {
        Self { socket, port, timing, epoch: Instant::now(), previous: Mutex::default(), metrics }
    }

    fn target(&self, n: &Neighbour) -> Option<SocketAddr> {
        let ip: IpAddr = match n.pod_ip.parse() {
            Ok(ip) => ip,
            Err(_) => {
                warn!(pod = %n.pod_name, ip = %n.pod_ip, "neighbour has an unusable pod IP: no UDP probe");
                return None;
            }
        };
        // A dual-stack socket reaches IPv4 neighbours at their mapped address.
        let ip = match (self.socket.local_addr().map(|a| a.ip()), ip) {
            (Ok(IpAddr::V6(_)), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (_, ip) => ip,
        };
        Some(SocketAddr::new(ip, self.port))
    }

    /// Probes `neighbours` for one round and records the result in the metrics.
    pub async fn run_round(&self, neighbours: &[Neighbour]) -> Vec<LinkReport> {
        let targets: Vec<(String, SocketAddr)> =
            neighbours.iter().filter_map(|n| Some((n.node_name.clone(), self.target(n)?))).collect();
        let previous = std::mem::take(&mut *self.previous.lock().unwrap_or_else(|p| p.into_inner()));
        let mut book = RoundBook::new(targets, random_u64, previous, self.epoch);
        let mut buf = [0u8; wire::LEN + 1];
        // Replies that came between rounds are the previous round's (late) or strays.
        while let Ok((n, from)) = self.socket.try_recv_from(&mut buf) {
            self.note(book.reply(from, &buf[..n], Instant::now()));
        }
        let RoundTiming { packets, window, linger } = self.timing;
        let spacing = window / packets.max(1);
        let start = tokio::time::Instant::now();
        let mut sent = 0u32;
        let mut send_errors = 0u32;
        while !book.is_empty() {
            let deadline =
                if sent < packets { start + spacing * sent } else { start + spacing * (packets - 1) + linger };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    if sent == packets {
                        break;
                    }
                    for link in 0..book.len() {
                        let datagram = book.next_request(link, Instant::now());
                        if let Err(e) = self.socket.send_to(&datagram, book.addr(link)).await {
                            send_errors += 1;
                            debug!(to = %book.addr(link), error = %e, "udp probe not sent");
                        }
                    }
                    sent += 1;
                }
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.note(book.reply(from, &buf[..n], Instant::now())),
                    Err(e) => debug!(error = %e, "udp probe receive error"),
                },
            }
        }
        if send_errors > 0 {
            warn!(send_errors, "udp probes could not be sent (they count as lost)");
        }
        let (reports, nonces) = book.finish();
        *self.previous.lock().unwrap_or_else(|p| p.into_inner()) = nonces;
        for r in &reports {
            if let Ok(kind) = CheckKind::path(&r.node) {
                self.metrics.record_udp(&kind, r);
            }
        }
        reports
    }

    fn note(&self, matched: Result<(), book::Ignored>) {
        if let Err(reason) = matched {
            debug!(reason = reason.as_str(), "udp datagram ignored");
            self.metrics.count_ignored(reason);
        }
    }
}
