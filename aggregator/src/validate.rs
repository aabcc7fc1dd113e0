//! Checks on what agents send, so a broken or hostile agent is rejected with a counted reason
//! and never grows memory without bound.

pub use kubenurse_proto::kind::is_node_name as valid_node_name;
use std::collections::BTreeMap;

use kubenurse_proto::v1::{CheckResult, Hello, Outcome, ResultBatch, RoundEnd, UdpResult};
use kubenurse_proto::{CheckKind, KindError, MAX_SYN_RETRANSMITS, MAX_UDP_PACKETS, OLDEST_PROTOCOL_REVISION};

/// Longest duration accepted: far above any check timeout.
pub const MAX_DURATION_MICROS: u64 = 10 * 60 * 1_000_000;
/// Most targets one agent may declare, unless `--max-targets` says otherwise (the protocol's).
pub use kubenurse_proto::MAX_TARGETS;
/// Shortest check interval a hello may declare, µs (its cells go stale after 3 intervals).
pub const MIN_INTERVAL_MICROS: u64 = 100_000;
/// Longest check interval a hello may declare, µs.
pub const MAX_INTERVAL_MICROS: u64 = 3_600_000_000;
/// Longest error text kept.
pub const MAX_ERROR_LEN: usize = 512;

/// `text` cut to at most [`MAX_ERROR_LEN`] bytes on a character boundary (an agent's text may
/// be any UTF-8; cutting inside a character would panic).
pub fn bounded_text(text: &str) -> String {
    let mut cut = text.len().min(MAX_ERROR_LEN);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_string()
}

/// Why something from an agent was refused; also the `reason` label of the ingest-error metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Rejection {
    /// The stream did not start with a hello.
    #[error("no_hello")]
    NoHello,
    /// Node or target name not a Kubernetes node name.
    #[error("bad_name")]
    BadName,
    /// Too many targets, a bad interval, or no protocol revision.
    #[error("bad_hello")]
    BadHello,
    /// Check kind missing or unknown, or a name with odd characters.
    #[error("bad_check_type")]
    BadCheckType,
    /// A path result for a node the agent did not declare as a target.
    #[error("unknown_target")]
    UnknownTarget,
    /// Duration beyond `MAX_DURATION_MICROS`.
    #[error("absurd_duration")]
    AbsurdDuration,
    /// Outcome missing.
    #[error("bad_outcome")]
    BadOutcome,
    /// A message with neither a hello nor a batch in it.
    #[error("empty_message")]
    EmptyMessage,
    /// More results in one batch than allowed.
    #[error("batch_too_large")]
    BatchTooLarge,
    /// The task owning the state has stopped (the aggregator is shutting down).
    #[error("state_unavailable")]
    StateUnavailable,
    /// A hello for a new node while `--max-nodes` nodes are known.
    #[error("too_many_nodes")]
    TooManyNodes,
    /// A message over the size limit (answered RESOURCE_EXHAUSTED).
    #[error("message_too_large")]
    MessageTooLarge,
    /// A UDP result whose counts cannot be (more than `MAX_UDP_PACKETS` sent, more received
    /// than sent, not one RTT per reply, an RTT beyond `MAX_DURATION_MICROS`).
    #[error("bad_udp_result")]
    BadUdpResult,
    /// More SYN retransmissions than one connect can have needed.
    #[error("absurd_syn_retransmits")]
    AbsurdSynRetransmits,
}

impl Rejection {
    /// Every reason, so their counters exist (at 0) before the first rejection.
    pub const ALL: [Rejection; 14] = [
        Rejection::NoHello,
        Rejection::BadName,
        Rejection::BadHello,
        Rejection::BadCheckType,
        Rejection::UnknownTarget,
        Rejection::AbsurdDuration,
        Rejection::BadOutcome,
        Rejection::EmptyMessage,
        Rejection::BatchTooLarge,
        Rejection::StateUnavailable,
        Rejection::TooManyNodes,
        Rejection::MessageTooLarge,
        Rejection::BadUdpResult,
        Rejection::AbsurdSynRetransmits,
    ];
}

/// The reason label of a stream that ended on a malformed message or a broken connection.
pub const MALFORMED_OR_BROKEN: &str = "malformed_or_broken";

/// Validates a hello: names, protocol revision, an interval of 100 ms – 1 h, and at most
/// `max_targets` targets (and no more than the neighbour limit it declares, when it has one).
pub fn check_hello(h: &Hello, max_targets: usize) -> Result<(), Rejection> {
    if !valid_node_name(&h.node) {
        return Err(Rejection::BadName);
    }
    if h.protocol < OLDEST_PROTOCOL_REVISION {
        return Err(Rejection::BadHello);
    }
    let over_limit = h.neighbour_limit > 0 && h.targets.len() > h.neighbour_limit as usize;
    if h.targets.len() > max_targets || over_limit {
        return Err(Rejection::BadHello);
    }
    if !(MIN_INTERVAL_MICROS..=MAX_INTERVAL_MICROS).contains(&h.interval_micros) {
        return Err(Rejection::BadHello);
    }
    if !h.targets.iter().all(|t| valid_node_name(t)) {
        return Err(Rejection::BadName);
    }
    if h.pod.len() > 253
        || h.zone.len() > 63
        || h.agent_version.len() > 64
        || h.pod_ip.len() > 64
        || h.host_ip.len() > 64
    {
        return Err(Rejection::BadHello);
    }
    Ok(())
}

/// What the aggregator takes from one valid result, and nothing else: a batch waits in the
/// owner's queue in this form (the wire result's strings and phases are freed on the stream's
/// task, not kept in the queue nor freed by the one task that owns the state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidResult {
    /// What was checked.
    pub kind: CheckKind,
    /// How it ended (never unspecified).
    pub outcome: Outcome,
    /// The check's duration, µs.
    pub duration_micros: u64,
    /// SYN retransmissions its connect needed.
    pub syn_retransmits: u32,
    /// The sender's round.
    pub round: u64,
    /// A failure's text, bounded: the error, or its kind when the agent gave none.
    pub error: Option<String>,
    /// Whether a failure lay in the sender's own node (`local_…` error kind).
    pub local: bool,
}

impl ValidResult {
    /// Whether the check failed.
    pub fn failed(&self) -> bool {
        self.outcome == Outcome::Failed
    }
}

/// The targets an agent declared, sorted once per hello, so finding a result's target takes
/// log2(n) string compares: a scan of the declared list cost up to 1,000 compares a result (an
/// agent checking every neighbour), and at ten targets was 6 % of the aggregator's ingest CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetSet(Vec<String>);

impl TargetSet {
    /// The set of `targets` (duplicates once).
    pub fn new(targets: &[String]) -> Self {
        let mut sorted = targets.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        Self(sorted)
    }

    /// Whether `node` is one of them.
    pub fn contains(&self, node: &str) -> bool {
        self.0.binary_search_by(|t| t.as_str().cmp(node)).is_ok()
    }
}

/// Validates one result against the sender's declared targets; the check kind comes from the
/// typed field, or for revision 1 agents (which lack it) from `check_type`.
pub fn check_result(r: &CheckResult, targets: &TargetSet) -> Result<ValidResult, Rejection> {
    let kind = match &r.check {
        Some(check) => CheckKind::from_wire(check),
        None => CheckKind::from_legacy(&r.check_type, &r.target_node),
    }
    .map_err(|e| match e {
        KindError::Mismatch { .. } | KindError::BadNode(_) => Rejection::UnknownTarget,
        KindError::BadName(_) | KindError::Reserved(_) | KindError::UnknownKind(_) => Rejection::BadCheckType,
    })?;
    if let Some(node) = kind.target_node() {
        if !targets.contains(node) {
            return Err(Rejection::UnknownTarget);
        }
    }
    if r.duration_micros > MAX_DURATION_MICROS {
        return Err(Rejection::AbsurdDuration);
    }
    if r.syn_retransmits > MAX_SYN_RETRANSMITS {
        return Err(Rejection::AbsurdSynRetransmits);
    }
    match Outcome::try_from(r.outcome) {
        Ok(Outcome::Unspecified) | Err(_) => Err(Rejection::BadOutcome),
        Ok(outcome) => {
            let failed = outcome == Outcome::Failed;
            let error = failed.then(|| bounded_text(if r.error.is_empty() { &r.error_kind } else { &r.error }));
            Ok(ValidResult {
                kind,
                outcome,
                duration_micros: r.duration_micros,
                syn_retransmits: r.syn_retransmits,
                round: r.round,
                error,
                local: failed && r.error_kind.starts_with(kubenurse_proto::LOCAL_ERROR_PREFIX),
            })
        }
    }
}

/// Validates one round of UDP packets against the sender's declared targets.
pub fn check_udp(u: &UdpResult, targets: &TargetSet) -> Result<(), Rejection> {
    if !valid_node_name(&u.target_node) {
        return Err(Rejection::BadName);
    }
    if !targets.contains(&u.target_node) {
        return Err(Rejection::UnknownTarget);
    }
    let consistent = u.sent <= MAX_UDP_PACKETS
        && u.received <= u.sent
        && u.rtt_micros.len() == u.received as usize
        && u.duplicated <= MAX_UDP_PACKETS * 10
        && u.reordered <= u.received
        && u.rtt_micros.iter().all(|&r| r <= MAX_DURATION_MICROS);
    if consistent {
        Ok(())
    } else {
        Err(Rejection::BadUdpResult)
    }
}

/// A batch whose results all passed [`check_result`], with its latest round end: what a
/// stream task hands the owner (validation runs on the stream's task, in parallel, not on the
/// one task that owns the state).
#[derive(Debug, Clone, Default)]
pub struct CheckedBatch {
    /// The valid results.
    pub results: Vec<ValidResult>,
    /// The batch's latest round end, if it had any.
    pub round_end: Option<RoundEnd>,
    /// The UDP results that passed [`check_udp`].
    pub udp: Vec<UdpResult>,
}

/// Splits `batch` into its valid results (against the sender's declared `targets`) and the
/// counts of the refused ones, by reason.
pub fn check_batch(batch: ResultBatch, targets: &TargetSet) -> (CheckedBatch, BTreeMap<Rejection, u64>) {
    let mut refused = BTreeMap::new();
    let mut results = Vec::with_capacity(batch.results.len());
    for r in batch.results {
        match check_result(&r, targets) {
            Ok(v) => results.push(v),
            Err(e) => *refused.entry(e).or_default() += 1,
        }
    }
    let mut udp = Vec::with_capacity(batch.udp_results.len());
    for u in batch.udp_results {
        match check_udp(&u, targets) {
            Ok(()) => udp.push(u),
            Err(e) => *refused.entry(e).or_default() += 1,
        }
    }
    let round_end = batch.round_ends.into_iter().max_by_key(|e| e.round);
    (CheckedBatch { results, round_end, udp }, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_cut_on_character_boundaries() {
        assert_eq!(bounded_text("ok"), "ok");
        let euros = "€".repeat(400); // 3 bytes each: byte 512 falls inside a character
        let cut = bounded_text(&euros);
        assert!(cut.len() <= MAX_ERROR_LEN && cut.len() > MAX_ERROR_LEN - 3, "{}", cut.len());
        assert!(cut.chars().all(|c| c == '€'));
    }

    #[test]
    fn names() {
        assert!(valid_node_name("ip-10-0-0-1.eu-west-1.compute.internal"));
        assert!(!valid_node_name("Node_1"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name(&"a".repeat(254)));
    }

    #[test]
    fn hellos_are_bounded() {
        let ok = Hello {
            protocol: kubenurse_proto::PROTOCOL_REVISION,
            node: "a".into(),
            interval_micros: 5_000_000,
            neighbour_limit: 2,
            targets: vec!["b".into(), "c".into()],
            ..Hello::default()
        };
        assert_eq!(check_hello(&ok, MAX_TARGETS), Ok(()));
        let cases = [
            Hello { protocol: 0, ..ok.clone() },
            Hello { interval_micros: 1, ..ok.clone() },
            Hello { interval_micros: MIN_INTERVAL_MICROS - 1, ..ok.clone() },
            Hello { interval_micros: MAX_INTERVAL_MICROS + 1, ..ok.clone() },
            Hello { targets: vec!["b".into(), "c".into(), "d".into()], ..ok.clone() },
        ];
        for h in cases {
            assert_eq!(check_hello(&h, MAX_TARGETS), Err(Rejection::BadHello), "{h:?}");
        }
        assert_eq!(check_hello(&ok, 1), Err(Rejection::BadHello), "--max-targets holds whatever the limit");
        let unlimited = Hello { neighbour_limit: 0, targets: (0..50).map(|i| format!("n{i}")).collect(), ..ok };
        assert_eq!(check_hello(&unlimited, MAX_TARGETS), Ok(()));
    }

    #[test]
    fn a_target_set_finds_exactly_the_declared_targets() {
        let declared: Vec<String> = (0..1000).rev().map(|i| format!("node-{i:04}")).collect();
        let set = TargetSet::new(&[declared.clone(), declared.clone()].concat());
        assert!(declared.iter().all(|t| set.contains(t)), "every declared target, in any order");
        for absent in ["", "node-1000", "node-000", "node-00000", "NODE-0001", "node-0001 "] {
            assert!(!set.contains(absent), "{absent:?}");
        }
        assert_eq!(set, TargetSet::new(&declared), "duplicates count once");
        assert!(!TargetSet::default().contains("node-0001"));
    }

    #[test]
    fn results() {
        let targets = TargetSet::new(&["n2".to_string()]);
        let ok = CheckResult {
            check_type: "path_n2".into(),
            target_node: "n2".into(),
            outcome: Outcome::Ok.into(),
            duration_micros: 300,
            ..Default::default()
        };
        assert!(check_result(&ok, &targets).is_ok());
        let unknown = CheckResult { check_type: "path_n9".into(), target_node: "n9".into(), ..ok.clone() };
        assert_eq!(check_result(&unknown, &targets), Err(Rejection::UnknownTarget));
        let absurd = CheckResult { duration_micros: u64::MAX, ..ok.clone() };
        assert_eq!(check_result(&absurd, &targets), Err(Rejection::AbsurdDuration));
        let no_outcome = CheckResult { outcome: 0, ..ok.clone() };
        assert_eq!(check_result(&no_outcome, &targets), Err(Rejection::BadOutcome));
        let syn = CheckResult { syn_retransmits: MAX_SYN_RETRANSMITS + 1, ..ok.clone() };
        assert_eq!(check_result(&syn, &targets), Err(Rejection::AbsurdSynRetransmits));
        let weird = CheckResult { check_type: "a b".into(), ..ok };
        assert_eq!(check_result(&weird, &targets), Err(Rejection::BadCheckType));
    }

    #[test]
    fn udp_results_must_add_up() {
        let targets = TargetSet::new(&["n2".to_string()]);
        let ok = UdpResult {
            target_node: "n2".into(),
            sent: 10,
            received: 2,
            rtt_micros: vec![300, 400],
            ..Default::default()
        };
        assert_eq!(check_udp(&ok, &targets), Ok(()));
        let cases = [
            (UdpResult { target_node: "n9".into(), ..ok.clone() }, Rejection::UnknownTarget),
            (UdpResult { target_node: "N_2".into(), ..ok.clone() }, Rejection::BadName),
            (UdpResult { sent: MAX_UDP_PACKETS + 1, ..ok.clone() }, Rejection::BadUdpResult),
            (UdpResult { received: 11, ..ok.clone() }, Rejection::BadUdpResult),
            (UdpResult { rtt_micros: vec![300], ..ok.clone() }, Rejection::BadUdpResult),
            (UdpResult { rtt_micros: vec![300, u64::MAX], ..ok.clone() }, Rejection::BadUdpResult),
            (UdpResult { reordered: 3, ..ok.clone() }, Rejection::BadUdpResult),
        ];
        for (u, why) in cases {
            assert_eq!(check_udp(&u, &targets), Err(why), "{u:?}");
        }
        let batch =
            ResultBatch { udp_results: vec![ok.clone(), UdpResult { received: 11, ..ok }], ..Default::default() };
        let (checked, refused) = check_batch(batch, &targets);
        assert_eq!((checked.udp.len(), refused.get(&Rejection::BadUdpResult)), (1, Some(&1)));
    }
}
