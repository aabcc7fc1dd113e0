//! The UDP echo every agent answers on `KUBENURSE_UDP_PORT`: requests only, a reply exactly as
//! large as its request, and a token bucket per source address, so the port can neither
//! amplify nor be used to reflect a flood at a third party faster than the limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubenurse_common::rate::{Rate, TokenBucket};
use kubenurse_common::signal::stopped;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::wire::{Datagram, Direction, LEN};
use crate::metrics::Metrics;

/// Replies per second one source address gets at most (a neighbour sends
/// `KUBENURSE_UDP_PACKETS` ≤ 100 per round: far below).
pub const RATE_PER_SOURCE: f64 = 200.0;
/// Replies one source may get at once before the rate applies.
pub const BURST_PER_SOURCE: f64 = 400.0;
/// Source addresses tracked at most; when full, idle ones are forgotten and, if none is idle,
/// new sources are refused until some are (so a spoofed-source flood costs bounded memory).
pub const MAX_SOURCES: usize = 16_384;

/// What the echo did with a datagram (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoResult {
    /// Answered.
    Answered,
    /// Not a kubenurse echo request: dropped.
    Malformed,
    /// Over its source's rate: dropped.
    RateLimited,
    /// The reply could not be sent.
    SendError,
}

impl EchoResult {
    /// Every result, so each counter exists from the start.
    pub const ALL: [EchoResult; 4] = [Self::Answered, Self::Malformed, Self::RateLimited, Self::SendError];

    /// The `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Malformed => "malformed",
            Self::RateLimited => "rate_limited",
            Self::SendError => "send_error",
        }
    }
}

/// A token bucket per source address, bounded in sources.
#[derive(Debug)]
pub struct SourceLimiter {
    buckets: HashMap<IpAddr, TokenBucket>,
    rate: Rate,
    max_sources: usize,
}

impl Default for SourceLimiter {
    fn default() -> Self {
        Self::new(RATE_PER_SOURCE, BURST_PER_SOURCE, MAX_SOURCES)
    }
}

impl SourceLimiter {
    /// `rate` per second and `burst` at once per source, at most `max_sources` tracked.
    pub fn new(rate: f64, burst: f64, max_sources: usize) -> Self {
        Self { buckets: HashMap::new(), rate: Rate { per_second: rate, burst }, max_sources }
    }

    /// Whether `ip` may have one more reply at `now`.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let rate = self.rate;
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_sources {
            self.buckets.retain(|_, b| b.level(rate, now) < rate.burst);
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        self.buckets.entry(ip).or_insert_with(|| TokenBucket::full(rate, now)).try_take(rate, now)
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }
}

/// The answer to one datagram from `from`, if any (pure: the caller sends it).
pub fn answer(
    limiter: &mut SourceLimiter,
    from: IpAddr,
    datagram: &[u8],
    now: Instant,
) -> Result<[u8; LEN], EchoResult> {
    match Datagram::decode(datagram) {
        Ok(d) if d.direction == Direction::Request => {
            if limiter.allow(from.to_canonical(), now) {
                Ok(d.reply().encode())
            } else {
                Err(EchoResult::RateLimited)
            }
        }
        _ => Err(EchoResult::Malformed),
    }
}

/// Answers echo requests on `socket` until `stop`.
pub async fn serve(socket: UdpSocket, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    let mut limiter = SourceLimiter::default();
    // One byte more than a datagram, so a longer one shows as longer (and is refused).
    let mut buf = [0u8; LEN + 1];
    loop {
        let (n, from) = tokio::select! {
            _ = stopped(&mut stop) => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // An ICMP error of an earlier reply surfacing here: nothing to do but go on.
                    debug!(error = %e, "udp echo receive error");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
        };
        let result = match answer(&mut limiter, from.ip(), &buf[..n], Instant::now()) {
            Ok(reply) => match socket.send_to(&reply, from).await {
                Ok(_) => EchoResult::Answered,
                Err(e) => {
                    warn!(%from, error = %e, "udp echo reply not sent");
                    EchoResult::SendError
                }
            },
            Err(r) => r,
        };
        metrics.count_echo(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn answers_requests_only_never_larger() {
        let mut l = SourceLimiter::default();
        let now = Instant::now();
        let req = Datagram { direction: Direction::Request, nonce: 5, seq: 1, sent_micros: 2 }.encode();
        let reply = answer(&mut l, ip(1), &req, now).expect("answered");
        assert_eq!(reply.len(), req.len());
        assert_eq!(Datagram::decode(&reply).map(|d| (d.direction, d.nonce, d.seq)), Ok((Direction::Reply, 5, 1)));
        // A reply sent to an echo is not answered: two echoes never bounce a datagram.
        assert_eq!(answer(&mut l, ip(1), &reply, now), Err(EchoResult::Malformed));
        assert_eq!(answer(&mut l, ip(1), &[0u8; LEN + 1], now), Err(EchoResult::Malformed));
        assert_eq!(answer(&mut l, ip(1), b"hello", now), Err(EchoResult::Malformed));
    }

    #[test]
    fn limits_each_source_and_refills() {
        let mut l = SourceLimiter::new(10.0, 5.0, 3);
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| l.allow(ip(1), t0)).count(), 5, "the burst");
        assert!(l.allow(ip(2), t0), "another source has its own bucket");
        assert!(!l.allow(ip(1), t0 + Duration::from_millis(50)), "half a token");
        assert!(l.allow(ip(1), t0 + Duration::from_millis(100)), "one token after 1/rate");
        // Full of busy sources: a new one is refused, until one is idle (its bucket full).
        assert!(l.allow(ip(3), t0));
        assert!(!l.allow(ip(4), t0));
        assert_eq!(l.sources(), 3);
        assert!(l.allow(ip(4), t0 + Duration::from_secs(1)), "idle sources forgotten");
        assert!(l.sources() <= 3);
    }
}
