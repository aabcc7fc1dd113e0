//! Where a round's neighbours come from: the agent's own watches (local discovery, upstream's
//! way) or the list the aggregator pushes down the stream. Pure: the discovery task feeds in
//! what the streams deliver and the time, and asks whether local watches should run.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kubenurse_proto::v1::Targets;
use kubenurse_proto::MAX_TARGETS;

use crate::ring::{node_hash, Neighbour};

/// `KUBENURSE_DISCOVERY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryMode {
    /// The aggregator's targets while a stream delivers them; local watches after it has been
    /// unreachable for the fallback time (plus a random share of it).
    Auto,
    /// Upstream's behaviour: watch Pods and Nodes, never ask the aggregator.
    Local,
    /// Only the aggregator's targets; the last list is kept while it is unreachable.
    Aggregator,
}

impl DiscoveryMode {
    /// Parses a `KUBENURSE_DISCOVERY` value.
    pub fn parse(v: &str) -> Result<Self, String> {
        match v {
            "auto" => Ok(Self::Auto),
            "local" => Ok(Self::Local),
            "aggregator" => Ok(Self::Aggregator),
            _ => Err("expected auto, local or aggregator".into()),
        }
    }

    /// Whether the agent asks the aggregator for its targets.
    pub fn wants_targets(self) -> bool {
        self != Self::Local
    }
}

/// A pushed list, checked and converted: what a round uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedList {
    /// The neighbours, nearest first (as `/alive` shows them).
    pub neighbours: Vec<Neighbour>,
    /// Pods whose agents check this one.
    pub checked_by: BTreeSet<String>,
    /// The own pod's IP, host IP and zone, as the aggregator sees them.
    pub own: (String, String, String),
    /// The aggregator's `neighbourhood_state`.
    pub state: String,
}

/// Why a pushed list was not used (the previous one stays).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetsError {
    /// More targets or origins than any neighbour limit in use.
    #[error("more than {MAX_TARGETS} targets or origins")]
    TooMany,
    /// A node or pod name that is not a Kubernetes name.
    #[error("invalid name {0:?}")]
    BadName(String),
    /// A pod IP that is not an IP address (path checks go to IPs only).
    #[error("pod {pod}: pod IP {ip:?} is not an IP address")]
    BadAddress {
        /// The pod.
        pod: String,
        /// What it claimed.
        ip: String,
    },
}

impl TargetsError {
    /// Every `reason` label, created at zero.
    pub const REASONS: [&'static str; 3] = ["too_many", "bad_name", "bad_address"];

    /// The `reason` label of `kubenurse_aggregator_targets_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooMany => Self::REASONS[0],
            Self::BadName(_) => Self::REASONS[1],
            Self::BadAddress { .. } => Self::REASONS[2],
        }
    }
}

/// A DNS-1123 subdomain (node and pod names).
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !n.starts_with(['-', '.'])
        && !n.ends_with(['-', '.'])
}

impl PushedList {
    /// Checks a `Targets` message; keeps at most `limit` targets (0: all) of the agent's own
    /// limit, whatever the aggregator was configured with.
    pub fn from_wire(t: Targets, limit: usize) -> Result<Self, TargetsError> {
        if t.targets.len() > MAX_TARGETS || t.checked_by.len() > MAX_TARGETS {
            return Err(TargetsError::TooMany);
        }
        let mut neighbours = Vec::with_capacity(t.targets.len());
        for target in t.targets {
            for name in [&target.node, &target.pod] {
                if !valid_name(name) {
                    return Err(TargetsError::BadName(name.chars().take(64).collect()));
                }
            }
            if target.pod_ip.parse::<IpAddr>().is_err() {
                return Err(TargetsError::BadAddress { pod: target.pod, ip: target.pod_ip.chars().take(64).collect() });
            }
            neighbours.push(Neighbour {
                node_hash: node_hash(&target.node),
                pod_name: target.pod,
                pod_ip: target.pod_ip,
                host_ip: target.host_ip.chars().take(64).collect(),
                node_name: target.node,
            });
        }
        if limit > 0 {
            neighbours.truncate(limit);
        }
        let mut checked_by = BTreeSet::new();
        for pod in t.checked_by {
            if !valid_name(&pod) {
                return Err(TargetsError::BadName(pod.chars().take(64).collect()));
            }
            checked_by.insert(pod);
        }
        let own = t.own.unwrap_or_default();
        let bounded = |s: String| s.chars().take(64).collect::<String>();
        Ok(Self {
            neighbours,
            checked_by,
            own: (bounded(own.pod_ip), bounded(own.host_ip), bounded(own.zone)),
            state: t.neighbourhood_state.chars().take(512).collect(),
        })
    }
}

/// What the streams have delivered and when the aggregator was last reachable.
#[derive(Debug)]
pub struct Source {
    mode: DiscoveryMode,
    fallback_after: Duration,
    /// Replicas whose stream is up and has sent targets.
    live: HashMap<SocketAddr, Instant>,
    last: Option<PushedList>,
    /// Since when no stream delivers targets, and when local watches start (auto).
    outage: Option<(Instant, Instant)>,
}

impl Source {
    /// Nothing received yet at `now`: in auto mode local watches start at
    /// `now + fallback_after × (1 + share)`, `share` in [0, 1) drawn by the caller.
    pub fn new(mode: DiscoveryMode, fallback_after: Duration, now: Instant, share: f64) -> Self {
        let mut s = Self { mode, fallback_after, live: HashMap::new(), last: None, outage: None };
        s.start_outage(now, share);
        s
    }

    fn start_outage(&mut self, now: Instant, share: f64) {
        let spread = self.fallback_after.mul_f64(share.clamp(0.0, 1.0));
        self.outage = Some((now, now + self.fallback_after + spread));
    }

    /// The mode.
    pub fn mode(&self) -> DiscoveryMode {
        self.mode
    }

    /// Replica `from` sent a list.
    pub fn received(&mut self, from: SocketAddr, list: PushedList, now: Instant) {
        self.live.insert(from, now);
        self.last = Some(list);
        self.outage = None;
    }

    /// Replica `from`'s stream ended; `share` in [0, 1) spreads the agents' fallbacks.
    pub fn lost(&mut self, from: SocketAddr, now: Instant, share: f64) {
        if self.live.remove(&from).is_some() && self.live.is_empty() {
            self.start_outage(now, share);
        }
    }

    /// Whether a stream delivers targets now.
    pub fn is_live(&self) -> bool {
        !self.live.is_empty()
    }

    /// The latest list, if any was received.
    pub fn last(&self) -> Option<&PushedList> {
        self.last.as_ref()
    }

    /// Since when no stream has delivered targets, if that is so.
    pub fn outage_since(&self) -> Option<Instant> {
        self.outage.map(|(since, _)| since)
    }

    /// Whether local watches should run at `now`.
    pub fn wants_local(&self, now: Instant) -> bool {
        match self.mode {
            DiscoveryMode::Local => true,
            DiscoveryMode::Aggregator => false,
            DiscoveryMode::Auto => self.outage.is_some_and(|(_, at)| now >= at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubenurse_proto::v1::Target;

    fn target(node: &str, ip: &str) -> Target {
        Target { node: node.into(), pod: format!("kubenurse-{node}"), pod_ip: ip.into(), ..Target::default() }
    }

    fn list(nodes: &[&str]) -> PushedList {
        let t = Targets { targets: nodes.iter().map(|n| target(n, "10.0.0.1")).collect(), ..Targets::default() };
        PushedList::from_wire(t, 0).unwrap()
    }

    #[test]
    fn checks_what_it_is_sent() {
        let ok =
            Targets { targets: vec![target("node-a", "10.0.0.1"), target("node-b", "fd00::1")], ..Targets::default() };
        let got = PushedList::from_wire(ok.clone(), 1).unwrap();
        assert_eq!(got.neighbours.len(), 1, "truncated to the agent's own limit");
        assert_eq!(got.neighbours[0].node_hash, node_hash("node-a"));
        for (bad, why) in [
            (target("Node_A", "10.0.0.1"), "bad node name"),
            (target("node-a", "example.com"), "host name instead of an IP"),
            (target("node-a", ""), "no IP"),
        ] {
            let t = Targets { targets: vec![bad], ..Targets::default() };
            assert!(PushedList::from_wire(t, 0).is_err(), "{why}");
        }
        let many = Targets { targets: vec![target("node-a", "10.0.0.1"); MAX_TARGETS + 1], ..Targets::default() };
        assert_eq!(PushedList::from_wire(many, 0), Err(TargetsError::TooMany));
        let bad_origin = Targets { checked_by: vec!["-x".into()], ..ok };
        assert_eq!(PushedList::from_wire(bad_origin, 0).map_err(|e| e.reason()), Err("bad_name"));
        let bad_ip = Targets { targets: vec![target("node-a", "10.0.0.300")], ..Targets::default() };
        assert_eq!(PushedList::from_wire(bad_ip, 0).map_err(|e| e.reason()), Err("bad_address"));
    }

    #[test]
    fn auto_falls_back_after_the_window_and_its_share_and_returns() {
        let t0 = Instant::now();
        let after = Duration::from_secs(60);
        let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.2:1".parse().unwrap());
        let mut s = Source::new(DiscoveryMode::Auto, after, t0, 0.5);
        assert!(!s.wants_local(t0 + Duration::from_secs(89)));
        assert!(s.wants_local(t0 + Duration::from_secs(90)), "60 s + half of 60 s");
        s.received(a, list(&["node-x"]), t0 + Duration::from_secs(91));
        s.received(b, list(&["node-y"]), t0 + Duration::from_secs(92));
        assert!(!s.wants_local(t0 + Duration::from_secs(93)), "targets again: local watches stop");
        assert_eq!(s.last().unwrap().neighbours[0].node_name, "node-y", "either replica's list");
        s.lost(a, t0 + Duration::from_secs(100), 0.0);
        assert!(s.is_live() && !s.wants_local(t0 + Duration::from_secs(1000)), "one replica still delivers");
        s.lost(b, t0 + Duration::from_secs(100), 0.0);
        assert!(!s.wants_local(t0 + Duration::from_secs(159)));
        assert!(s.wants_local(t0 + Duration::from_secs(160)));
        assert_eq!(s.outage_since(), Some(t0 + Duration::from_secs(100)));
        assert!(s.last().is_some(), "the last list is kept");
        // A replica that never sent targets ending changes nothing.
        s.lost(a, t0 + Duration::from_secs(200), 0.0);
        assert_eq!(s.outage_since(), Some(t0 + Duration::from_secs(100)));
    }

    #[test]
    fn fixed_modes_never_switch() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3600);
        assert!(Source::new(DiscoveryMode::Local, Duration::from_secs(60), t0, 0.0).wants_local(t0));
        assert!(!Source::new(DiscoveryMode::Aggregator, Duration::from_secs(60), t0, 0.0).wants_local(later));
        assert_eq!(DiscoveryMode::parse("aggregator"), Ok(DiscoveryMode::Aggregator));
        assert!(DiscoveryMode::parse("Auto").is_err());
    }
}
