//! One round's UDP bookkeeping, without I/O: what was sent to whom, which replies match
//! (by source address, nonce and sequence), and the per-neighbour result. Time is a parameter.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::wire::{Datagram, Direction, LEN};

/// Why a received datagram was not counted as a reply (each a `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// Not a kubenurse echo reply.
    Malformed,
    /// A nonce of no round we know: stray or forged.
    Unknown,
    /// A known nonce from another address than the neighbour's: forged.
    WrongSource,
    /// A reply to the previous round, after it ended.
    Late,
    /// A sequence number never sent: forged.
    Unsent,
}

impl Ignored {
    /// Every reason, so each counter exists from the start.
    pub const ALL: [Ignored; 5] = [Self::Malformed, Self::Unknown, Self::WrongSource, Self::Late, Self::Unsent];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unknown => "unknown_nonce",
            Self::WrongSource => "wrong_source",
            Self::Late => "late",
            Self::Unsent => "unsent_sequence",
        }
    }
}

/// What one neighbour did with this round's packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReport {
    /// The neighbour's node.
    pub node: String,
    /// Packets sent.
    pub sent: u32,
    /// Distinct packets answered.
    pub received: u32,
    /// Extra copies of answered packets.
    pub duplicated: u32,
    /// Replies that came after a reply to a later packet.
    pub reordered: u32,
    /// RTT of each answered packet, in sequence order.
    pub rtts: Vec<Duration>,
}

impl LinkReport {
    /// Packets sent and never answered.
    pub fn lost(&self) -> u32 {
        self.sent - self.received
    }

    /// The `/alive` value: `ok`, or `loss 3/10`.
    pub fn summary(&self) -> String {
        if self.lost() == 0 {
            "ok".to_string()
        } else {
            format!("loss {}/{}", self.lost(), self.sent)
        }
    }
}

struct Link {
    node: String,
    addr: SocketAddr,
    nonce: u64,
    sent_at: Vec<Instant>,
    rtt: Vec<Option<Duration>>,
    highest: Option<u32>,
    duplicated: u32,
    reordered: u32,
}

/// One round of probes to every neighbour.
pub struct RoundBook {
    links: Vec<Link>,
    by_nonce: HashMap<u64, usize>,
    /// The previous round's nonces, to tell a late reply from a forged one.
    previous: HashSet<u64>,
    /// The prober's clock origin, for the datagrams' informational timestamps.
    epoch: Instant,
}

/// An address as it is compared: IPv4-mapped IPv6 (a dual-stack socket) as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl RoundBook {
    /// A round to `targets` (node, echo address); `nonce` draws each neighbour's number (a
    /// repeated one is drawn again, so replies always identify their neighbour).
    pub fn new(
        targets: Vec<(String, SocketAddr)>,
        mut nonce: impl FnMut() -> u64,
        previous: HashSet<u64>,
        epoch: Instant,
    ) -> Self {
        let mut by_nonce = HashMap::with_capacity(targets.len());
        let mut links = Vec::with_capacity(targets.len());
        for (node, addr) in targets {
            let mut n = nonce();
            while by_nonce.contains_key(&n) || previous.contains(&n) {
                n = nonce();
            }
            by_nonce.insert(n, links.len());
            links.push(Link {
                node,
                addr: canonical(addr),
                nonce: n,
                sent_at: Vec::new(),
                rtt: Vec::new(),
                highest: None,
                duplicated: 0,
                reordered: 0,
            });
        }
        Self { links, by_nonce, previous, epoch }
    }

    /// Neighbours, in the order given.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether there is no neighbour.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Where neighbour `link`'s packets go.
    pub fn addr(&self, link: usize) -> SocketAddr {
        self.links[link].addr
    }

    /// The next request to neighbour `link`, recorded as sent at `now`.
    pub fn next_request(&mut self, link: usize, now: Instant) -> [u8; LEN] {
        let l = &mut self.links[link];
        let seq = l.sent_at.len() as u32;
        l.sent_at.push(now);
        l.rtt.push(None);
        let sent_micros = now.saturating_duration_since(self.epoch).as_micros() as u64;
        Datagram { direction: Direction::Request, nonce: l.nonce, seq, sent_micros }.encode()
    }

    /// Matches a datagram received from `from` at `now`.
    pub fn reply(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) -> Result<(), Ignored> {
        let d = Datagram::decode(datagram).map_err(|_| Ignored::Malformed)?;
        if d.direction != Direction::Reply {
            return Err(Ignored::Malformed);
        }
        let Some(&i) = self.by_nonce.get(&d.nonce) else {
            return Err(if self.previous.contains(&d.nonce) { Ignored::Late } else { Ignored::Unknown });
        };
        let l = &mut self.links[i];
        if canonical(from) != l.addr {
            return Err(Ignored::WrongSource);
        }
        let Some(&sent_at) = l.sent_at.get(d.seq as usize) else { return Err(Ignored::Unsent) };
        let slot = &mut l.rtt[d.seq as usize];
        if slot.is_some() {
            l.duplicated += 1;
            return Ok(());
        }
        *slot = Some(now.saturating_duration_since(sent_at));
        match l.highest {
            Some(h) if d.seq < h => l.reordered += 1,
            _ => l.highest = Some(d.seq),
        }
        Ok(())
    }

    /// The round's result per neighbour, and its nonces (the next round's `previous`).
    pub fn finish(self) -> (Vec<LinkReport>, HashSet<u64>) {
        let nonces = self.by_nonce.into_keys().collect();
        let reports = self
            .links
            .into_iter()
            .map(|l| {
                let rtts: Vec<Duration> = l.rtt.iter().flatten().copied().collect();
                LinkReport {
                    node: l.node,
                    sent: l.sent_at.len() as u32,
                    received: rtts.len() as u32,
                    duplicated: l.duplicated,
                    reordered: l.reordered,
                    rtts,
                }
            })
            .collect();
        (reports, nonces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 8081))
    }

    /// A book to a and b with nonces 1, 2, … and every packet sent `n` times, 1 ms apart.
    fn book(n: u32, previous: HashSet<u64>) -> (RoundBook, Instant, Vec<Vec<[u8; LEN]>>) {
        let t0 = Instant::now();
        let mut next = 0;
        let mut b = RoundBook::new(
            vec![("a".into(), addr(1)), ("b".into(), addr(2))],
            || {
                next += 1;
                next
            },
            previous,
            t0,
        );
        let mut sent = vec![Vec::new(), Vec::new()];
        for seq in 0..n {
            for (link, s) in sent.iter_mut().enumerate() {
                s.push(b.next_request(link, t0 + Duration::from_millis(u64::from(seq))));
            }
        }
        (b, t0, sent)
    }

    fn echo(request: &[u8; LEN]) -> [u8; LEN] {
        Datagram::decode(request).map(|d| d.reply().encode()).expect("ours")
    }

    #[test]
    fn counts_loss_and_rtt_in_sequence_order() {
        let (mut b, t0, sent) = book(10, HashSet::new());
        for seq in [0, 1, 2, 4, 5, 6, 8] {
            let at = t0 + Duration::from_millis(seq + 3);
            assert_eq!(b.reply(addr(1), &echo(&sent[0][seq as usize]), at), Ok(()));
        }
        let (r, nonces) = b.finish();
        assert_eq!((r[0].sent, r[0].received, r[0].lost()), (10, 7, 3));
        assert_eq!(r[0].summary(), "loss 3/10");
        assert_eq!(r[0].rtts, vec![Duration::from_millis(3); 7]);
        assert_eq!((r[1].received, r[1].lost(), r[1].summary().as_str()), (0, 10, "loss 10/10"));
        assert_eq!(nonces, HashSet::from([1, 2]));
    }

    #[test]
    fn duplicates_count_once_and_reorders_are_seen() {
        let (mut b, t0, sent) = book(4, HashSet::new());
        let at = t0 + Duration::from_millis(10);
        for seq in [0, 2, 1, 2, 2, 3] {
            assert_eq!(b.reply(addr(2), &echo(&sent[1][seq]), at), Ok(()));
        }
        let (r, _) = b.finish();
        assert_eq!((r[1].sent, r[1].received, r[1].duplicated, r[1].reordered), (4, 4, 2, 1));
        assert_eq!(r[1].summary(), "ok");
        assert_eq!(r[1].rtts, [10, 9, 8, 7].map(Duration::from_millis).to_vec(), "in sequence order");
    }

    #[test]
    fn stray_forged_and_late_replies_change_nothing() {
        let (first, _, old) = book(2, HashSet::new());
        let (_, previous) = first.finish();
        // The next round draws nonces again: 1 and 2 are taken by the previous round.
        let (mut b, t0, sent) = book(2, previous);
        let at = t0 + Duration::from_millis(5);
        assert_eq!(b.reply(addr(1), &echo(&old[0][0]), at), Err(Ignored::Late));
        assert_eq!(b.reply(addr(1), &sent[0][0], at), Err(Ignored::Malformed), "a request is no reply");
        assert_eq!(b.reply(addr(1), &[0u8; 7], at), Err(Ignored::Malformed));
        let forged = Datagram { direction: Direction::Reply, nonce: 999, seq: 0, sent_micros: 0 }.encode();
        assert_eq!(b.reply(addr(1), &forged, at), Err(Ignored::Unknown));
        assert_eq!(b.reply(addr(9), &echo(&sent[0][0]), at), Err(Ignored::WrongSource));
        let mut ahead = Datagram::decode(&echo(&sent[0][1])).expect("ours");
        ahead.seq = 5;
        assert_eq!(b.reply(addr(1), &ahead.encode(), at), Err(Ignored::Unsent));
        let mapped = SocketAddr::new(std::net::Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().into(), 8081);
        assert_eq!(b.reply(mapped, &echo(&sent[0][1]), at), Ok(()), "dual-stack source is the same address");
        let (r, nonces) = b.finish();
        assert_eq!((r[0].received, r[0].duplicated, r[0].reordered), (1, 0, 0));
        assert!(nonces.is_disjoint(&HashSet::from([1, 2])));
    }
}
