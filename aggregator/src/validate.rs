//! Checks on what agents send, so a broken or hostile agent is rejected with a counted reason
//! and never grows memory without bound.

use kubenurse_proto::v1::{CheckResult, Hello};

/// Longest duration accepted: far above any check timeout.
pub const MAX_DURATION_MICROS: u64 = 10 * 60 * 1_000_000;
/// Most targets one agent may declare.
pub const MAX_TARGETS: usize = 1_000;
/// Longest error text kept.
pub const MAX_ERROR_LEN: usize = 512;

/// Why something from an agent was refused; also the `reason` label of the ingest-error metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Rejection {
    /// The stream did not start with a hello.
    #[error("no_hello")]
    NoHello,
    /// Node or target name not a Kubernetes node name.
    #[error("bad_name")]
    BadName,
    /// Too many targets, or a bad interval.
    #[error("bad_hello")]
    BadHello,
    /// Check type empty, too long or with odd characters.
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
    /// More results in one batch than allowed.
    #[error("batch_too_large")]
    BatchTooLarge,
    /// The aggregator's queue was full.
    #[error("overloaded")]
    Overloaded,
}

impl Rejection {
    /// Every reason, so their counters exist (at 0) before the first rejection.
    pub const ALL: [Rejection; 9] = [
        Rejection::NoHello,
        Rejection::BadName,
        Rejection::BadHello,
        Rejection::BadCheckType,
        Rejection::UnknownTarget,
        Rejection::AbsurdDuration,
        Rejection::BadOutcome,
        Rejection::BatchTooLarge,
        Rejection::Overloaded,
    ];
}

/// The reason label of a stream that ended on a malformed message or a broken connection.
pub const MALFORMED_OR_BROKEN: &str = "malformed_or_broken";

/// A Kubernetes node name: a DNS subdomain (lowercase alphanumerics, '-', '.'), ≤ 253 chars.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Validates a hello.
pub fn check_hello(h: &Hello) -> Result<(), Rejection> {
    if !valid_node_name(&h.node) {
        return Err(Rejection::BadName);
    }
    if h.targets.len() > MAX_TARGETS || h.interval_micros == 0 || h.interval_micros > 3_600_000_000 {
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

/// Validates one result against the sender's declared targets.
pub fn check_result(r: &CheckResult, targets: &[String]) -> Result<(), Rejection> {
    let t = &r.check_type;
    if t.is_empty() || t.len() > 300 || !t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(Rejection::BadCheckType);
    }
    if let Some(node) = t.strip_prefix("path_") {
        if node != r.target_node || !targets.iter().any(|x| x == node) {
            return Err(Rejection::UnknownTarget);
        }
    }
    if r.duration_micros > MAX_DURATION_MICROS {
        return Err(Rejection::AbsurdDuration);
    }
    if !(1..=3).contains(&r.outcome) {
        return Err(Rejection::BadOutcome);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_node_name("ip-10-0-0-1.eu-west-1.compute.internal"));
        assert!(!valid_node_name("Node_1"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name(&"a".repeat(254)));
    }

    #[test]
    fn results() {
        let targets = vec!["n2".to_string()];
        let ok = CheckResult {
            check_type: "path_n2".into(),
            target_node: "n2".into(),
            outcome: 1,
            duration_micros: 300,
            ..Default::default()
        };
        assert_eq!(check_result(&ok, &targets), Ok(()));
        let unknown = CheckResult { check_type: "path_n9".into(), target_node: "n9".into(), ..ok.clone() };
        assert_eq!(check_result(&unknown, &targets), Err(Rejection::UnknownTarget));
        let absurd = CheckResult { duration_micros: u64::MAX, ..ok.clone() };
        assert_eq!(check_result(&absurd, &targets), Err(Rejection::AbsurdDuration));
        let no_outcome = CheckResult { outcome: 0, ..ok.clone() };
        assert_eq!(check_result(&no_outcome, &targets), Err(Rejection::BadOutcome));
        let weird = CheckResult { check_type: "a b".into(), ..ok };
        assert_eq!(check_result(&weird, &targets), Err(Rejection::BadCheckType));
    }
}
