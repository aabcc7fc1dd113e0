//! Which Nodes carry the `KubenurseNetworkProblem` condition (pure, time passed in): the node,
//! source and destination suspects, held for a minimum time before they clear, and none at all
//! when more nodes are suspected than the share cap allows (then it is not the nodes). The
//! planner holds only what was written: the writer confirms each change it made.

use std::collections::BTreeMap;

use crate::suspects::{Cause, Kind, Suspect};

/// The Node condition type this writes.
pub const CONDITION_TYPE: &str = "KubenurseNetworkProblem";
/// Reason of a condition set back to False because the suspect cleared.
pub const REASON_CLEARED: &str = "NoSuspect";
/// Reason of a condition set back to False because too many nodes are suspected at once.
pub const REASON_TOO_MANY: &str = "TooManyNodesSuspected";

/// The rules of marking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Most nodes marked at once, as a share of the nodes known (at least one node).
    pub max_share: f64,
    /// A mark stays at least this long before it clears, µs.
    pub min_hold_micros: i64,
}

impl Policy {
    /// Most nodes marked at once among `nodes`.
    pub fn cap(&self, nodes: usize) -> usize {
        ((self.max_share * nodes as f64).floor() as usize).max(1)
    }
}

/// A condition that is True on a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// `reason` of the condition: kind and cause, e.g. `DestinationErrors`.
    pub reason: String,
    /// `message`: the evidence in one line.
    pub message: String,
    /// When it was set (unix µs).
    pub since: i64,
}

/// One write the planner asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Set the condition True (or change its reason and message).
    Mark {
        /// The node.
        node: String,
        /// Condition reason.
        reason: String,
        /// Condition message.
        message: String,
    },
    /// Set the condition False.
    Clear {
        /// The node.
        node: String,
        /// Condition reason ([`REASON_CLEARED`] or [`REASON_TOO_MANY`]).
        reason: String,
        /// Condition message.
        message: String,
    },
    /// More nodes are suspected than the cap: an event says so, nothing is marked.
    OverCap {
        /// Nodes suspected.
        suspected: usize,
        /// The cap.
        cap: usize,
        /// Nodes known.
        nodes: usize,
    },
}

/// The marks as written, and whether the last plan was over the cap.
#[derive(Debug, Clone, Default)]
pub struct Planner {
    marked: BTreeMap<String, Mark>,
    over_cap: bool,
}

/// `DestinationErrors` from `destination` and `errors`: the condition's reason.
fn pascal(kind: Kind, cause: Cause) -> String {
    let capital = |word: &str| {
        let mut chars = word.chars();
        chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
    };
    capital(kind.as_str()) + &capital(cause.as_str())
}

/// The condition message of a suspect: what is wrong, and the cells that show it.
pub fn message(s: &Suspect) -> String {
    let node = s.node.as_deref().unwrap_or("?");
    let what = match (s.kind, s.cause) {
        (_, Cause::Local) => format!("checks from {node} fail inside the node itself"),
        (Kind::Source, Cause::Errors) => format!("checks from {node} to its neighbours fail"),
        (Kind::Destination, Cause::Errors) => format!("checks from its neighbours into {node} fail"),
        (_, Cause::Errors) => format!("checks from and into {node} fail"),
        (Kind::Source, Cause::Latency) => format!("checks from {node} to its neighbours are slow"),
        (Kind::Destination, Cause::Latency) => format!("checks from its neighbours into {node} are slow"),
        (_, Cause::Latency) => format!("checks from and into {node} are slow"),
        (Kind::Source, Cause::Loss) => format!("UDP packets from {node} to its neighbours are lost"),
        (Kind::Destination, Cause::Loss) => format!("UDP packets from its neighbours into {node} are lost"),
        (_, Cause::Loss) => format!("UDP packets from and into {node} are lost"),
    };
    let e = &s.evidence;
    let examples = e.examples.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    format!("{what}: {} of {} cells bad ({:.0} %), e.g. {examples} (kubenurse)", e.bad_cells, e.cells, e.ratio * 100.0)
}

impl Planner {
    /// Nodes marked now (as written).
    pub fn marked(&self) -> &BTreeMap<String, Mark> {
        &self.marked
    }

    /// Takes over marks found on the Nodes (a replica that becomes the writer adopts what the
    /// previous one wrote, so it can clear them).
    pub fn adopt(&mut self, node: String, mark: Mark) {
        self.marked.insert(node, mark);
    }

    /// What to write for `suspects` among `nodes` known nodes at `now`.
    pub fn plan(&mut self, suspects: &[Suspect], nodes: usize, now: i64, policy: &Policy) -> Vec<Change> {
        // Highest score first (the suspects' order): a node's strongest suspect names it.
        let mut wanted: BTreeMap<&str, &Suspect> = BTreeMap::new();
        for s in suspects {
            if matches!(s.kind, Kind::Source | Kind::Destination | Kind::Node) {
                if let Some(node) = s.node.as_deref() {
                    wanted.entry(node).or_insert(s);
                }
            }
        }
        let cap = policy.cap(nodes);
        let mut changes = Vec::new();
        if wanted.len() > cap {
            if !self.over_cap {
                changes.push(Change::OverCap { suspected: wanted.len(), cap, nodes });
                self.over_cap = true;
            }
            for node in self.marked.keys() {
                changes.push(Change::Clear {
                    node: node.clone(),
                    reason: REASON_TOO_MANY.into(),
                    message: format!(
                        "{} of {nodes} nodes are suspected at once, more than the cap of {cap}: not these nodes (kubenurse)",
                        wanted.len()
                    ),
                });
            }
            return changes;
        }
        self.over_cap = false;
        for (node, s) in &wanted {
            let (reason, message) = (pascal(s.kind, s.cause), message(s));
            let same = self.marked.get(*node).is_some_and(|m| m.reason == reason);
            if !same {
                changes.push(Change::Mark { node: node.to_string(), reason, message });
            }
        }
        for (node, mark) in &self.marked {
            if !wanted.contains_key(node.as_str()) && now - mark.since >= policy.min_hold_micros {
                changes.push(Change::Clear {
                    node: node.clone(),
                    reason: REASON_CLEARED.into(),
                    message: "kubenurse no longer suspects this node's network".into(),
                });
            }
        }
        changes
    }

    /// Records that `change` was written at `now`.
    pub fn applied(&mut self, change: &Change, now: i64) {
        match change {
            Change::Mark { node, reason, message } => {
                let since = self.marked.get(node).map_or(now, |m| m.since);
                self.marked.insert(node.clone(), Mark { reason: reason.clone(), message: message.clone(), since });
            }
            Change::Clear { node, .. } => {
                self.marked.remove(node);
            }
            Change::OverCap { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suspects::Evidence;

    const POLICY: Policy = Policy { max_share: 0.1, min_hold_micros: 60_000_000 };

    fn suspect(kind: Kind, node: Option<&str>, zone: Option<&str>, cause: Cause) -> Suspect {
        Suspect {
            kind,
            node: node.map(String::from),
            zone: zone.map(String::from),
            cause,
            score: 1.0,
            evidence: Evidence { bad_cells: 4, cells: 4, ratio: 1.0, examples: vec!["a->b".into()], note: None },
        }
    }

    /// Plans and applies everything, as a writer whose writes all succeed.
    fn step(p: &mut Planner, suspects: &[Suspect], nodes: usize, now: i64) -> Vec<Change> {
        let changes = p.plan(suspects, nodes, now, &POLICY);
        for c in &changes {
            p.applied(c, now);
        }
        changes
    }

    #[test]
    fn node_suspects_mark_and_clear_after_the_hold() {
        let mut p = Planner::default();
        let dest = suspect(Kind::Destination, Some("n5"), None, Cause::Errors);
        let changes = step(&mut p, std::slice::from_ref(&dest), 20, 0);
        assert_eq!(changes.len(), 1);
        assert!(matches!(&changes[0], Change::Mark { node, reason, message }
            if node == "n5" && reason == "DestinationErrors" && message.starts_with("checks from its neighbours into n5 fail: 4 of 4 cells bad (100 %)")));
        assert!(step(&mut p, std::slice::from_ref(&dest), 20, 1).is_empty(), "written once");
        // Gone within the hold: kept; after it: cleared.
        assert!(step(&mut p, &[], 20, 59_000_000).is_empty());
        let cleared = step(&mut p, &[], 20, 60_000_000);
        assert!(
            matches!(&cleared[..], [Change::Clear { node, reason, .. }] if node == "n5" && reason == REASON_CLEARED)
        );
        assert!(p.marked().is_empty());
    }

    #[test]
    fn zones_and_the_cluster_mark_no_node_and_a_new_cause_rewrites() {
        let mut p = Planner::default();
        let zone = suspect(Kind::Zone, None, Some("z1"), Cause::Errors);
        let cluster = suspect(Kind::Cluster, None, None, Cause::Latency);
        assert!(step(&mut p, &[zone, cluster], 20, 0).is_empty());
        step(&mut p, &[suspect(Kind::Source, Some("n1"), None, Cause::Latency)], 20, 0);
        let now_errors = step(&mut p, &[suspect(Kind::Node, Some("n1"), None, Cause::Errors)], 20, 1);
        assert!(matches!(&now_errors[..], [Change::Mark { reason, .. }] if reason == "NodeErrors"));
        assert_eq!(p.marked()["n1"].since, 0, "still marked since the first");
    }

    #[test]
    fn over_the_share_cap_nothing_is_marked_and_one_event_says_so() {
        let mut p = Planner::default();
        step(&mut p, &[suspect(Kind::Destination, Some("n1"), None, Cause::Errors)], 20, 0);
        // A partitioned zone seen as 4 destinations of 20 nodes: cap 2.
        let many: Vec<Suspect> =
            (1..=4).map(|i| suspect(Kind::Destination, Some(&format!("n{i}")), None, Cause::Errors)).collect();
        let changes = step(&mut p, &many, 20, 1);
        assert!(matches!(changes[0], Change::OverCap { suspected: 4, cap: 2, nodes: 20 }), "{changes:?}");
        assert!(matches!(&changes[1], Change::Clear { node, reason, .. } if node == "n1" && reason == REASON_TOO_MANY));
        assert!(p.marked().is_empty());
        assert!(step(&mut p, &many, 20, 2).is_empty(), "said once while it lasts");
        // Small clusters can still mark one node.
        assert_eq!(POLICY.cap(5), 1);
    }

    #[test]
    fn a_failed_write_is_planned_again() {
        let mut p = Planner::default();
        let dest = [suspect(Kind::Destination, Some("n5"), None, Cause::Errors)];
        assert_eq!(p.plan(&dest, 20, 0, &POLICY).len(), 1);
        assert_eq!(p.plan(&dest, 20, 1, &POLICY).len(), 1, "not applied: asked again");
    }
}
