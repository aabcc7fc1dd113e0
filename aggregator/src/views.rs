//! JSON answers of the HTTP API, computed from the state (pure).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cell::{Cell, CellStats};
use kubenurse_proto::v1::Hello;

use crate::state::{ClusterState, RoundSummary};

/// Which number the matrix colours by (`?stat=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// Median latency.
    P50,
    /// 90th percentile.
    P90,
    /// 99th percentile.
    P99,
    /// Failed share.
    ErrorRatio,
    /// Lost share of UDP packets.
    LossRatio,
}

impl Stat {
    /// Every statistic, in declaration order (`stat as usize` indexes it).
    pub const ALL: [Stat; 5] = [Self::P50, Self::P90, Self::P99, Self::ErrorRatio, Self::LossRatio];

    /// Parses a `?stat=` spelling ([`Stat::name`]).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|stat| stat.name() == s)
    }

    /// This statistic of a cell's view.
    pub fn of(self, c: &CellView<'_>) -> Option<f64> {
        match self {
            Self::P50 => c.p50_ms,
            Self::P90 => c.p90_ms,
            Self::P99 => c.p99_ms,
            Self::ErrorRatio => Some(c.error_ratio),
            Self::LossRatio => c.loss_ratio,
        }
    }

    /// The `?stat=` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::P50 => "p50",
            Self::P90 => "p90",
            Self::P99 => "p99",
            Self::ErrorRatio => "error_ratio",
            Self::LossRatio => "loss_ratio",
        }
    }
}

/// One matrix cell over a window, borrowed from the state: computed once per cell, written by
/// `matrix_json` (the `/api/v1/matrix` document) and read by the per-cell gauges.
#[derive(Debug, Clone, Serialize)]
pub struct CellView<'a> {
    /// Source node.
    pub src: &'a str,
    /// Destination node.
    pub dst: &'a str,
    /// Results in the window.
    pub count: u64,
    /// Failures in the window.
    pub errors: u64,
    /// errors / count.
    pub error_ratio: f64,
    /// Latency quantiles, ms (µs precision).
    pub p50_ms: Option<f64>,
    /// 90th percentile, ms.
    pub p90_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Last result's latency, ms.
    pub last_ms: f64,
    /// Last failure text.
    pub last_error: Option<&'a str>,
    /// Last result.
    pub last_seen: Rfc3339,
    /// No result for 3 × interval.
    pub stale: bool,
    /// Failing per hysteresis.
    pub failing: bool,
    /// Slow per hysteresis.
    pub slow: bool,
    /// Lost share of UDP packets in the window; null without UDP data.
    pub loss_ratio: Option<f64>,
    /// UDP round-trip median, ms; null without UDP data (or no reply).
    pub udp_p50_ms: Option<f64>,
    /// UDP round-trip 99th percentile, ms.
    pub udp_p99_ms: Option<f64>,
    /// SYN retransmissions inferred in the window; null without TCP results.
    pub syn_retransmits: Option<u64>,
    /// Lossy per hysteresis.
    pub lossy: bool,
    /// The requested statistic, for colouring.
    pub value: Option<f64>,
}

/// µs → ms, rounded to µs precision: every latency the API shows.
pub fn ms(micros: f64) -> f64 {
    (micros / 1000.0 * 1000.0).round() / 1000.0
}

/// Formats unix µs as RFC 3339 (UTC).
pub fn rfc3339(micros: i64) -> String {
    Rfc3339(micros).to_string()
}

/// Unix µs shown as RFC 3339 (UTC), written without allocating (this runs once per cell).
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub i64);

impl Rfc3339 {
    /// The 27 ASCII bytes (`2026-11-18T11:06:40.123456Z`) in a stack buffer.
    fn bytes(self) -> ([u8; 27], usize) {
        let mut out = [0u8; 27];
        let mut len = 0;
        rfc3339_digits(self.0, |b| {
            if let Some(slot) = out.get_mut(len) {
                *slot = b;
                len += 1;
            }
        });
        (out, len)
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (out, len) = self.bytes();
        f.write_str(std::str::from_utf8(&out[..len]).unwrap_or_default())
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (out, len) = self.bytes();
        s.serialize_str(std::str::from_utf8(&out[..len]).unwrap_or_default())
    }
}

fn rfc3339_digits(micros: i64, mut push: impl FnMut(u8)) {
    let secs = micros.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let parts = [(y, 4, b'-'), (m, 2, b'-'), (d, 2, b'T'), (rem / 3600, 2, b':'), (rem % 3600 / 60, 2, b':')];
    for (v, width, sep) in parts.into_iter().chain([(rem % 60, 2, b'.'), (micros.rem_euclid(1_000_000), 6, b'Z')]) {
        for p in (0..width).rev() {
            push(b'0' + (v.unsigned_abs() / 10u64.pow(p) % 10) as u8);
        }
        push(sep);
    }
}

/// What a cell's view is made of, besides its names and last error: its window statistics
/// and its last result and verdicts, compact (a snapshot keeps one per cell: 80 bytes, where
/// a view is 224).
#[derive(Debug, Clone, PartialEq)]
pub struct CellFacts {
    stats: CellStats,
    last_micros: u64,
    last_seen: i64,
    stale: bool,
    failing: bool,
    slow: bool,
    lossy: bool,
}

impl CellFacts {
    /// The facts of `cell` with its window `stats`, `stale` or not.
    pub fn of(cell: &Cell, stats: CellStats, stale: bool) -> Self {
        Self {
            stats,
            last_micros: cell.last_micros,
            last_seen: cell.last_seen,
            stale,
            failing: cell.health.bad,
            slow: cell.latency.bad,
            lossy: cell.lossy(),
        }
    }

    /// The view of the cell `src` → `dst` with these facts, coloured by `stat`.
    pub fn view<'a>(&self, src: &'a str, dst: &'a str, last_error: Option<&'a str>, stat: Stat) -> CellView<'a> {
        let stats = &self.stats;
        let bucket_ms = |b: Option<crate::sketch::Bucket>| b.map(|b| ms(b.micros()));
        let mut view = CellView {
            src,
            dst,
            count: stats.count,
            errors: stats.errors,
            error_ratio: stats.error_ratio(),
            p50_ms: bucket_ms(stats.p50),
            p90_ms: bucket_ms(stats.p90),
            p99_ms: bucket_ms(stats.p99),
            last_ms: ms(self.last_micros as f64),
            last_error,
            last_seen: Rfc3339(self.last_seen),
            stale: self.stale,
            failing: self.failing,
            slow: self.slow,
            loss_ratio: stats.udp.as_ref().map(|u| u.loss_ratio()),
            udp_p50_ms: bucket_ms(stats.udp.as_ref().and_then(|u| u.p50)),
            udp_p99_ms: bucket_ms(stats.udp.as_ref().and_then(|u| u.p99)),
            syn_retransmits: (stats.count > 0).then_some(stats.syn_retransmits),
            lossy: self.lossy,
            value: None,
        };
        view.value = stat.of(&view);
        view
    }
}

/// The slots that overlap the last `window_micros` before `now` (at least one, at most the
/// kept ones): a window shorter than a slot still reaches into the previous slot, so the
/// first moments of a new slot never answer with an empty window.
pub fn window_slots(state: &ClusterState, now: i64, window_micros: i64) -> usize {
    let slot = state.settings.slot_micros();
    let (current, oldest) = (now.div_euclid(slot), now.saturating_sub(window_micros.max(0)).div_euclid(slot));
    (current.saturating_sub(oldest).saturating_add(1).max(1) as usize).min(state.settings.slots)
}

/// Every matrix cell over the window with its facts, ordered by source then destination (one
/// row's cells sorted at a time, nothing else collected).
pub fn matrix_facts(
    state: &ClusterState,
    now: i64,
    window_micros: i64,
) -> impl Iterator<Item = (&str, &str, &Cell, CellFacts)> + '_ {
    let slots = window_slots(state, now, window_micros);
    let slot = state.settings.slot_micros();
    // Sorted by source, then destination: rows sorted once, each row's few cells apart
    // (far fewer name comparisons than sorting every cell of the cluster).
    let mut rows: Vec<_> = state.matrix.iter().collect();
    rows.sort_unstable_by_key(|(src, _)| src.as_str());
    rows.into_iter().flat_map(move |(src, row)| {
        let stale_after = state.stale_after(src);
        let mut cells: Vec<(&str, &Cell)> = row.iter().map(|(dst, cell)| (dst.as_str(), cell)).collect();
        cells.sort_unstable_by_key(|&(dst, _)| dst);
        cells.into_iter().map(move |(dst, cell)| {
            let facts = CellFacts::of(cell, cell.stats(now, slot, slots), now - cell.last_seen > stale_after);
            (src.as_str(), dst, cell, facts)
        })
    })
}

/// Every matrix cell over the window, ordered by source then destination.
pub fn matrix_cells(state: &ClusterState, now: i64, window_micros: i64, stat: Stat) -> Vec<CellView<'_>> {
    matrix_facts(state, now, window_micros)
        .map(|(src, dst, cell, facts)| facts.view(src, dst, cell.last_error.as_deref(), stat))
        .collect()
}

/// A node as the matrix lists it.
#[derive(Debug, Clone, Serialize)]
pub struct MatrixNode<'a> {
    /// Node name.
    pub name: &'a str,
    /// Zone label.
    pub zone: &'a str,
    /// Agent streaming now.
    pub connected: bool,
    /// Agent away longer than the grace period.
    pub gone: bool,
}

/// `/api/v1/matrix`: every node and every cell over the window, borrowed from the state (or
/// from a snapshot, whose cells are serialised as they are viewed: `C`).
#[derive(Debug, Clone, Serialize)]
pub struct Matrix<'a, C = Vec<CellView<'a>>> {
    /// The window the statistics cover.
    pub window_seconds: f64,
    /// The statistic in each cell's `value`.
    pub stat: &'static str,
    /// Every known node.
    pub nodes: Vec<MatrixNode<'a>>,
    /// Every cell.
    pub cells: C,
}

/// `/api/v1/matrix`.
pub fn matrix(state: &ClusterState, now: i64, window_micros: i64, stat: Stat) -> Matrix<'_> {
    let nodes = state
        .nodes
        .iter()
        .map(|(name, n)| MatrixNode {
            name,
            zone: n.hello.as_ref().map_or("", |h| h.zone.as_str()),
            connected: n.connected(),
            gone: state.gone(n, now),
        })
        .collect();
    Matrix {
        window_seconds: window_micros as f64 / 1e6,
        stat: stat.name(),
        nodes,
        cells: matrix_cells(state, now, window_micros, stat),
    }
}

/// Bytes reserved per cell before rendering the matrix: a cell with every field set is about
/// 350. Reserving more costs only address space (pages never written are never resident);
/// reserving less made the buffer grow, copying and doubling a 34 MiB document.
pub const MATRIX_BYTES_PER_CELL: usize = 400;

/// `doc` as JSON bytes, in a buffer of [`MATRIX_BYTES_PER_CELL`] per cell, trimmed to its length.
pub fn render_matrix<C: Serialize>(doc: &Matrix<'_, C>, cells: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256 + cells * MATRIX_BYTES_PER_CELL);
    // Serializing plain numbers, strings and bools into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut buf, doc);
    buf.shrink_to_fit();
    buf
}

/// The `/api/v1/matrix` document as JSON bytes, written straight from the borrowed views (at
/// 100,000 cells no intermediate tree or string is built).
pub fn matrix_bytes(state: &ClusterState, now: i64, window_micros: i64, stat: Stat) -> Vec<u8> {
    let doc = matrix(state, now, window_micros, stat);
    render_matrix(&doc, doc.cells.len())
}

/// One node as its summary, the merged `/alive` and the coverage see it: borrowed from the
/// state, or from a snapshot (which shares the hellos instead of copying them), so both give
/// the same answers from one code path.
#[derive(Debug, Clone)]
pub struct NodeFacts<'a> {
    /// Node name.
    pub name: &'a str,
    /// Its agent's last hello.
    pub hello: Option<&'a Hello>,
    /// Its agent is streaming now.
    pub connected: bool,
    /// Its agent has been away longer than the grace period.
    pub gone: bool,
    /// Last message from its agent, unix µs (0: never).
    pub last_seen: i64,
    /// The last round its agent completed.
    pub last_round: Option<&'a RoundSummary>,
    /// Its own checks whose last result failed, by type.
    pub failing_checks: Vec<&'a str>,
}

/// The facts of every node of `state` at `now`, in name order.
pub fn node_facts(state: &ClusterState, now: i64) -> Vec<NodeFacts<'_>> {
    state
        .nodes
        .iter()
        .map(|(name, n)| NodeFacts {
            name,
            hello: n.hello.as_deref(),
            connected: n.connected(),
            gone: state.gone(n, now),
            last_seen: n.last_seen,
            last_round: n.last_round.as_ref(),
            failing_checks: n.checks.iter().filter(|(_, c)| c.last_failed).map(|(t, _)| t.as_str()).collect(),
        })
        .collect()
}

/// One node's summary (`/api/v1/nodes`, and the head of `/api/v1/nodes/{name}`).
pub fn node_summary(n: &NodeFacts<'_>) -> Value {
    let h = n.hello;
    json!({
        "name": n.name,
        "zone": h.map_or("", |h| h.zone.as_str()),
        "pod": h.map(|h| h.pod.as_str()),
        "pod_ip": h.map(|h| h.pod_ip.as_str()),
        "host_ip": h.map(|h| h.host_ip.as_str()),
        "agent_version": h.map(|h| h.agent_version.as_str()),
        "interval_seconds": h.map(|h| h.interval_micros as f64 / 1e6),
        "neighbour_limit": h.map(|h| h.neighbour_limit),
        "targets": h.map_or(&[][..], |h| &h.targets[..]),
        "connected": n.connected,
        "gone": n.gone,
        "last_seen": (n.last_seen > 0).then(|| rfc3339(n.last_seen)),
        "last_round": n.last_round.map(|r| json!({
            "round": r.round, "all_ok": r.all_ok, "neighbourhood_state": r.neighbourhood_state, "at": rfc3339(r.at),
        })),
    })
}

/// `/api/v1/status`: a few numbers, cheap to compute (for status lines, load tests and the
/// one-shot `check`, which reads it back with this type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDoc {
    /// Nodes known (streaming or targeted).
    pub nodes: usize,
    /// Agents streaming now.
    pub connected_agents: usize,
    /// Matrix cells held.
    pub cells: usize,
    /// Results recorded since start.
    pub results_ingested: u64,
    /// Current suspects.
    pub suspects: usize,
}

/// The status of `state`.
pub fn status(state: &ClusterState) -> StatusDoc {
    StatusDoc {
        nodes: state.nodes.len(),
        connected_agents: state.nodes.values().filter(|n| n.connected()).count(),
        cells: state.matrix.values().map(HashMap::len).sum::<usize>(),
        results_ingested: state.ingested,
        suspects: state.suspects.len(),
    }
}

/// One node's line of `/api/v1/coverage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverageRow {
    /// The node.
    pub node: String,
    /// Live agents that check it.
    pub checkers: usize,
    /// Live agents that should (the neighbour limit, at most every other live agent).
    pub expected: usize,
}

/// `/api/v1/coverage` (the one-shot `check` reads it back with this type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverageDoc {
    /// No node is under-covered.
    pub complete: bool,
    /// Nodes checked by fewer live agents than expected.
    pub under_covered: Vec<CoverageRow>,
    /// Every node.
    pub nodes: Vec<CoverageRow>,
}

/// `/api/v1/coverage` of `state`.
pub fn coverage(state: &ClusterState) -> CoverageDoc {
    coverage_of(&node_facts(state, 0))
}

/// `/api/v1/coverage` of these nodes.
pub fn coverage_of(nodes: &[NodeFacts<'_>]) -> CoverageDoc {
    let rows = crate::state::coverage_rows(nodes.iter().map(|n| (n.name, n.connected, n.hello)));
    let nodes: Vec<CoverageRow> = rows
        .into_iter()
        .map(|(node, checkers, expected)| CoverageRow { node: node.to_string(), checkers, expected })
        .collect();
    let under_covered: Vec<CoverageRow> = nodes.iter().filter(|r| r.checkers < r.expected).cloned().collect();
    CoverageDoc { complete: under_covered.is_empty(), under_covered, nodes }
}

/// Merged `/alive` of `state`: 200 when every live agent's last round was all ok.
pub fn alive(state: &ClusterState, now: i64) -> (bool, Value) {
    alive_of(&node_facts(state, now))
}

/// Merged `/alive` of these nodes.
pub fn alive_of(nodes: &[NodeFacts<'_>]) -> (bool, Value) {
    let mut all_ok = true;
    let mut live = 0;
    let mut out = serde_json::Map::new();
    for n in nodes {
        if n.hello.is_none() {
            continue;
        }
        let ok = n.last_round.is_some_and(|r| r.all_ok);
        if n.connected {
            live += 1;
            all_ok &= ok;
        }
        out.insert(
            n.name.to_string(),
            json!({
                "connected": n.connected,
                "gone": n.gone,
                "all_ok": ok,
                "neighbourhood_state": n.last_round.map(|r| r.neighbourhood_state.as_str()),
                "failing_checks": n.failing_checks,
            }),
        );
    }
    let ok = all_ok && live > 0;
    (ok, json!({"all_ok": ok, "live_agents": live, "nodes": out}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Settings;
    use kubenurse_proto::v1::{CheckResult, Hello, Outcome, ResultBatch};
    use serde_json::json;

    /// The documented `/api/v1/matrix` shape, built field by field with `json!` from the same
    /// cells: what the served bytes must equal (escaping, numbers, nulls included).
    fn reference(s: &ClusterState, now: i64, window: i64, stat: Stat) -> serde_json::Value {
        let nodes: Vec<_> = s
            .nodes
            .iter()
            .map(|(name, n)| {
                json!({"name": name, "zone": n.hello.as_ref().map_or("", |h| h.zone.as_str()),
                       "connected": n.connected(), "gone": s.gone(n, now)})
            })
            .collect();
        let cells: Vec<_> = matrix_cells(s, now, window, stat)
            .into_iter()
            .map(|c| {
                json!({"src": c.src, "dst": c.dst, "count": c.count, "errors": c.errors, "error_ratio": c.error_ratio,
                       "p50_ms": c.p50_ms, "p90_ms": c.p90_ms, "p99_ms": c.p99_ms, "last_ms": c.last_ms,
                       "last_error": c.last_error, "last_seen": c.last_seen.to_string(), "stale": c.stale,
                       "failing": c.failing, "slow": c.slow, "loss_ratio": c.loss_ratio,
                       "udp_p50_ms": c.udp_p50_ms, "udp_p99_ms": c.udp_p99_ms,
                       "syn_retransmits": c.syn_retransmits, "lossy": c.lossy, "value": c.value})
            })
            .collect();
        json!({"window_seconds": window as f64 / 1e6, "stat": stat.name(), "nodes": nodes, "cells": cells})
    }

    #[test]
    fn matrix_document_has_the_documented_shape() {
        let mut s = ClusterState::new(Settings::default());
        for (n, targets) in [("a", vec!["b", "c"]), ("b", vec!["a"]), ("c\"quoted", vec![])] {
            let hello = Hello {
                protocol: kubenurse_proto::PROTOCOL_REVISION,
                node: n.replace('"', ""),
                zone: "z\"1".into(),
                interval_micros: 1_000_000,
                targets: targets.iter().map(|t| t.to_string()).collect(),
                ..Hello::default()
            };
            s.hello(hello, 0, true).unwrap();
        }
        let results = vec![
            CheckResult {
                check_type: "path_b".into(),
                target_node: "b".into(),
                duration_micros: 333,
                outcome: Outcome::Ok.into(),
                ..Default::default()
            },
            CheckResult {
                check_type: "path_c".into(),
                target_node: "c".into(),
                duration_micros: 0,
                outcome: Outcome::Failed.into(),
                error: "dial tcp: \"refused\"\n".into(),
                ..Default::default()
            },
        ];
        s.batch("a", &ResultBatch { results, round_ends: vec![], ..ResultBatch::default() }, 1_000_000);
        s.tick(1_500_000);
        for stat in [Stat::P50, Stat::P90, Stat::P99, Stat::ErrorRatio] {
            let fast: serde_json::Value =
                serde_json::from_slice(&matrix_bytes(&s, 2_000_000, 300_000_000, stat)).unwrap();
            let typed = reference(&s, 2_000_000, 300_000_000, stat);
            assert_eq!(fast, typed);
        }
    }

    #[test]
    fn a_short_window_reaches_into_the_previous_slot() {
        let s = ClusterState::new(Settings::default());
        let slot = s.settings.slot_micros();
        assert_eq!(slot, 30_000_000, "the default: 300 s in 10 slots");
        // 100 ms into a slot, the last 30 s are mostly the previous slot: both count.
        assert_eq!(window_slots(&s, 7 * slot + 100_000, 30_000_000), 2);
        assert_eq!(window_slots(&s, 7 * slot + 100_000, 1_000_000), 2);
        assert_eq!(window_slots(&s, 7 * slot + 5_000_000, 1_000_000), 1, "a second inside one slot");
        assert_eq!(window_slots(&s, 7 * slot + 100_000, 300_000_000), 10, "never more than the kept");
        assert_eq!(window_slots(&s, 7 * slot, 0), 1);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(1_795_000_000_123_456), "2026-11-18T11:06:40.123456Z");
    }
}
