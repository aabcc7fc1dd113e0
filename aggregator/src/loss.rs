//! A cell's loss verdict: a sequential test (CUSUM) on its UDP packets, pure. One round of
//! 10 packets says little about a 2 % loss (18 % of such rounds lose anything), so a verdict
//! per round either names small losses never or names noise; summing the evidence of every
//! packet names a large loss in a round or two and a small one after enough packets, and a
//! healthy link (no loss, or under a quarter of the threshold) practically never.
//!
//! - While clear, each packet adds the log-likelihood ratio of "the link loses `threshold`"
//!   against "it loses a quarter of that": ln 4 for a lost packet, ln((1 − t) / (1 − t/4)) < 0
//!   for an answered one; the sum never goes below 0. At [`EVIDENCE_PER_ROUND`] × hysteresis
//!   nats the cell turns lossy.
//! - While lossy, the test runs the other way: "it loses a quarter of the threshold" against
//!   the loss seen since the evidence began (discounted by [`ESTIMATE_DISCOUNT`], at least the
//!   threshold). After a 20 % loss a few clean rounds clear it; after a 2 % loss it takes as many
//!   packets as naming it did, and a link that keeps losing 2 % stays lossy.

/// Nats of evidence per round of `--hysteresis` to turn lossy or clear (2 rounds → 4 nats: a
/// likelihood ratio of e⁴ ≈ 55).
pub const EVIDENCE_PER_ROUND: f64 = 2.0;
/// The loss seen while lossy is divided by this before the clearing test compares against it,
/// so one unlucky burst does not make the link look worse than it is, and clear too early.
pub const ESTIMATE_DISCOUNT: f64 = 1.5;

/// The state of one cell's loss test.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossTest {
    /// Evidence (nats) for the current question: lossy? while clear; healthy? while lossy.
    evidence: f64,
    /// Packets sent and lost since the evidence for loss began to build (and while lossy).
    sent: u64,
    lost: u64,
    /// The verdict.
    pub lossy: bool,
}

impl LossTest {
    /// Takes one round's packets to a neighbour: `sent`, of which `lost` were never answered.
    pub fn observe(&mut self, sent: u32, lost: u32, threshold: f64, hysteresis: u32) {
        if sent == 0 {
            return;
        }
        let lost = lost.min(sent);
        let (lost_f, answered) = (f64::from(lost), f64::from(sent - lost));
        let high = threshold.clamp(0.001, 0.99);
        let low = high / 4.0;
        let needed = EVIDENCE_PER_ROUND * f64::from(hysteresis.max(1));
        if !self.lossy {
            if self.evidence == 0.0 {
                (self.sent, self.lost) = (0, 0);
            }
            let llr = lost_f * (high / low).ln() + answered * ((1.0 - high) / (1.0 - low)).ln();
            self.evidence = (self.evidence + llr).max(0.0);
            if self.evidence > 0.0 {
                self.sent += u64::from(sent);
                self.lost += u64::from(lost);
            }
            if self.evidence >= needed {
                (self.lossy, self.evidence) = (true, 0.0);
            }
        } else {
            let seen = self.lost as f64 / self.sent.max(1) as f64;
            let estimate = (seen / ESTIMATE_DISCOUNT).clamp(high, 0.99);
            let llr = answered * ((1.0 - low) / (1.0 - estimate)).ln() + lost_f * (low / estimate).ln();
            self.evidence = (self.evidence + llr).max(0.0);
            self.sent += u64::from(sent);
            self.lost += u64::from(lost);
            if self.evidence >= needed {
                *self = Self::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stream of losses at `p` (xorshift; no randomness in unit tests).
    struct Link {
        state: u64,
        p: f64,
    }

    impl Link {
        fn new(p: f64, seed: u64) -> Self {
            Self { state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, p }
        }

        fn round(&mut self, packets: u32) -> u32 {
            (0..packets)
                .filter(|_| {
                    self.state ^= self.state << 13;
                    self.state ^= self.state >> 7;
                    self.state ^= self.state << 17;
                    ((self.state >> 11) as f64 / (1u64 << 53) as f64) < self.p
                })
                .count() as u32
        }
    }

    /// Over `seeds` links at loss `p`: the share of rounds `from..to` that were lossy.
    fn lossy_share(p: f64, packets: u32, from: usize, to: usize, seeds: u64) -> f64 {
        let mut lossy = 0;
        for seed in 0..seeds {
            let (mut t, mut link) = (LossTest::default(), Link::new(p, seed + 1));
            for round in 0..to {
                t.observe(packets, link.round(packets), 0.02, 2);
                lossy += usize::from(round >= from && t.lossy);
            }
        }
        lossy as f64 / ((to - from) as u64 * seeds) as f64
    }

    #[test]
    fn no_loss_is_never_lossy_and_one_lost_packet_is_not_enough() {
        let mut t = LossTest::default();
        for _ in 0..1000 {
            t.observe(10, 0, 0.02, 2);
        }
        assert!(!t.lossy);
        t.observe(10, 1, 0.02, 2);
        assert!(!t.lossy, "one packet of ten");
        t.observe(10, 1, 0.02, 2);
        t.observe(10, 1, 0.02, 2);
        assert!(!t.lossy, "three in 30: 3 × (ln 4 − 9 × 0.015) ≈ 3.7 nats < 4");
        t.observe(10, 1, 0.02, 2);
        assert!(t.lossy, "four lost in 40 packets: not a link losing 0.5 %");
    }

    #[test]
    fn a_large_loss_is_named_in_a_round_and_clears_in_a_few_after_the_heal() {
        let mut t = LossTest::default();
        t.observe(10, 3, 0.02, 2);
        assert!(t.lossy, "30 % of a round: 3 ln 4 − 7 × 0.015 > 4 nats");
        for _ in 0..20 {
            t.observe(10, 2, 0.02, 2);
        }
        assert!(t.lossy, "a link that keeps losing 20 % stays lossy");
        t.observe(10, 0, 0.02, 2);
        t.observe(10, 0, 0.02, 2);
        assert!(t.lossy, "20 clean packets are not yet enough");
        t.observe(10, 0, 0.02, 2);
        t.observe(10, 0, 0.02, 2);
        assert!(!t.lossy, "40 clean packets after losing 20 %: healed");
        assert_eq!(t, LossTest::default(), "cleared: the next loss starts from nothing");
    }

    #[test]
    fn a_two_percent_loss_is_named_and_stays_named_while_it_lasts() {
        // 50 links at 2 %, 10 packets a round: named in most rounds after the first 100.
        let share = lossy_share(0.02, 10, 100, 300, 50);
        assert!(share > 0.9, "lossy in {share} of the rounds");
        // 5 %: nearly always.
        assert!(lossy_share(0.05, 10, 50, 300, 50) > 0.98);
    }

    #[test]
    fn a_healthy_link_is_rarely_lossy() {
        assert_eq!(lossy_share(0.0, 10, 0, 300, 20), 0.0);
        // A quarter of the threshold is "healthy" by the test's own terms.
        let share = lossy_share(0.005, 10, 0, 300, 50);
        assert!(share < 0.1, "lossy in {share} of the rounds");
    }

    #[test]
    fn a_small_loss_clears_only_after_as_much_evidence_and_bad_input_is_harmless() {
        let mut t = LossTest::default();
        let mut link = Link::new(0.02, 7);
        while !t.lossy {
            t.observe(10, link.round(10), 0.02, 2);
        }
        let mut clean = 0;
        while t.lossy {
            t.observe(10, 0, 0.02, 2);
            clean += 1;
        }
        assert!((5..=40).contains(&clean), "cleared after {clean} clean rounds");
        let mut t = LossTest::default();
        t.observe(0, 0, 0.02, 2);
        t.observe(10, 99, 0.0, 0);
        t.observe(10, 5, 1.0, u32::MAX);
        assert!(t.evidence.is_finite());
    }
}
