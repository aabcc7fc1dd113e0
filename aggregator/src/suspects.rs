//! Fault localisation over the matrix's current verdicts (pure, no I/O).
//!
//! The rule, applied separately to failing cells (cause `errors`), slow cells (cause `latency`)
//! and lossy cells (cause `loss`: the loss test of `crate::loss` names `--loss-threshold`; a
//! failing cell is counted as failing, not lossy), each cell's verdict already filtered by its
//! hysteresis:
//!
//! 1. **cluster**: at least half of the fresh cells are bad and the bad cells come from at least
//!    half of the nodes, and no zone explains ≥ 90 % of them (rule 2 is tried first): one
//!    cluster-wide suspect, nothing finer.
//! 2. **zone**: a zone whose cells to *every* other zone are mostly bad (≥ 50 %) while its
//!    intra-zone cells are mostly fine: a zone suspect; those cross-zone cells are explained.
//! 3. **source / destination / node**: greedy explanation of the remaining bad cells. A
//!    hypothesis "S sends badly" covers the bad cells of row S, "D receives badly" those of
//!    column D; it is valid when it covers ≥ 2 bad cells and ≥ 50 % of its row or column. The
//!    hypothesis covering most unexplained cells wins, repeatedly. A node that is both a source
//!    and a destination, or a destination whose own agent stream is gone, is a **node** suspect.
//!
//! A lone bad link (one cell) names nobody. Score = bad cells covered × ratio; highest first.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A node as fault localisation sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Zone label, empty if unknown.
    pub zone: String,
    /// Whether the node's agent stream is up.
    pub agent_connected: bool,
}

/// A fresh cell's current verdicts (indices into the node list).
#[derive(Debug, Clone, Copy)]
pub struct CellView {
    /// Source node index.
    pub src: usize,
    /// Destination node index.
    pub dst: usize,
    /// Failing per hysteresis.
    pub failing: bool,
    /// Slow per hysteresis.
    pub slow: bool,
    /// Its last failure lay in the source agent's own node (out of file descriptors, …).
    pub local: bool,
    /// Lossy per hysteresis.
    pub lossy: bool,
}

/// What a suspect is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Its outgoing checks fail.
    Source,
    /// Checks into it fail.
    Destination,
    /// Both.
    Node,
    /// Its cross-zone links fail.
    Zone,
    /// Everything fails.
    Cluster,
}

impl Kind {
    /// Its name: the `kind` of `/api/v1/suspects` and of the suspects metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
            Self::Node => "node",
            Self::Zone => "zone",
            Self::Cluster => "cluster",
        }
    }
}

/// Errors or latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// Failing checks.
    Errors,
    /// Slow checks.
    Latency,
    /// Checks that failed inside the source agent's own node: only ever a source suspect.
    Local,
    /// UDP packets lost.
    Loss,
}

impl Cause {
    /// Every cause.
    pub const ALL: [Cause; 4] = [Self::Errors, Self::Latency, Self::Local, Self::Loss];

    /// Its name: the `cause` of `/api/v1/suspects` and of the suspects metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Errors => "errors",
            Self::Latency => "latency",
            Self::Local => "local",
            Self::Loss => "loss",
        }
    }
}

/// Why a suspect was named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Bad cells explained by this suspect.
    pub bad_cells: usize,
    /// Cells looked at (its row, column, or cross-zone cells).
    pub cells: usize,
    /// bad_cells / cells.
    pub ratio: f64,
    /// Up to 20 of the bad cells, as `src->dst`.
    pub examples: Vec<String>,
    /// Extra context, e.g. that the node's agent stream is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A suspect with its evidence (the one-shot `check` reads it back with this type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suspect {
    /// What is suspected.
    pub kind: Kind,
    /// The node, for source/destination/node suspects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The zone, for zone suspects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Errors or latency.
    pub cause: Cause,
    /// Ranking: bad cells covered × ratio.
    pub score: f64,
    /// The cells behind it.
    pub evidence: Evidence,
}

const MAX_EXAMPLES: usize = 20;

/// A cell as (source index, destination index).
type Link = (usize, usize);
/// Bad cells a node explains as a source (row) and as a destination (column).
type Explained = (Option<Vec<Link>>, Option<Vec<Link>>);

fn evidence(nodes: &[NodeView], bad: &[(usize, usize)], total: usize, note: Option<String>) -> Evidence {
    let ratio = if total == 0 { 0.0 } else { bad.len() as f64 / total as f64 };
    Evidence {
        bad_cells: bad.len(),
        cells: total,
        ratio,
        examples: bad
            .iter()
            .take(MAX_EXAMPLES)
            .map(|&(s, d)| format!("{}->{}", nodes[s].name, nodes[d].name))
            .collect(),
        note,
    }
}

/// Names the suspects for every cause, highest score first.
pub fn find_suspects(nodes: &[NodeView], cells: &[CellView]) -> Vec<Suspect> {
    // A failure the source reports as its own says nothing about the destination or a zone.
    let mut out = localise(nodes, cells, Cause::Errors, |c| c.failing && !c.local);
    out.extend(local_sources(nodes, cells));
    out.extend(localise(nodes, cells, Cause::Latency, |c| c.slow && !c.failing));
    out.extend(localise(nodes, cells, Cause::Loss, |c| c.lossy && !c.failing));
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.kind.cmp(&b.kind)));
    out
}

/// Sources whose failing cells failed locally: the agent's node is the suspect, alone.
fn local_sources(nodes: &[NodeView], cells: &[CellView]) -> Vec<Suspect> {
    let mut by_source: BTreeMap<usize, (Vec<(usize, usize)>, usize)> = BTreeMap::new();
    for c in cells {
        let entry = by_source.entry(c.src).or_default();
        entry.1 += 1;
        if c.failing && c.local {
            entry.0.push((c.src, c.dst));
        }
    }
    let mut out = Vec::new();
    for (src, (bad, total)) in by_source {
        if bad.is_empty() {
            continue;
        }
        let note = Some("the checks failed inside the source's own node (its agent says so)".into());
        let ev = evidence(nodes, &bad, total, note);
        out.push(Suspect {
            kind: Kind::Source,
            node: Some(nodes[src].name.clone()),
            zone: None,
            cause: Cause::Local,
            score: ev.bad_cells as f64 * ev.ratio,
            evidence: ev,
        });
    }
    out
}

/// Zones whose cells to every other zone are mostly bad while their own are mostly fine, and
/// the cross-zone bad cells they explain.
fn zones(
    nodes: &[NodeView],
    cells: &[CellView],
    cause: Cause,
    is_bad: &impl Fn(&CellView) -> bool,
) -> (Vec<Suspect>, BTreeSet<Link>) {
    let mut found = Vec::new();
    let mut explained: BTreeSet<Link> = BTreeSet::new();
    // Zones as numbers (in name order, the empty one included: it can be the other side), so
    // the passes below over every cell compare integers, not strings (zones × causes × 100,000
    // cells of string compares were a tenth of the owner's CPU).
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    for n in nodes {
        ids.entry(n.zone.as_str()).or_default();
    }
    for (i, id) in ids.values_mut().enumerate() {
        *id = i;
    }
    let zone_of: Vec<usize> = nodes.iter().map(|n| ids[n.zone.as_str()]).collect();
    let zones: Vec<(&str, usize)> = ids.iter().filter(|(z, _)| !z.is_empty()).map(|(z, i)| (*z, *i)).collect();
    if zones.len() >= 2 {
        for &(zone, id) in &zones {
            // A zone of one node is that node: its node, source or destination suspect says so.
            if zone_of.iter().filter(|&&z| z == id).count() < 2 {
                continue;
            }
            let in_zone = |i: usize| zone_of[i] == id;
            // Per other zone: (cross cells, bad ones).
            let mut per_other = vec![(0usize, 0usize); ids.len()];
            let (mut intra, mut intra_bad) = (0, 0);
            let mut cross_bad = Vec::new();
            let mut cross_total = 0;
            for c in cells {
                match (in_zone(c.src), in_zone(c.dst)) {
                    (true, true) => {
                        intra += 1;
                        intra_bad += usize::from(is_bad(c));
                    }
                    (false, false) => {}
                    (a, _) => {
                        let other = if a { zone_of[c.dst] } else { zone_of[c.src] };
                        let e = &mut per_other[other];
                        e.0 += 1;
                        cross_total += 1;
                        if is_bad(c) {
                            e.1 += 1;
                            cross_bad.push((c.src, c.dst));
                        }
                    }
                }
            }
            let others: Vec<&(usize, usize)> = per_other.iter().filter(|(t, _)| *t > 0).collect();
            let all_others_bad = others.len() + 1 == zones.len() && others.iter().all(|&&(t, b)| b * 2 >= t);
            if all_others_bad && cross_bad.len() >= 2 && intra_bad * 2 < intra.max(1) {
                explained.extend(cross_bad.iter().copied());
                let ev = evidence(nodes, &cross_bad, cross_total, None);
                found.push(Suspect {
                    kind: Kind::Zone,
                    node: None,
                    zone: Some(zone.to_string()),
                    cause,
                    score: ev.bad_cells as f64 * ev.ratio,
                    evidence: ev,
                });
            }
        }
    }
    (found, explained)
}

fn localise(nodes: &[NodeView], cells: &[CellView], cause: Cause, is_bad: impl Fn(&CellView) -> bool) -> Vec<Suspect> {
    let bad: Vec<(usize, usize)> = cells.iter().filter(|c| is_bad(c)).map(|c| (c.src, c.dst)).collect();
    if bad.is_empty() {
        return Vec::new();
    }
    let mut suspects = Vec::new();

    // 2 before 1: a zone that explains (nearly) every bad cell is the zone, whatever share of
    // all cells its cross-zone ones are (a third of the nodes in a full mesh: up to half).
    let (zone_suspects, mut explained) = zones(nodes, cells, cause, &is_bad);
    let zones_explain = !zone_suspects.is_empty() && explained.len() * 10 >= bad.len() * 9;

    // 1. Cluster-wide.
    let sources: BTreeSet<usize> = bad.iter().map(|&(s, _)| s).collect();
    let checking: BTreeSet<usize> = cells.iter().map(|c| c.src).collect();
    if !zones_explain
        && bad.len() * 2 >= cells.len()
        && sources.len() * 2 >= checking.len().max(1)
        && checking.len() >= 2
    {
        let ev = evidence(nodes, &bad, cells.len(), None);
        suspects.push(Suspect {
            kind: Kind::Cluster,
            node: None,
            zone: None,
            cause,
            score: ev.bad_cells as f64 * ev.ratio,
            evidence: ev,
        });
        return suspects;
    }
    suspects.extend(zone_suspects);

    // 3. Greedy source/destination explanation of what is left.
    let mut row_total = vec![0usize; nodes.len()];
    let mut col_total = vec![0usize; nodes.len()];
    for c in cells {
        row_total[c.src] += 1;
        col_total[c.dst] += 1;
    }
    let mut chosen: BTreeMap<usize, Explained> = BTreeMap::new();
    loop {
        let unexplained: Vec<(usize, usize)> = bad.iter().copied().filter(|c| !explained.contains(c)).collect();
        let mut best: Option<(bool, usize, Vec<Link>)> = None;
        for node in 0..nodes.len() {
            for as_source in [true, false] {
                let already = chosen.get(&node).is_some_and(|c| if as_source { c.0.is_some() } else { c.1.is_some() });
                if already {
                    continue;
                }
                let total = if as_source { row_total[node] } else { col_total[node] };
                let all_bad = bad.iter().filter(|&&(s, d)| if as_source { s == node } else { d == node }).count();
                let covers: Vec<(usize, usize)> = unexplained
                    .iter()
                    .copied()
                    .filter(|&(s, d)| if as_source { s == node } else { d == node })
                    .collect();
                if covers.is_empty() || all_bad < 2 || all_bad * 2 < total {
                    continue;
                }
                if best.as_ref().is_none_or(|b| covers.len() > b.2.len()) {
                    best = Some((as_source, node, covers));
                }
            }
        }
        let Some((as_source, node, covers)) = best else { break };
        explained.extend(covers.iter().copied());
        let entry = chosen.entry(node).or_default();
        let all: Vec<(usize, usize)> =
            bad.iter().copied().filter(|&(s, d)| if as_source { s == node } else { d == node }).collect();
        if as_source {
            entry.0 = Some(all);
        } else {
            entry.1 = Some(all);
        }
    }
    for (node, (out_bad, in_bad)) in chosen {
        let gone = !nodes[node].agent_connected;
        let (kind, cells_bad, total, note) = match (out_bad, in_bad) {
            (Some(o), Some(i)) => {
                let total = row_total[node] + col_total[node];
                (Kind::Node, [o, i].concat(), total, None)
            }
            (None, Some(i)) if gone => {
                (Kind::Node, i, col_total[node], Some("the node's own agent stream is gone".into()))
            }
            (None, Some(i)) => (Kind::Destination, i, col_total[node], None),
            (Some(o), None) => (Kind::Source, o, row_total[node], None),
            (None, None) => continue,
        };
        let ev = evidence(nodes, &cells_bad, total, note);
        suspects.push(Suspect {
            kind,
            node: Some(nodes[node].name.clone()),
            zone: None,
            cause,
            score: ev.bad_cells as f64 * ev.ratio,
            evidence: ev,
        });
    }
    suspects
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` nodes over `zones` zones, each checking its `limit` ring successors (by index).
    fn cluster(n: usize, zones: usize, limit: usize) -> (Vec<NodeView>, Vec<CellView>) {
        let nodes = (0..n)
            .map(|i| NodeView { name: format!("n{i:02}"), zone: format!("z{}", i % zones), agent_connected: true })
            .collect();
        let cells = (0..n)
            .flat_map(|s| {
                (1..=limit).map(move |k| CellView {
                    src: s,
                    dst: (s + k) % n,
                    failing: false,
                    slow: false,
                    local: false,
                    lossy: false,
                })
            })
            .collect();
        (nodes, cells)
    }

    fn only(s: &[Suspect]) -> (Kind, Option<&str>, Option<&str>, Cause) {
        assert_eq!(s.len(), 1, "{s:#?}");
        (s[0].kind, s[0].node.as_deref(), s[0].zone.as_deref(), s[0].cause)
    }

    #[test]
    fn names_are_the_serialised_names() {
        for k in [Kind::Source, Kind::Destination, Kind::Node, Kind::Zone, Kind::Cluster] {
            assert_eq!(serde_json::to_value(k).ok(), Some(serde_json::json!(k.as_str())));
        }
        for c in Cause::ALL {
            assert_eq!(serde_json::to_value(c).ok(), Some(serde_json::json!(c.as_str())));
        }
    }

    #[test]
    fn the_only_node_of_its_zone_refusing_is_that_node_not_its_zone() {
        // 5 nodes over 3 zones, full mesh: z0 = {n00, n03}, z1 = {n01, n04}, z2 = {n02}.
        let (nodes, mut cells) = cluster(5, 3, 4);
        for c in cells.iter_mut().filter(|c| c.dst == 2) {
            c.failing = true;
        }
        assert_eq!(only(&find_suspects(&nodes, &cells)), (Kind::Destination, Some("n02"), None, Cause::Errors));
        // Cut off both ways, it is still the node (a zone of one cannot be told from it).
        for c in cells.iter_mut().filter(|c| c.src == 2) {
            c.failing = true;
        }
        assert_eq!(only(&find_suspects(&nodes, &cells)), (Kind::Node, Some("n02"), None, Cause::Errors));
    }

    #[test]
    fn healthy_matrix_has_no_suspects() {
        let (nodes, cells) = cluster(12, 3, 10);
        assert!(find_suspects(&nodes, &cells).is_empty());
        // One lost link names nobody.
        let (nodes, mut cells) = cluster(12, 3, 10);
        cells[5].failing = true;
        assert!(find_suspects(&nodes, &cells).is_empty());
    }

    #[test]
    fn dead_node_is_a_destination_or_a_node_when_its_stream_is_gone() {
        let (mut nodes, mut cells) = cluster(12, 3, 10);
        for c in cells.iter_mut().filter(|c| c.dst == 4) {
            c.failing = true;
        }
        assert_eq!(only(&find_suspects(&nodes, &cells)), (Kind::Destination, Some("n04"), None, Cause::Errors));
        nodes[4].agent_connected = false;
        cells.retain(|c| c.src != 4);
        let s = find_suspects(&nodes, &cells);
        assert_eq!(only(&s), (Kind::Node, Some("n04"), None, Cause::Errors));
        assert!(s[0].evidence.note.is_some());
    }

    #[test]
    fn broken_outbound_is_a_source() {
        let (nodes, mut cells) = cluster(12, 3, 10);
        for c in cells.iter_mut().filter(|c| c.src == 7) {
            c.failing = true;
        }
        assert_eq!(only(&find_suspects(&nodes, &cells)), (Kind::Source, Some("n07"), None, Cause::Errors));
        // Also in a 3-node cluster, where every node has only two peers.
        let (nodes, mut cells) = cluster(3, 1, 2);
        for c in cells.iter_mut().filter(|c| c.src == 1) {
            c.failing = true;
        }
        assert_eq!(only(&find_suspects(&nodes, &cells)), (Kind::Source, Some("n01"), None, Cause::Errors));
    }

    #[test]
    fn both_directions_is_a_node() {
        let (nodes, mut cells) = cluster(12, 3, 10);
        for c in cells.iter_mut().filter(|c| c.src == 2 || c.dst == 2) {
            c.failing = true;
        }
        let s = find_suspects(&nodes, &cells);
        assert_eq!(only(&s), (Kind::Node, Some("n02"), None, Cause::Errors));
        assert_eq!(s[0].evidence.bad_cells, 20);
    }

    #[test]
    fn slow_link_is_a_latency_suspect() {
        let (nodes, mut cells) = cluster(12, 3, 10);
        for c in cells.iter_mut().filter(|c| c.dst == 9) {
            c.slow = true;
        }
        assert_eq!(only(&find_suspects(&nodes, &cells)), (Kind::Destination, Some("n09"), None, Cause::Latency));
    }

    #[test]
    fn lossy_node_is_a_loss_suspect_and_failing_wins_over_lossy() {
        let (nodes, mut cells) = cluster(12, 3, 10);
        for c in cells.iter_mut().filter(|c| c.dst == 5) {
            c.lossy = true;
        }
        assert_eq!(only(&find_suspects(&nodes, &cells)), (Kind::Destination, Some("n05"), None, Cause::Loss));
        // The same cells failing as well: one suspect, for errors.
        for c in cells.iter_mut().filter(|c| c.dst == 5) {
            c.failing = true;
        }
        assert_eq!(only(&find_suspects(&nodes, &cells)), (Kind::Destination, Some("n05"), None, Cause::Errors));
    }

    #[test]
    fn a_lossy_zone_is_the_zone() {
        let (nodes, mut cells) = cluster(9, 3, 8);
        for c in cells.iter_mut() {
            c.lossy = (nodes[c.src].zone == "z0") != (nodes[c.dst].zone == "z0");
        }
        assert_eq!(only(&find_suspects(&nodes, &cells)), (Kind::Zone, None, Some("z0"), Cause::Loss));
    }

    #[test]
    fn zone_partition_is_a_zone() {
        let (nodes, mut cells) = cluster(12, 3, 10);
        for c in cells.iter_mut() {
            let (zs, zd) = (&nodes[c.src].zone, &nodes[c.dst].zone);
            c.failing = (zs == "z1") != (zd == "z1");
        }
        let s = find_suspects(&nodes, &cells);
        assert_eq!(only(&s), (Kind::Zone, None, Some("z1"), Cause::Errors));
    }

    #[test]
    fn a_partitioned_zone_is_the_zone_at_every_size() {
        // Full mesh, 3 zones of n = 2–5 nodes: the partitioned zone's cross-zone cells are
        // 4n/(9n − 3) of all cells, exactly half at 3 × 3 (where the cluster rule alone fired).
        for per_zone in 2..=5 {
            let n = 3 * per_zone;
            let (nodes, mut cells) = cluster(n, 3, n - 1);
            for c in cells.iter_mut() {
                c.failing = (nodes[c.src].zone == "z2") != (nodes[c.dst].zone == "z2");
            }
            let s = find_suspects(&nodes, &cells);
            assert_eq!(only(&s), (Kind::Zone, None, Some("z2"), Cause::Errors), "3 x {per_zone}");
            // And as latency.
            for c in cells.iter_mut() {
                (c.slow, c.failing) = (c.failing, false);
            }
            assert_eq!(only(&find_suspects(&nodes, &cells)), (Kind::Zone, None, Some("z2"), Cause::Latency));
        }
    }

    #[test]
    fn everything_down_is_the_cluster_at_every_size() {
        for per_zone in 2..=5 {
            let n = 3 * per_zone;
            let (nodes, mut cells) = cluster(n, 3, n - 1);
            for c in cells.iter_mut() {
                c.failing = true;
            }
            assert_eq!(
                only(&find_suspects(&nodes, &cells)),
                (Kind::Cluster, None, None, Cause::Errors),
                "3 x {per_zone}"
            );
        }
    }

    #[test]
    fn everything_down_is_the_cluster() {
        let (nodes, mut cells) = cluster(12, 3, 10);
        for c in cells.iter_mut() {
            c.failing = true;
        }
        assert_eq!(only(&find_suspects(&nodes, &cells)), (Kind::Cluster, None, None, Cause::Errors));
    }

    #[test]
    fn two_faults_ranked_by_evidence() {
        let (nodes, mut cells) = cluster(20, 2, 10);
        for c in cells.iter_mut() {
            if c.dst == 3 {
                c.failing = true;
            }
            if c.src == 11 && c.dst % 2 == 0 {
                c.failing = true;
            }
        }
        let s = find_suspects(&nodes, &cells);
        assert_eq!(s.len(), 2, "{s:#?}");
        assert_eq!((s[0].kind, s[0].node.as_deref()), (Kind::Destination, Some("n03")));
        assert_eq!((s[1].kind, s[1].node.as_deref()), (Kind::Source, Some("n11")));
        assert!(s[0].score > s[1].score);
    }

    #[test]
    fn local_failures_blame_only_their_source() {
        let (nodes, mut cells) = cluster(12, 3, 10);
        // Every agent of one zone out of file descriptors: all their checks fail, locally.
        for c in cells.iter_mut() {
            if nodes[c.src].zone == "z1" {
                c.failing = true;
                c.local = true;
            }
        }
        let s = find_suspects(&nodes, &cells);
        assert!(!s.is_empty());
        for suspect in &s {
            assert_eq!((suspect.kind, suspect.cause), (Kind::Source, Cause::Local), "{s:#?}");
            let node = suspect.node.as_deref().unwrap_or_default();
            assert!(nodes.iter().any(|n| n.name == node && n.zone == "z1"), "{s:#?}");
        }
        assert_eq!(s.len(), nodes.iter().filter(|n| n.zone == "z1").count());
    }
}
