//! What the round loop and the shutdown sequence publish and the HTTP endpoints read.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::checks::RoundResult;
use crate::discovery::Discovery;
use crate::incoming::IncomingChecks;
use crate::metrics::Metrics;
use crate::udp::book::LinkReport;

/// What the endpoints read; written by the round loop and the shutdown sequence.
pub struct AgentState {
    /// The agent's metrics.
    pub metrics: Arc<Metrics>,
    /// Origins that checked us.
    pub incoming: IncomingChecks,
    /// The last complete round; `None` until the first one ends.
    pub last_round: RwLock<Option<Arc<RoundResult>>>,
    /// Set on SIGTERM: `/ready` answers 503 from then on.
    pub shutting_down: AtomicBool,
    /// Discovery, when the neighbourhood check is on (for the own node's schedulability).
    pub discovery: Option<Discovery>,
    /// Shown in `/alive` as `hostname`.
    pub hostname: String,
}

impl AgentState {
    /// The last complete round.
    pub fn last_round(&self) -> Option<Arc<RoundResult>> {
        self.last_round.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes a complete round. Its UDP probes end later ([`AgentState::publish_udp`]);
    /// until then it shows the previous round's, of the neighbours it still has, so `/alive`
    /// always has each neighbour's latest UDP result.
    pub fn publish(&self, mut round: RoundResult) {
        let mut last = self.last_round.write().unwrap_or_else(|p| p.into_inner());
        if round.udp.is_empty() {
            if let Some(previous) = last.as_ref().filter(|p| !p.udp.is_empty()) {
                let still: HashSet<&str> = round.neighbourhood.iter().map(|n| n.node_name.as_str()).collect();
                round.udp = previous.udp.iter().filter(|r| still.contains(r.node.as_str())).cloned().collect();
            }
        }
        *last = Some(Arc::new(round));
    }

    /// Adds the UDP probes of the round that started at `started_at`, which end after its
    /// HTTP checks; dropped if another round was published meanwhile.
    pub fn publish_udp(&self, started_at: SystemTime, udp: Vec<LinkReport>) {
        let mut last = self.last_round.write().unwrap_or_else(|p| p.into_inner());
        if let Some(round) = last.as_mut().filter(|r| r.started_at == started_at) {
            Arc::make_mut(round).udp = udp;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Neighbour;
    use std::time::Duration;

    fn round(at: u64, neighbours: &[&str]) -> RoundResult {
        RoundResult {
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            took: Duration::ZERO,
            values: Default::default(),
            neighbourhood_state: "ok".into(),
            neighbourhood: neighbours
                .iter()
                .map(|n| Neighbour {
                    pod_name: format!("kubenurse-{n}"),
                    pod_ip: "10.0.0.1".into(),
                    host_ip: "10.0.1.1".into(),
                    node_name: n.to_string(),
                    node_hash: 0,
                })
                .collect(),
            outcomes: Vec::new(),
            udp: Vec::new(),
        }
    }

    fn report(node: &str, received: u32) -> LinkReport {
        LinkReport { node: node.into(), sent: 10, received, duplicated: 0, reordered: 0, rtts: Vec::new() }
    }

    fn udp_nodes(state: &AgentState) -> Vec<(String, u32)> {
        state.last_round().map(|r| r.udp.iter().map(|u| (u.node.clone(), u.received)).collect()).unwrap_or_default()
    }

    #[test]
    fn udp_results_join_their_round_and_stay_until_the_next_ones() {
        let state = AgentState {
            metrics: Arc::new(Metrics::new(crate::config::DEFAULT_BUCKETS).unwrap()),
            incoming: IncomingChecks::default(),
            last_round: Default::default(),
            shutting_down: Default::default(),
            discovery: None,
            hostname: "kubenurse-a".into(),
        };
        state.publish(round(1, &["b", "c"]));
        assert!(udp_nodes(&state).is_empty());
        state.publish_udp(SystemTime::UNIX_EPOCH + Duration::from_secs(1), vec![report("b", 10), report("c", 7)]);
        assert_eq!(udp_nodes(&state), [("b".into(), 10), ("c".into(), 7)]);
        // The next round, before its probes end: the last UDP results of the neighbours it
        // still has; c left.
        state.publish(round(2, &["b", "d"]));
        assert_eq!(udp_nodes(&state), [("b".into(), 10)]);
        // A late report of an older round changes nothing; this round's replace the carried.
        state.publish_udp(SystemTime::UNIX_EPOCH + Duration::from_secs(1), vec![report("b", 0)]);
        assert_eq!(udp_nodes(&state), [("b".into(), 10)]);
        state.publish_udp(SystemTime::UNIX_EPOCH + Duration::from_secs(2), vec![report("b", 9), report("d", 10)]);
        assert_eq!(udp_nodes(&state), [("b".into(), 9), ("d".into(), 10)]);
    }
}
