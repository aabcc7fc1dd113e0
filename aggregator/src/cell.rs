//! One matrix cell (a source node checking a destination, or one node's own check): a sliding
//! window of time slots with latency sketches, error counts, SYN retransmits and UDP loss, the
//! last result, and the hysteresis that decides whether the cell is failing, slow or lossy now.

use crate::loss::LossTest;
use crate::sketch::Bucket;
use crate::window::{Window, WindowStats};

/// Consecutive-rounds hysteresis: turns bad after `k` bad rounds in a row, good after `k` good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    run: u32,
    run_is_bad: bool,
    /// The current verdict.
    pub bad: bool,
}

impl Streak {
    /// Feeds one round's verdict.
    pub fn observe(&mut self, bad: bool, k: u32) {
        if bad == self.run_is_bad {
            self.run = self.run.saturating_add(1);
        } else {
            self.run_is_bad = bad;
            self.run = 1;
        }
        if self.run >= k.max(1) {
            self.bad = bad;
        }
    }

    /// Good rounds in a row, up to now (0 after a bad one).
    pub fn good_run(&self) -> u32 {
        if self.run_is_bad {
            0
        } else {
            self.run
        }
    }
}

/// One round of UDP packets to a neighbour, as the cell takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRound<'a> {
    /// Packets sent.
    pub sent: u32,
    /// Packets never answered.
    pub lost: u32,
    /// RTT of each answered packet, µs.
    pub rtt_micros: &'a [u64],
}

/// The UDP verdict's state, boxed: cells of agents without UDP probes pay one pointer.
#[derive(Debug, Clone, Default)]
pub struct UdpVerdict {
    counted: Option<(u64, i64)>,
    /// The hysteresis the verdict was fed with.
    k: u32,
    /// The sequential loss test.
    pub loss: LossTest,
}

/// Whether a result of sender round `round` arriving at `now` is a new round after the one
/// `counted` (another round number, or 0, and at least `min_gap` µs later); records it if so.
fn fresh_round(counted: &mut Option<(u64, i64)>, round: u64, now: i64, min_gap: i64) -> bool {
    let fresh = match *counted {
        None => true,
        Some((last, at)) => (round == 0 || round != last) && now - at >= min_gap,
    };
    if fresh {
        *counted = Some((round, now));
    }
    fresh
}

/// Window statistics of a cell (compact: snapshots keep one per cell).
#[derive(Debug, Clone, PartialEq)]
pub struct CellStats {
    /// Results in the window.
    pub count: u64,
    /// Failed results in the window.
    pub errors: u64,
    /// Latency quantiles of successful results.
    pub p50: Option<Bucket>,
    /// 90th percentile.
    pub p90: Option<Bucket>,
    /// 99th percentile.
    pub p99: Option<Bucket>,
    /// SYN retransmissions inferred from the window's connects.
    pub syn_retransmits: u64,
    /// UDP packets sent and lost in the window (`None` without UDP data).
    pub udp: Option<UdpStats>,
}

/// UDP statistics of a cell's window.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpStats {
    /// Packets sent.
    pub sent: u64,
    /// Packets lost.
    pub lost: u64,
    /// RTT median of answered packets.
    pub p50: Option<Bucket>,
    /// RTT 99th percentile.
    pub p99: Option<Bucket>,
}

impl UdpStats {
    /// lost / sent (0 when nothing was sent).
    pub fn loss_ratio(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost as f64 / self.sent as f64
        }
    }
}

impl CellStats {
    /// errors / count (0 when empty).
    pub fn error_ratio(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.errors as f64 / self.count as f64
        }
    }
}

/// One cell.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    window: Window,
    /// Latency of the last result, microseconds.
    pub last_micros: u64,
    /// Whether the last result failed.
    pub last_failed: bool,
    /// Whether that failure lay in the source agent's own node (`local_…` error kind).
    pub last_local: bool,
    /// Error text of the last failure (kept after recovery, for operators).
    pub last_error: Option<String>,
    /// When the last result arrived (aggregator clock, unix µs).
    pub last_seen: i64,
    /// Failing per the hysteresis.
    pub health: Streak,
    /// Slow per the hysteresis.
    pub latency: Streak,
    /// The last sender round the hysteresis counted, and when (unix µs).
    counted: Option<(u64, i64)>,
    /// The loss verdict, once UDP results arrive.
    pub udp: Option<Box<UdpVerdict>>,
}

impl Cell {
    /// Whether a result of sender round `round` arriving at `now` is a new round for the
    /// hysteresis: another round number than the last counted one (a restarted agent counts from
    /// 1 again; 0, from senders without round numbers, is always another) and at least `min_gap`
    /// µs after it. So the verdict moves by rounds, however fast a sender sends; the window
    /// statistics take every result.
    pub fn new_round(&mut self, round: u64, now: i64, min_gap: i64) -> bool {
        fresh_round(&mut self.counted, round, now, min_gap)
    }

    /// Whether the cell is lossy per the hysteresis, and its HTTP checks have passed for more
    /// rounds in a row than the hysteresis asks: a round's UDP packets go out after its HTTP
    /// checks, so when a link breaks (or heals) in the middle of a round its UDP verdict runs a
    /// round ahead of (or behind) the HTTP one, and the cell would look lossy for a round while
    /// it is really failing. Loss is what HTTP does not see.
    pub fn lossy(&self) -> bool {
        self.udp.as_ref().is_some_and(|u| u.loss.lossy && self.health.good_run() > u.k.max(1))
    }

    /// Records a round of UDP packets at `at` (unix µs) into its slot and, when it is a new
    /// round (as [`Cell::new_round`] decides), feeds the loss test ([`LossTest`]: lossy on
    /// enough evidence of a loss of `threshold`, with `k` setting how much is enough).
    #[allow(clippy::too_many_arguments)]
    pub fn record_udp(
        &mut self,
        at: i64,
        slot_micros: i64,
        retention: usize,
        udp: UdpRound<'_>,
        sender_round: u64,
        min_gap: i64,
        threshold: f64,
        k: u32,
    ) {
        self.window.record_udp(at, slot_micros, retention, udp.sent, udp.lost, udp.rtt_micros);
        let v = self.udp.get_or_insert_with(Box::default);
        v.k = k;
        if fresh_round(&mut v.counted, sender_round, at, min_gap) {
            v.loss.observe(udp.sent, udp.lost, threshold, k);
        }
    }

    /// Records a result at `at` (unix µs) into slot `at / slot_micros`, dropping slots older
    /// than `retention` slots.
    pub fn record(&mut self, at: i64, slot_micros: i64, retention: usize, micros: u64, failed: bool) {
        self.record_tcp(at, slot_micros, retention, micros, failed, 0);
    }

    /// [`Cell::record`] with the SYN retransmissions its connect needed.
    pub fn record_tcp(&mut self, at: i64, slot_micros: i64, retention: usize, micros: u64, failed: bool, syn: u32) {
        self.window.record_tcp(at, slot_micros, retention, micros, failed, syn);
    }

    /// Statistics over the slots that overlap the last `window_slots` slots before `now`.
    pub fn stats(&self, now: i64, slot_micros: i64, window_slots: usize) -> CellStats {
        let current = now.div_euclid(slot_micros.max(1));
        let WindowStats { counts, latency: [p50, p90, p99], rtt: [udp_p50, udp_p99] } =
            self.window.stats(current - window_slots as i64 + 1);
        let udp = counts.udp.map(|(sent, lost)| UdpStats { sent, lost, p50: udp_p50, p99: udp_p99 });
        CellStats {
            count: counts.count,
            errors: counts.errors,
            p50,
            p90,
            p99,
            syn_retransmits: counts.syn_retransmits,
            udp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_counts_rounds_not_results() {
        let mut c = Cell::default();
        assert!(c.new_round(1, 0, 500));
        assert!(!c.new_round(1, 1_000, 500), "same round again");
        assert!(!c.new_round(2, 100, 500), "next round too soon");
        assert!(c.new_round(2, 600, 500));
        assert!(!c.new_round(2, 5_000, 500), "the same round later");
        assert!(c.new_round(1, 5_000, 500), "a restarted sender counts from 1 again");
        assert!(c.new_round(0, 6_000, 500), "no round numbers: time alone");
        assert!(!c.new_round(0, 6_100, 500));
    }

    #[test]
    fn streak_needs_k_in_a_row() {
        let mut s = Streak::default();
        s.observe(true, 2);
        assert!(!s.bad, "one lost packet pages nobody");
        s.observe(false, 2);
        s.observe(true, 2);
        assert!(!s.bad);
        s.observe(true, 2);
        assert!(s.bad);
        s.observe(false, 2);
        assert!(s.bad, "recovery needs k good rounds too");
        s.observe(false, 2);
        assert!(!s.bad);
    }

    #[test]
    fn the_loss_test_takes_each_sender_round_once_and_the_window_every_result() {
        let (slot, k, gap) = (300_000_000, 2, 1_000_000);
        let mut c = Cell::default();
        assert!(c.stats(0, slot, 10).udp.is_none(), "no UDP data: null, not 0");
        let rtts = [300u64; 10];
        let round = |c: &mut Cell, n: u64, lost: u32| {
            let received = 10 - lost as usize;
            let udp = UdpRound { sent: 10, lost, rtt_micros: &rtts[..received] };
            c.record_udp(n as i64 * 5_000_000, slot, 10, udp, n, gap, 0.02, k);
        };
        for _ in 0..=k {
            c.health.observe(false, k); // HTTP checks passing all along
        }
        round(&mut c, 1, 0);
        round(&mut c, 2, 2);
        assert!(!c.lossy(), "2 of 10 lost: evidence, not yet enough");
        round(&mut c, 2, 2);
        assert!(!c.lossy(), "the same round again counts once");
        round(&mut c, 3, 2);
        assert!(c.lossy(), "4 of 20 lost");
        let mut n = 3;
        while c.lossy() && n < 40 {
            n += 1;
            round(&mut c, n, 0);
        }
        assert!((7..=11).contains(&n), "cleared after {} clean rounds", n - 3);
        let stats = c.stats(n as i64 * 5_000_000, slot, 10).udp.expect("udp");
        assert_eq!((stats.sent, stats.lost), (10 * (n + 1), 6), "every result in the window, the repeat too");
        assert!((stats.loss_ratio() - 6.0 / (10.0 * (n + 1) as f64)).abs() < 1e-9);
        let p50 = stats.p50.expect("rtt").micros();
        assert!((270.0..=330.0).contains(&p50), "{p50}");
    }

    #[test]
    fn a_link_breaking_mid_round_is_failing_not_lossy() {
        let (slot, k, gap) = (30_000_000, 2, 1_000_000);
        let mut c = Cell::default();
        let lost_all = UdpRound { sent: 10, lost: 10, rtt_micros: &[] };
        for n in 1..=3 {
            c.health.observe(false, k);
            c.record_udp(
                n * 5_000_000,
                slot,
                10,
                UdpRound { sent: 10, lost: 0, rtt_micros: &[300; 10] },
                n as u64,
                gap,
                0.02,
                k,
            );
        }
        // The link breaks after round 4's HTTP checks passed, during its UDP packets: UDP is a
        // round ahead. Round 5: HTTP fails (once: not failing yet), UDP already lossy.
        c.health.observe(false, k);
        c.record_udp(20_000_000, slot, 10, UdpRound { sent: 10, lost: 6, rtt_micros: &[300; 4] }, 4, gap, 0.02, k);
        c.health.observe(true, k);
        c.record_udp(25_000_000, slot, 10, lost_all, 5, gap, 0.02, k);
        assert!(c.udp.as_ref().is_some_and(|u| u.loss.lossy) && !c.health.bad);
        assert!(!c.lossy(), "a failing HTTP check in the last rounds: errors, not loss");
        // Healed; HTTP passes again while the UDP verdict still holds: lossy only once HTTP has
        // passed more rounds in a row than the hysteresis (and UDP still loses).
        for n in 6..=8 {
            c.health.observe(false, k);
            assert!(!c.lossy() || n > 7, "round {n}");
            c.record_udp(n * 5_000_000, slot, 10, lost_all, n as u64, gap, 0.02, k);
        }
        assert!(c.lossy(), "HTTP passes, UDP loses: loss");
    }

    #[test]
    fn syn_retransmits_sum_over_the_window() {
        let slot = 30_000_000;
        let mut c = Cell::default();
        c.record_tcp(0, slot, 10, 1_200_000, false, 1);
        c.record_tcp(slot, slot, 10, 3_100_000, false, 2);
        c.record(2 * slot, slot, 10, 300, false);
        assert_eq!(c.stats(2 * slot, slot, 10).syn_retransmits, 3);
        assert_eq!(c.stats(2 * slot, slot, 2).syn_retransmits, 2, "the oldest slot left the window");
    }

    #[test]
    fn window_slides() {
        let slot = 30_000_000; // 30 s
        let mut c = Cell::default();
        for i in 0..20i64 {
            c.record(i * 15_000_000, slot, 10, 200 + i as u64, i % 4 == 0);
        }
        let now = 19 * 15_000_000;
        let all = c.stats(now, slot, 10);
        assert_eq!(all.count, 20);
        assert_eq!(all.errors, 5);
        let recent = c.stats(now, slot, 2);
        assert_eq!(recent.count, 4);
        // Ten slots kept, the oldest dropped as new ones arrive.
        for i in 20..40i64 {
            c.record(i * 15_000_000, slot, 10, 300, false);
        }
        assert_eq!(c.stats(39 * 15_000_000, slot, 100).count, 20);
        assert!(c.stats(now, slot, 10).p99.is_some());
    }
}
