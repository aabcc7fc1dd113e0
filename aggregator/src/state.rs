//! The aggregator's whole state, pure (no I/O, time passed in): nodes from hellos, the
//! source × destination matrix of path checks, per-node own checks, hysteresis verdicts and
//! the current suspects. One task owns it (see `owner.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use kubenurse_proto::v1::{Hello, ResultBatch, UdpResult};

use crate::cell::{Cell, UdpRound};
use crate::suspects::{find_suspects, CellView, NodeView, Suspect};
use crate::validate::{bounded_text, check_batch, check_hello, CheckedBatch, Rejection, TargetSet, ValidResult};

/// Tunables; defaults in `Settings::default`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sliding window of the matrix, µs.
    pub window_micros: i64,
    /// Slots per window.
    pub slots: usize,
    /// Consecutive bad rounds before a cell is failing (and good ones before it recovers).
    pub hysteresis: u32,
    /// A cell is stale after this many of its source's intervals without a result.
    pub stale_intervals: i64,
    /// A disconnected agent's node is marked gone after this long, µs (and forgotten after
    /// [`Settings::drop_after_micros`]).
    pub gone_after_micros: i64,
    /// A check is slow above max(factor × cluster median, median + floor).
    pub slow_factor: f64,
    /// Absolute floor of slowness, µs: sub-millisecond jitter never makes a suspect.
    pub slow_floor_micros: u64,
    /// The UDP loss share a cell's loss test names ([`crate::loss::LossTest`]).
    pub loss_threshold: f64,
    /// How often verdicts, expiry and suspects are recomputed, µs.
    pub tick_micros: i64,
    /// Most nodes known at once: a hello that would add nodes beyond it is refused.
    pub max_nodes: usize,
    /// Most targets one hello may declare.
    pub max_targets: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            window_micros: 300_000_000,
            slots: 10,
            hysteresis: 2,
            stale_intervals: 3,
            gone_after_micros: 60_000_000,
            slow_factor: 3.0,
            slow_floor_micros: 20_000,
            loss_threshold: 0.02,
            tick_micros: 1_000_000,
            max_nodes: 20_000,
            max_targets: crate::validate::MAX_TARGETS,
        }
    }
}

/// A gone node is forgotten after this many times `gone_after` (when nobody targets it).
pub const DROP_AFTER_GONE_FACTOR: i64 = 10;

impl Settings {
    /// How long after its last stream closed a node is forgotten (when nobody targets it), µs.
    pub fn drop_after_micros(&self) -> i64 {
        self.gone_after_micros.saturating_mul(DROP_AFTER_GONE_FACTOR)
    }

    /// Length of one slot, µs.
    pub fn slot_micros(&self) -> i64 {
        (self.window_micros / self.slots.max(1) as i64).max(1)
    }
}

/// The last complete round of an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundSummary {
    /// The agent's round number.
    pub round: u64,
    /// All checks ok or skipped.
    pub all_ok: bool,
    /// The agent's neighbourhood_state.
    pub neighbourhood_state: String,
    /// Arrival time, unix µs.
    pub at: i64,
}

/// What the aggregator knows of a node.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    /// The agent's last hello, if it ever connected.
    pub hello: Option<Arc<Hello>>,
    /// Open streams from its agent (one per agent normally).
    pub streams: u32,
    /// When its last stream closed, unix µs.
    pub disconnected_at: Option<i64>,
    /// Last message from its agent, unix µs.
    pub last_seen: i64,
    /// The last round its agent completed.
    pub last_round: Option<RoundSummary>,
    /// Its own checks (API server, ingress, service, extra), by check type.
    pub checks: BTreeMap<String, Cell>,
}

impl NodeState {
    /// Whether its agent is streaming now.
    pub fn connected(&self) -> bool {
        self.streams > 0
    }

    fn interval_micros(&self) -> i64 {
        self.hello.as_ref().map_or(5_000_000, |h| h.interval_micros as i64)
    }
}

/// Counts of one batch's fate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Results recorded.
    pub accepted: u64,
    /// Results refused, by reason.
    pub rejected: BTreeMap<Rejection, u64>,
}

/// What recording one result needs besides the result: the same for a whole batch.
struct Apply {
    now: i64,
    slot_micros: i64,
    retention: usize,
    hysteresis: u32,
    slow_above_micros: u64,
    min_gap: i64,
}

impl Apply {
    fn udp(&self, cell: &mut Cell, u: &UdpResult, loss_threshold: f64) {
        let round = UdpRound { sent: u.sent, lost: u.sent - u.received, rtt_micros: &u.rtt_micros };
        let (at, slot, retention, k) = (self.now, self.slot_micros, self.retention, self.hysteresis);
        cell.record_udp(at, slot, retention, round, u.round, self.min_gap, loss_threshold, k);
    }

    fn to(&self, cell: &mut Cell, v: ValidResult) {
        let (now, k, failed) = (self.now, self.hysteresis, v.failed());
        cell.record_tcp(now, self.slot_micros, self.retention, v.duration_micros, failed, v.syn_retransmits);
        cell.last_micros = v.duration_micros;
        cell.last_failed = failed;
        cell.last_local = v.local;
        cell.last_seen = now;
        if v.error.is_some() {
            cell.last_error = v.error;
        }
        if cell.new_round(v.round, now, self.min_gap) {
            cell.health.observe(failed, k);
            cell.latency.observe(!failed && v.duration_micros > self.slow_above_micros, k);
        }
    }
}

/// The state.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// Tunables.
    pub settings: Settings,
    /// Nodes by name: agents that said hello, and nodes agents target.
    pub nodes: BTreeMap<String, NodeState>,
    /// Path-check cells: source → destination → cell.
    pub matrix: HashMap<String, HashMap<String, Cell>>,
    /// Current slowness threshold, µs (from the cluster median).
    pub slow_threshold_micros: u64,
    /// Suspects as of the last tick.
    pub suspects: Vec<Suspect>,
    /// Results recorded since start.
    pub ingested: u64,
}

impl ClusterState {
    /// An empty state with `settings`.
    pub fn new(settings: Settings) -> Self {
        Self { settings, slow_threshold_micros: u64::MAX, ..Self::default() }
    }

    /// An agent's stream said hello (first, or again with new targets).
    pub fn hello(&mut self, hello: Hello, now: i64, new_stream: bool) -> Result<(), Rejection> {
        check_hello(&hello, self.settings.max_targets)?;
        // Usually none: a hello again, or one whose targets are known already.
        let mut unknown: Vec<&String> =
            std::iter::once(&hello.node).chain(&hello.targets).filter(|n| !self.nodes.contains_key(*n)).collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() && self.nodes.len() + unknown.len() > self.settings.max_nodes {
            return Err(Rejection::TooManyNodes);
        }
        for t in &hello.targets {
            if !self.nodes.contains_key(t) {
                self.nodes.insert(t.clone(), NodeState::default());
            }
        }
        let node = self.nodes.entry(hello.node.clone()).or_default();
        if new_stream {
            node.streams += 1;
        }
        node.disconnected_at = None;
        node.last_seen = now;
        node.hello = Some(Arc::new(hello));
        Ok(())
    }

    /// An agent's stream ended.
    pub fn disconnect(&mut self, node: &str, now: i64) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.streams = n.streams.saturating_sub(1);
            if n.streams == 0 {
                n.disconnected_at = Some(now);
            }
        }
    }

    /// Validates and records a batch from `node` (which must have said hello).
    pub fn batch(&mut self, node: &str, batch: &ResultBatch, now: i64) -> BatchOutcome {
        let Some(hello) = self.nodes.get(node).and_then(|n| n.hello.clone()) else {
            let mut out = BatchOutcome::default();
            out.rejected.insert(Rejection::NoHello, batch.results.len() as u64);
            return out;
        };
        let (checked, rejected) = check_batch(batch.clone(), &TargetSet::new(&hello.targets));
        let mut out = self.record_checked(node, checked, now);
        out.rejected.extend(rejected);
        out
    }

    /// Records a batch of `node` that passed [`check_batch`] against its hello's targets.
    pub fn record_checked(&mut self, node: &str, batch: CheckedBatch, now: i64) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let Some(n) = self.nodes.get_mut(node).filter(|n| n.hello.is_some()) else {
            out.rejected.insert(Rejection::NoHello, batch.results.len() as u64);
            return out;
        };
        n.last_seen = now;
        if let Some(end) = &batch.round_end {
            let state = bounded_text(&end.neighbourhood_state);
            n.last_round =
                Some(RoundSummary { round: end.round, all_ok: end.all_ok, neighbourhood_state: state, at: now });
        }
        let apply = Apply {
            now,
            slot_micros: self.settings.slot_micros(),
            retention: self.settings.slots,
            hysteresis: self.settings.hysteresis,
            slow_above_micros: self.slow_threshold_micros,
            // At most one round per half interval counts for the hysteresis.
            min_gap: n.interval_micros() / 2,
        };
        // The source's row once a batch; everywhere, look up before inserting, so the hot path
        // allocates no key.
        let mut row = None;
        if !batch.udp.is_empty() || batch.results.iter().any(|v| v.kind.target_node().is_some()) {
            if !self.matrix.contains_key(node) {
                self.matrix.insert(node.to_string(), HashMap::new());
            }
            row = self.matrix.get_mut(node);
        }
        out.accepted = (batch.results.len() + batch.udp.len()) as u64;
        for v in batch.results {
            // One lookup when the cell exists (always, after the first round), a second and
            // the key's allocation only when it is new.
            match (v.kind.target_node(), row.as_deref_mut()) {
                (Some(target), Some(row)) => match row.get_mut(target) {
                    Some(cell) => apply.to(cell, v),
                    None => {
                        let target = target.to_string();
                        apply.to(row.entry(target).or_default(), v);
                    }
                },
                (Some(_), None) => {}
                (None, _) => {
                    let label = v.kind.label();
                    match n.checks.get_mut(label.as_ref()) {
                        Some(cell) => apply.to(cell, v),
                        None => {
                            let label = label.into_owned();
                            apply.to(n.checks.entry(label).or_default(), v);
                        }
                    }
                }
            }
        }
        if let Some(row) = row.filter(|_| !batch.udp.is_empty()) {
            for u in &batch.udp {
                let cell = match row.get_mut(&u.target_node) {
                    Some(cell) => cell,
                    None => row.entry(u.target_node.clone()).or_default(),
                };
                apply.udp(cell, u, self.settings.loss_threshold);
            }
        }
        self.ingested += out.accepted;
        out
    }

    /// How old a result of `src` may be before its cell is stale, µs.
    pub fn stale_after(&self, src: &str) -> i64 {
        self.settings.stale_intervals * self.nodes.get(src).map_or(5_000_000, NodeState::interval_micros)
    }

    /// Whether a cell of `src` is fresh at `now`.
    pub fn fresh(&self, src: &str, cell: &Cell, now: i64) -> bool {
        now - cell.last_seen <= self.stale_after(src)
    }

    /// Whether a node's agent has been away longer than the grace period.
    pub fn gone(&self, node: &NodeState, now: i64) -> bool {
        node.disconnected_at.is_some_and(|t| now - t > self.settings.gone_after_micros)
    }

    /// Periodic upkeep: slowness threshold, expiry of old cells and nodes, suspects.
    pub fn tick(&mut self, now: i64) {
        let mut latencies: Vec<u64> = Vec::new();
        for (src, row) in &self.matrix {
            let stale_after = self.stale_after(src);
            latencies.extend(
                row.values().filter(|c| !c.last_failed && now - c.last_seen <= stale_after).map(|c| c.last_micros),
            );
        }
        self.slow_threshold_micros = if latencies.is_empty() {
            u64::MAX
        } else {
            let mid = latencies.len() / 2;
            let median = *latencies.select_nth_unstable(mid).1;
            ((median as f64 * self.settings.slow_factor) as u64).max(median + self.settings.slow_floor_micros)
        };

        let window = self.settings.window_micros;
        for row in self.matrix.values_mut() {
            row.retain(|_, c| now - c.last_seen <= window);
        }
        self.matrix.retain(|_, row| !row.is_empty());
        let drop_after = self.settings.drop_after_micros();
        let mut dropped: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| match n.disconnected_at {
                Some(t) => now - t > drop_after,
                None => n.hello.is_none(),
            })
            .map(|(name, _)| name.clone())
            .collect();
        if !dropped.is_empty() {
            // Only then the (cluster-sized) set of targeted nodes: they are kept.
            let targeted: HashSet<&str> = self
                .nodes
                .values()
                .filter_map(|n| n.hello.as_ref())
                .flat_map(|h| h.targets.iter().map(String::as_str))
                .collect();
            dropped.retain(|name| !targeted.contains(name.as_str()));
        }
        for name in dropped {
            self.nodes.remove(&name);
            self.matrix.remove(&name);
        }
        self.suspects = self.compute_suspects(now);
    }

    fn compute_suspects(&self, now: i64) -> Vec<Suspect> {
        let names: Vec<&String> = self.nodes.keys().collect();
        let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let views: Vec<NodeView> = self
            .nodes
            .iter()
            .map(|(name, n)| NodeView {
                name: name.clone(),
                zone: n.hello.as_ref().map(|h| h.zone.clone()).unwrap_or_default(),
                agent_connected: n.connected(),
            })
            .collect();
        let mut cells = Vec::new();
        for (src, row) in &self.matrix {
            let Some(&s) = index.get(src.as_str()) else { continue };
            let stale_after = self.stale_after(src);
            for (dst, cell) in row {
                let Some(&d) = index.get(dst.as_str()) else { continue };
                if now - cell.last_seen <= stale_after {
                    cells.push(CellView {
                        src: s,
                        dst: d,
                        failing: cell.health.bad,
                        slow: cell.latency.bad,
                        local: cell.last_local,
                        lossy: cell.lossy(),
                    });
                }
            }
        }
        find_suspects(&views, &cells)
    }

    /// Nodes checked by fewer live peers than they should be: (node, checkers, expected).
    pub fn coverage(&self) -> Vec<(&str, usize, usize)> {
        coverage_rows(self.nodes.iter().map(|(name, n)| (name.as_str(), n.connected(), n.hello.as_deref())))
    }
}

/// For each node (name, agent connected, its hello): how many live agents check it, and how
/// many should (the largest neighbour limit, at most every other live agent).
pub fn coverage_rows<'a>(
    nodes: impl Iterator<Item = (&'a str, bool, Option<&'a Hello>)> + Clone,
) -> Vec<(&'a str, usize, usize)> {
    let live = || nodes.clone().filter(|(_, connected, _)| *connected).filter_map(|(_, _, h)| h);
    let mut checkers: HashMap<&str, usize> = HashMap::new();
    for h in live() {
        for t in &h.targets {
            *checkers.entry(t.as_str()).or_default() += 1;
        }
    }
    let peers = live().count().saturating_sub(1);
    // Once, not per node: the loop below is over every node.
    let limit = live().map(|h| h.neighbour_limit as usize).max().unwrap_or(0);
    let expected = if limit == 0 { peers } else { limit.min(peers) };
    nodes.map(|(name, _, _)| (name, checkers.get(name).copied().unwrap_or(0), expected)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubenurse_proto::v1::{CheckResult, Outcome, RoundEnd};

    fn hello(node: &str, targets: &[&str], limit: u32) -> Hello {
        Hello {
            protocol: kubenurse_proto::PROTOCOL_REVISION,
            node: node.into(),
            interval_micros: 1_000_000,
            neighbour_limit: limit,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            ..Hello::default()
        }
    }

    fn result(target: &str, micros: u64, ok: bool) -> CheckResult {
        CheckResult {
            check_type: format!("path_{target}"),
            target_node: target.into(),
            duration_micros: micros,
            outcome: if ok { Outcome::Ok } else { Outcome::Failed }.into(),
            ..CheckResult::default()
        }
    }

    fn batch(results: Vec<CheckResult>) -> ResultBatch {
        ResultBatch {
            results,
            round_ends: vec![RoundEnd { round: 1, all_ok: true, ..RoundEnd::default() }],
            ..ResultBatch::default()
        }
    }

    #[test]
    fn a_batch_of_udp_rounds_alone_opens_its_row() {
        let mut s = ClusterState::new(Settings::default());
        assert_eq!(s.hello(hello("a", &["b"], 0), 0, true), Ok(()));
        let udp = UdpResult {
            target_node: "b".into(),
            sent: 10,
            received: 9,
            rtt_micros: vec![100; 9],
            ..UdpResult::default()
        };
        let out = s.batch("a", &ResultBatch { udp_results: vec![udp], ..ResultBatch::default() }, 1_000_000);
        assert_eq!((out.accepted, out.rejected.len()), (1, 0), "{out:?}");
        let cell = s.matrix.get("a").and_then(|row| row.get("b"));
        assert!(cell.is_some_and(|c| c.udp.is_some()), "{:?}", s.matrix.keys().collect::<Vec<_>>());
    }

    /// Three nodes all checking each other; `bad` receives failures from everyone `rounds` times.
    fn run_rounds(state: &mut ClusterState, bad: Option<&str>, rounds: i64, t0: i64) -> i64 {
        let names = ["a", "b", "c"];
        let mut now = t0;
        for _ in 0..rounds {
            for src in names {
                let results = names.iter().filter(|d| **d != src).map(|d| result(d, 300, Some(*d) != bad)).collect();
                state.batch(src, &batch(results), now);
            }
            state.tick(now);
            now += 1_000_000;
        }
        now
    }

    fn cluster() -> ClusterState {
        let mut s = ClusterState::new(Settings::default());
        for (n, t) in [("a", ["b", "c"]), ("b", ["a", "c"]), ("c", ["a", "b"])] {
            s.hello(hello(n, &t, 10), 0, true).unwrap();
        }
        s
    }

    #[test]
    fn one_bad_round_pages_nobody_two_do() {
        let mut s = cluster();
        let now = run_rounds(&mut s, None, 3, 1_000_000);
        assert!(s.suspects.is_empty());
        let now = run_rounds(&mut s, Some("c"), 1, now);
        assert!(s.suspects.is_empty(), "{:?}", s.suspects);
        let now = run_rounds(&mut s, Some("c"), 1, now);
        assert_eq!(s.suspects.len(), 1, "{:?}", s.suspects);
        assert_eq!(s.suspects[0].node.as_deref(), Some("c"));
        // Recovery takes two good rounds as well.
        let now = run_rounds(&mut s, None, 1, now);
        assert_eq!(s.suspects.len(), 1);
        run_rounds(&mut s, None, 1, now);
        assert!(s.suspects.is_empty());
    }

    #[test]
    fn sub_millisecond_jitter_is_never_slow() {
        let mut s = cluster();
        let now = run_rounds(&mut s, None, 3, 1_000_000);
        assert_eq!(s.slow_threshold_micros, 300 + 20_000);
        for _ in 0..3 {
            s.batch("a", &batch(vec![result("b", 900, true), result("c", 300, true)]), now);
        }
        s.tick(now);
        assert!(s.suspects.is_empty());
    }

    #[test]
    fn disconnected_agents_go_and_are_forgotten() {
        let mut s = cluster();
        run_rounds(&mut s, None, 2, 1_000_000);
        s.disconnect("c", 3_000_000);
        s.tick(3_000_000 + s.settings.gone_after_micros + 1);
        let c = &s.nodes["c"];
        assert!(!c.connected() && s.gone(c, 3_000_000 + s.settings.gone_after_micros + 1));
        // Still targeted by a and b: kept. Once nobody targets it, dropped after the grace.
        s.hello(hello("a", &["b"], 10), 4_000_000, false).unwrap();
        s.hello(hello("b", &["a"], 10), 4_000_000, false).unwrap();
        s.tick(3_000_000 + s.settings.drop_after_micros() + 1);
        assert!(!s.nodes.contains_key("c"));
    }

    #[test]
    fn a_fast_sender_cannot_skip_the_hysteresis() {
        let mut s = cluster();
        let now = run_rounds(&mut s, None, 3, 1_000_000);
        // Ten failures of "c" from "a" within 100 ms, with rising round numbers: one round.
        for i in 0..10u64 {
            let mut r = result("c", 300, false);
            r.round = 100 + i;
            s.batch("a", &batch(vec![r]), now + i as i64 * 10_000);
        }
        s.tick(now + 100_000);
        assert!(!s.matrix["a"]["c"].health.bad, "ten results in 100 ms are one round");
    }

    #[test]
    fn nodes_are_capped() {
        let mut s = ClusterState::new(Settings { max_nodes: 3, ..Settings::default() });
        s.hello(hello("a", &["b"], 10), 0, true).unwrap();
        s.hello(hello("c", &["a"], 10), 0, true).unwrap();
        assert_eq!(s.hello(hello("d", &[], 10), 0, true), Err(Rejection::TooManyNodes));
        assert_eq!(s.hello(hello("b", &["e"], 10), 0, true), Err(Rejection::TooManyNodes), "targets count too");
        // Known nodes keep saying hello at the cap.
        assert_eq!(s.hello(hello("b", &["a", "c"], 10), 0, true), Ok(()));
        assert_eq!(s.nodes.len(), 3);
    }

    #[test]
    fn coverage_counts_live_checkers() {
        let mut s = ClusterState::new(Settings::default());
        s.hello(hello("a", &["b"], 2), 0, true).unwrap();
        s.hello(hello("b", &["a", "c"], 2), 0, true).unwrap();
        s.hello(hello("c", &["a", "b"], 2), 0, true).unwrap();
        let cov: BTreeMap<&str, (usize, usize)> = s.coverage().into_iter().map(|(n, h, w)| (n, (h, w))).collect();
        assert_eq!(cov["a"], (2, 2));
        assert_eq!(cov["b"], (2, 2));
        assert_eq!(cov["c"], (1, 2), "c is checked only by b");
    }
}
