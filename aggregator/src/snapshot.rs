//! What the HTTP side reads: an immutable picture of the state, built by the owner at the end
//! of a tick when someone asked since the last one, and shared by every request until the next.
//! Answers are made from it off the owner task, so a crowd of dashboards never delays ingest;
//! the matrix document is rendered at most once per snapshot and statistic, and gzipped at
//! most once for the clients that ask for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Bytes;
use serde_json::{json, Value};

use kubenurse_proto::v1::Hello;

use crate::cell::Cell;
use crate::state::{ClusterState, RoundSummary};
use crate::suspects::Suspect;
use crate::views::{self, CellFacts, CellView, CoverageDoc, Matrix, MatrixNode, NodeFacts, Stat};

/// A matrix cell as the snapshot keeps it: its compact facts with shared names (a node's name
/// is one allocation per snapshot, not two per cell: 100,000 cells made 200,000 of them). The
/// view is made when it is read: a snapshot of views was 280 bytes a cell, this is 136.
#[derive(Debug, Clone)]
pub struct SnapshotCell {
    src: Arc<str>,
    dst: Arc<str>,
    last_error: Option<Box<str>>,
    facts: CellFacts,
    /// Whether its source's agent targets its destination now (only those get gauges).
    pub targeted: bool,
}

impl SnapshotCell {
    /// The cell `src` → `dst` (`src` already shared by the caller) with its facts.
    fn new<'a>(
        src: Arc<str>,
        dst: &'a str,
        cell: &Cell,
        facts: CellFacts,
        targeted: bool,
        names: &mut Names<'a>,
    ) -> Self {
        Self { src, dst: names.get(dst), last_error: cell.last_error.as_deref().map(Into::into), facts, targeted }
    }

    /// The cell's view with `stat` as its value.
    pub fn view(&self, stat: Stat) -> CellView<'_> {
        self.facts.view(&self.src, &self.dst, self.last_error.as_deref(), stat)
    }
}

/// One shared copy of each name a snapshot holds.
#[derive(Default)]
struct Names<'a>(std::collections::HashMap<&'a str, Arc<str>>);

impl<'a> Names<'a> {
    fn get(&mut self, name: &'a str) -> Arc<str> {
        self.0.entry(name).or_insert_with(|| Arc::from(name)).clone()
    }
}

/// A snapshot's cells serialised as they are viewed with a statistic, one at a time (no
/// 100,000-element Vec of views beside the document).
struct CellsOf<'a>(&'a [SnapshotCell], Stat);

impl serde::Serialize for CellsOf<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|c| c.view(self.1)))
    }
}

#[derive(Debug, Clone)]
struct SnapshotNode {
    name: Arc<str>,
    /// Shared with the state, not copied.
    hello: Option<Arc<Hello>>,
    connected: bool,
    gone: bool,
    last_seen: i64,
    last_round: Option<RoundSummary>,
    failing_checks: Vec<Box<str>>,
    checks: Vec<SnapshotCell>,
}

impl SnapshotNode {
    fn facts(&self) -> NodeFacts<'_> {
        NodeFacts {
            name: &self.name,
            hello: self.hello.as_deref(),
            connected: self.connected,
            gone: self.gone,
            last_seen: self.last_seen,
            last_round: self.last_round.as_ref(),
            failing_checks: self.failing_checks.iter().map(|t| &**t).collect(),
        }
    }

    fn zone(&self) -> &str {
        self.hello.as_ref().map_or("", |h| h.zone.as_str())
    }
}

/// The share of one core that taking snapshots and rendering their documents may use: the next
/// snapshot is taken no sooner than the last one's cost divided by this (and never sooner than
/// a tick). A lab's few cells cost microseconds, so it gets one every tick; at 100,000 cells a
/// snapshot with its gzipped matrix costs a few hundred ms, so a crowd of dashboards gets a
/// fresh one every few seconds and ingest keeps the cores. Serving the answers costs about as
/// much again (the aggregator_ingest bench: 10 % here left ingest at 0.81-0.86 x alone while
/// 8 clients looped the matrix; the target is 0.9), so snapshots get half of the tenth.
pub const SNAPSHOT_CPU_SHARE: f64 = 0.05;
/// The longest a snapshot lives, in ticks, however much it cost (a render slowed by a busy
/// machine must not freeze the answers).
pub const MAX_SNAPSHOT_LIFETIME_TICKS: i64 = 10;
/// Bytes of JSON gathered before each write into the gzip encoder (serde writes in small
/// pieces; the encoder is faster fed in blocks).
const GZIP_FEED_BYTES: usize = 64 * 1024;

/// The state as of one instant, with every answer the API gives over the default window.
/// The owner only copies what the answers are made of; the JSON documents are made by the
/// first request that needs each, off the owner, and shared.
#[derive(Debug)]
pub struct Snapshot {
    /// When it was taken (unix µs, the owner's clock).
    pub at: i64,
    window_micros: i64,
    nodes: Vec<SnapshotNode>,
    cells: Vec<SnapshotCell>,
    /// Current suspects.
    pub suspects: Vec<Suspect>,
    coverage: OnceLock<CoverageDoc>,
    alive: OnceLock<(bool, Value)>,
    rendered: [OnceLock<Bytes>; Stat::ALL.len()],
    gzipped: [OnceLock<Bytes>; Stat::ALL.len()],
    /// Time spent taking it and rendering its documents so far, µs.
    cost_micros: AtomicU64,
}

fn elapsed_micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn stat_index(stat: Stat) -> usize {
    stat as usize
}

impl Snapshot {
    /// Takes a snapshot of `state` at `now` (run by the owner).
    pub fn take(state: &ClusterState, now: i64) -> Self {
        let started = Instant::now();
        let window_micros = state.settings.window_micros;
        let slot = state.settings.slot_micros();
        let slots = state.settings.slots;
        let mut names = Names::default();
        // Cells come row by row: the source's name and targets are looked up once a row, not
        // once a cell (a name lookup in the node map is a dozen string compares).
        let mut row: Option<(&str, Arc<str>, &[String])> = None;
        let mut cells = Vec::with_capacity(state.matrix.values().map(|row| row.len()).sum());
        for (src_name, dst, cell, facts) in views::matrix_facts(state, now, window_micros) {
            let (src, targets) = match &row {
                Some((name, src, targets)) if *name == src_name => (src.clone(), *targets),
                _ => {
                    let hello = state.nodes.get(src_name).and_then(|n| n.hello.as_deref());
                    let targets = hello.map_or(&[][..], |h| h.targets.as_slice());
                    let src = names.get(src_name);
                    row = Some((src_name, src.clone(), targets));
                    (src, targets)
                }
            };
            let targeted = targets.iter().any(|t| t == dst);
            cells.push(SnapshotCell::new(src, dst, cell, facts, targeted, &mut names));
        }
        let nodes = state
            .nodes
            .iter()
            .map(|(name, n)| {
                let checks = n
                    .checks
                    .iter()
                    .map(|(t, c)| {
                        let facts = CellFacts::of(c, c.stats(now, slot, slots), !state.fresh(name, c, now));
                        SnapshotCell::new(names.get(name), t, c, facts, false, &mut names)
                    })
                    .collect();
                SnapshotNode {
                    name: names.get(name),
                    hello: n.hello.clone(),
                    connected: n.connected(),
                    gone: state.gone(n, now),
                    last_seen: n.last_seen,
                    last_round: n.last_round.clone(),
                    failing_checks: n
                        .checks
                        .iter()
                        .filter(|(_, c)| c.last_failed)
                        .map(|(t, _)| t.as_str().into())
                        .collect(),
                    checks,
                }
            })
            .collect();
        Self {
            at: now,
            window_micros,
            nodes,
            cells,
            suspects: state.suspects.clone(),
            coverage: OnceLock::new(),
            alive: OnceLock::new(),
            rendered: Default::default(),
            gzipped: Default::default(),
            cost_micros: AtomicU64::new(elapsed_micros(started)),
        }
    }

    /// How long after this snapshot the next may be taken, µs: `tick_micros`, or longer when
    /// this one has cost more than [`SNAPSHOT_CPU_SHARE`] of that (at most
    /// [`MAX_SNAPSHOT_LIFETIME_TICKS`]).
    pub fn lifetime_micros(&self, tick_micros: i64) -> i64 {
        let cost = self.cost_micros.load(Ordering::Relaxed) as f64;
        let budgeted = (cost / SNAPSHOT_CPU_SHARE).min(i64::MAX as f64) as i64;
        budgeted.clamp(tick_micros, tick_micros.saturating_mul(MAX_SNAPSHOT_LIFETIME_TICKS))
    }

    /// `/api/v1/coverage`.
    pub fn coverage(&self) -> &CoverageDoc {
        self.coverage.get_or_init(|| views::coverage_of(&self.facts()))
    }

    /// How many nodes `/api/v1/coverage` lists as under-covered.
    pub fn under_covered_nodes(&self) -> usize {
        self.coverage().under_covered.len()
    }

    /// Merged `/alive`: (all ok, body).
    pub fn alive(&self) -> &(bool, Value) {
        self.alive.get_or_init(|| views::alive_of(&self.facts()))
    }

    fn facts(&self) -> Vec<NodeFacts<'_>> {
        self.nodes.iter().map(SnapshotNode::facts).collect()
    }

    /// Nodes known (streaming or targeted).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Agents streaming.
    pub fn connected_agents(&self) -> usize {
        self.nodes.iter().filter(|n| n.connected).count()
    }

    /// Every cell (sorted by source, destination) with `stat` as value.
    pub fn cells(&self, stat: Stat) -> impl Iterator<Item = CellView<'_>> + '_ {
        self.cells.iter().map(move |c| c.view(stat))
    }

    /// Cells with their `targeted` flag (for the per-cell gauges).
    pub fn snapshot_cells(&self) -> &[SnapshotCell] {
        &self.cells
    }

    /// The `/api/v1/matrix` document over the default window, borrowed from this snapshot.
    fn matrix_doc(&self, stat: Stat) -> Matrix<'_, CellsOf<'_>> {
        Matrix {
            window_seconds: self.window_micros as f64 / 1e6,
            stat: stat.name(),
            nodes: self
                .nodes
                .iter()
                .map(|n| MatrixNode { name: &n.name, zone: n.zone(), connected: n.connected, gone: n.gone })
                .collect(),
            cells: CellsOf(&self.cells, stat),
        }
    }

    /// The `/api/v1/matrix` document over the default window, rendered once per `stat` and
    /// shared by every request reading this snapshot.
    pub fn matrix_json(&self, stat: Stat) -> Bytes {
        self.rendered[stat_index(stat)]
            .get_or_init(|| {
                let started = Instant::now();
                let buf = views::render_matrix(&self.matrix_doc(stat), self.cells.len());
                self.cost_micros.fetch_add(elapsed_micros(started), Ordering::Relaxed);
                Bytes::from(buf)
            })
            .clone()
    }

    /// [`Self::matrix_json`] gzipped (fast level: a 100,000-cell matrix shrinks about tenfold),
    /// once per `stat` and shared. Written straight into the compressor unless the plain
    /// document exists already: browsers and Grafana ask for gzip, and a plain copy kept beside
    /// it was 34 MiB per snapshot at 100,000 cells.
    pub fn matrix_gzip(&self, stat: Stat) -> Bytes {
        self.gzipped[stat_index(stat)]
            .get_or_init(|| {
                use std::io::Write as _;
                let started = Instant::now();
                let estimate = self.cells.len() * views::MATRIX_BYTES_PER_CELL / 16;
                let gz = flate2::write::GzEncoder::new(Vec::with_capacity(estimate), flate2::Compression::fast());
                // Writing into a Vec cannot fail, nor can serializing plain numbers and strings.
                let gz = match self.rendered[stat_index(stat)].get() {
                    Some(json) => {
                        let mut gz = gz;
                        let _ = gz.write_all(json);
                        gz
                    }
                    None => {
                        let mut out = std::io::BufWriter::with_capacity(GZIP_FEED_BYTES, gz);
                        let _ = serde_json::to_writer(&mut out, &self.matrix_doc(stat));
                        let _ = out.flush();
                        out.into_parts().0
                    }
                };
                let mut gzipped = gz.finish().unwrap_or_default();
                gzipped.shrink_to_fit();
                self.cost_micros.fetch_add(elapsed_micros(started), Ordering::Relaxed);
                Bytes::from(gzipped)
            })
            .clone()
    }

    /// The matrix document of `stat` (gzipped or plain) if it is rendered already: a request
    /// that finds it need not leave the async workers (see `api::shared_matrix`).
    pub fn matrix_rendered(&self, stat: Stat, gzip: bool) -> Option<Bytes> {
        let docs = if gzip { &self.gzipped } else { &self.rendered };
        docs[stat_index(stat)].get().cloned()
    }

    /// `/api/v1/nodes`.
    pub fn nodes(&self) -> Value {
        json!({ "nodes": self.nodes.iter().map(|n| views::node_summary(&n.facts())).collect::<Vec<_>>() })
    }

    /// `/api/v1/nodes/{name}`: summary, own checks, row and column.
    pub fn node(&self, name: &str) -> Option<Value> {
        let n = self.nodes.iter().find(|n| &*n.name == name)?;
        let checks: Vec<CellView> = n.checks.iter().map(|c| c.view(Stat::P99)).collect();
        let (row, column): (Vec<CellView>, Vec<CellView>) =
            self.cells(Stat::P99).filter(|c| c.src == name || c.dst == name).partition(|c| c.src == name);
        let mut v = views::node_summary(&n.facts());
        v["checks"] = json!(checks);
        v["outgoing"] = json!(row);
        v["incoming"] = json!(column);
        Some(v)
    }

    /// `/api/v1/suspects`.
    pub fn suspects_json(&self) -> Value {
        json!({ "suspects": self.suspects })
    }
}

/// An empty snapshot (before the owner's first).
impl Default for Snapshot {
    fn default() -> Self {
        Self::take(&ClusterState::new(crate::state::Settings::default()), 0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use kubenurse_proto::v1::{CheckResult, Hello, Outcome, ResultBatch};

    use super::*;
    use crate::state::Settings;

    /// Three nodes, a failing cell and an own check (for the API's tests too).
    pub(crate) fn state() -> ClusterState {
        let mut s = ClusterState::new(Settings::default());
        for (n, targets) in [("a", vec!["b", "c"]), ("b", vec!["a"]), ("c", vec![])] {
            let hello = Hello {
                protocol: kubenurse_proto::PROTOCOL_REVISION,
                node: n.into(),
                zone: "z1".into(),
                interval_micros: 1_000_000,
                targets: targets.iter().map(|t| t.to_string()).collect(),
                ..Hello::default()
            };
            s.hello(hello, 0, true).unwrap_or_default();
        }
        let path = |t: &str, micros, ok: bool| CheckResult {
            check_type: format!("path_{t}"),
            target_node: t.into(),
            duration_micros: micros,
            outcome: if ok { Outcome::Ok.into() } else { Outcome::Failed.into() },
            error: if ok { String::new() } else { "dial tcp: refused".into() },
            ..CheckResult::default()
        };
        let own = CheckResult {
            check_type: "api_server_direct".into(),
            duration_micros: 900,
            outcome: Outcome::Ok.into(),
            ..CheckResult::default()
        };
        let results = vec![path("b", 333, true), path("c", 0, false), own];
        s.batch("a", &ResultBatch { results, round_ends: vec![], ..ResultBatch::default() }, 1_000_000);
        s.batch(
            "b",
            &ResultBatch { results: vec![path("a", 1234, true)], round_ends: vec![], ..ResultBatch::default() },
            1_100_000,
        );
        s.tick(1_500_000);
        s
    }

    #[test]
    fn answers_from_the_snapshot_are_the_states_answers() {
        let s = state();
        let now = 2_000_000;
        let snap = Snapshot::take(&s, now);
        for stat in [Stat::P50, Stat::P90, Stat::P99, Stat::ErrorRatio] {
            let from_state: Value =
                serde_json::from_slice(&views::matrix_bytes(&s, now, s.settings.window_micros, stat))
                    .unwrap_or_default();
            let from_snapshot: Value = serde_json::from_slice(&snap.matrix_json(stat)).unwrap_or_default();
            assert_eq!(from_snapshot, from_state, "{stat:?}");
            assert!(from_state["cells"].as_array().is_some_and(|c| c.len() == 3));
        }
        assert_eq!(snap.coverage(), &views::coverage(&s));
        // No neighbour limit: each should be checked by both others, and is by one.
        assert_eq!(snap.under_covered_nodes(), 3, "{:?}", snap.coverage());
        assert_eq!(snap.alive(), &views::alive(&s, now));
        let detail = snap.node("a").unwrap_or_default();
        assert_eq!(detail["outgoing"].as_array().map(Vec::len), Some(2));
        assert_eq!(detail["incoming"].as_array().map(Vec::len), Some(1));
        assert_eq!(detail["checks"][0]["dst"], "api_server_direct");
        assert!(snap.node("nobody").is_none());
        let targeted: Vec<bool> = snap.snapshot_cells().iter().map(|c| c.targeted).collect();
        assert_eq!(targeted, [true, true, true]);
    }

    #[test]
    fn a_snapshot_cell_is_compact() {
        // Two snapshots of 100,000 cells live at once while the next is taken: a cell's bytes
        // count twice over in the aggregator's memory (views were 224 bytes, snapshot cells 280).
        assert!(size_of::<SnapshotCell>() <= 136, "{}", size_of::<SnapshotCell>());
    }

    #[test]
    fn the_matrix_is_rendered_once_per_snapshot_and_statistic() {
        let snap = Snapshot::take(&state(), 2_000_000);
        let first = snap.matrix_json(Stat::P99);
        let again = snap.matrix_json(Stat::P99);
        assert_eq!(first.as_ptr(), again.as_ptr(), "shared, not rendered again");
        let rendered = snap.matrix_rendered(Stat::P99, false).map(|d| d.as_ptr());
        assert_eq!(rendered, Some(first.as_ptr()), "found without rendering");
        assert!(snap.matrix_rendered(Stat::P99, true).is_none(), "not gzipped until asked");
        assert_ne!(first, snap.matrix_json(Stat::ErrorRatio));
        let gz = snap.matrix_gzip(Stat::P99);
        assert_eq!(gz.as_ptr(), snap.matrix_gzip(Stat::P99).as_ptr(), "gzipped once too");
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain).unwrap();
        assert_eq!(plain, first.to_vec());
    }

    #[test]
    fn gzip_asked_first_is_written_without_a_plain_copy() {
        let snap = Snapshot::take(&state(), 2_000_000);
        let gz = snap.matrix_gzip(Stat::P90);
        assert!(snap.rendered[stat_index(Stat::P90)].get().is_none(), "no plain document kept");
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain).unwrap();
        assert_eq!(plain, snap.matrix_json(Stat::P90).to_vec(), "the same document either way");
    }

    #[test]
    fn a_costly_snapshot_lives_longer_up_to_a_cap() {
        let tick = 1_000_000;
        let snap = Snapshot::take(&state(), 2_000_000);
        // Three cells cost microseconds: one tick.
        assert_eq!(snap.lifetime_micros(tick), tick);
        // 300 ms of taking and rendering at a 5 % share: six seconds.
        snap.cost_micros.store(300_000, Ordering::Relaxed);
        assert_eq!(snap.lifetime_micros(tick), 6_000_000);
        // Renders add to the cost.
        let before = snap.cost_micros.load(Ordering::Relaxed);
        snap.matrix_gzip(Stat::P99);
        assert!(snap.cost_micros.load(Ordering::Relaxed) > before);
        // A render slowed down by a stalled machine never freezes the answers for long.
        snap.cost_micros.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(snap.lifetime_micros(tick), MAX_SNAPSHOT_LIFETIME_TICKS * tick);
    }
}
