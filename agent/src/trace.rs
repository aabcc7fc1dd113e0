//! Request phases as upstream kubenurse reports them (Go's `httptrace` events), and the
//! record of one request: when each phase happened and which phase failed.

use std::time::{Duration, Instant, SystemTime};

/// A point in a request's life, named as upstream's `event` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Name lookup began.
    DnsStart,
    /// Name lookup finished.
    DnsDone,
    /// TCP connect began.
    ConnectStart,
    /// TCP connect finished.
    ConnectDone,
    /// TLS handshake began.
    TlsHandshakeStart,
    /// TLS handshake finished.
    TlsHandshakeDone,
    /// A connection (new or reused) is ready for the request.
    GotConn,
    /// The request was written.
    WroteRequest,
    /// The first byte of the response arrived.
    GotFirstRespByte,
}

impl Phase {
    /// Every phase, in request order.
    pub const ALL: [Phase; 9] = [
        Phase::DnsStart,
        Phase::DnsDone,
        Phase::ConnectStart,
        Phase::ConnectDone,
        Phase::TlsHandshakeStart,
        Phase::TlsHandshakeDone,
        Phase::GotConn,
        Phase::WroteRequest,
        Phase::GotFirstRespByte,
    ];

    /// The `event` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::DnsStart => "dns_start",
            Phase::DnsDone => "dns_done",
            Phase::ConnectStart => "connect_start",
            Phase::ConnectDone => "connect_done",
            Phase::TlsHandshakeStart => "tls_handshake_start",
            Phase::TlsHandshakeDone => "tls_handshake_done",
            Phase::GotConn => "got_conn",
            Phase::WroteRequest => "wrote_request",
            Phase::GotFirstRespByte => "got_first_resp_byte",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upstream's label for a request that got no response: the `code` of
/// `kubenurse_httpclient_requests_total` and the `event` of `kubenurse_errors_total`.
pub const ROUND_TRIP_ERROR: &str = "round_trip_error";

/// What went wrong with a request, in the terms of upstream's `kubenurse_errors_total{event}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// A phase failed (upstream counts the phase's `*_done`/`wrote_request` event).
    Phase(Phase),
    /// Anything after the request was written (reading the response, a timeout while waiting).
    RoundTrip,
    /// The server answered with a status other than 200.
    Status(u16),
    /// The service-account token could not be read, so no request was sent.
    Token,
    /// A phase failed for a reason inside this node (see [`LocalCause`]).
    Local(Phase, LocalCause),
}

/// Why a check failed without its target having any part in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalCause {
    /// The process or the system is out of file descriptors (EMFILE, ENFILE).
    FileDescriptors,
    /// No local address or port is left to connect from (EADDRNOTAVAIL).
    EphemeralPorts,
    /// The kernel is out of buffers or memory (ENOBUFS, ENOMEM).
    Memory,
}

impl LocalCause {
    /// The cause of an OS error, when it lies in this node.
    pub fn of(error: &std::io::Error) -> Option<Self> {
        // Linux errno values (the agent's only platform).
        const ENOMEM: i32 = 12;
        const ENFILE: i32 = 23;
        const EMFILE: i32 = 24;
        const EADDRNOTAVAIL: i32 = 99;
        const ENOBUFS: i32 = 105;
        match error.raw_os_error()? {
            EMFILE | ENFILE => Some(Self::FileDescriptors),
            EADDRNOTAVAIL => Some(Self::EphemeralPorts),
            ENOBUFS | ENOMEM => Some(Self::Memory),
            _ => None,
        }
    }

    /// Its `error_kind` on the wire.
    pub fn wire_kind(self) -> String {
        let cause = match self {
            Self::FileDescriptors => "out_of_file_descriptors",
            Self::EphemeralPorts => "no_ephemeral_port",
            Self::Memory => "out_of_memory",
        };
        format!("{}{cause}", kubenurse_proto::LOCAL_ERROR_PREFIX)
    }
}

impl FailureKind {
    /// The `event` label value of `kubenurse_errors_total`.
    pub fn event_label(&self) -> String {
        match self {
            FailureKind::Phase(p) => p.as_str().to_string(),
            FailureKind::RoundTrip => ROUND_TRIP_ERROR.to_string(),
            FailureKind::Status(code) => format!("status_code_{code}"),
            FailureKind::Token => "token_error".to_string(),
            // Upstream's label (the phase); the cause travels on the wire only.
            FailureKind::Local(p, _) => p.as_str().to_string(),
        }
    }

    /// The `error_kind` streamed to the aggregator: the event label, or `local_…`.
    pub fn wire_kind(&self) -> String {
        match self {
            FailureKind::Local(_, cause) => cause.wire_kind(),
            other => other.event_label(),
        }
    }
}

/// One request's timeline: the offset from request start of each phase that happened.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    start: Instant,
    /// Wall-clock start, for results streamed elsewhere.
    pub started_at: SystemTime,
    events: [Option<Duration>; 9],
    /// The phase running now, blamed if the request times out.
    in_progress: Option<Phase>,
}

impl RequestTrace {
    /// Starts a timeline now.
    pub fn start() -> Self {
        Self { start: Instant::now(), started_at: SystemTime::now(), events: [None; 9], in_progress: None }
    }

    /// Records that `phase` happened now.
    pub fn mark(&mut self, phase: Phase) {
        self.mark_at(phase, Instant::now());
    }

    /// Records that `phase` happened at `at` (measured by the I/O layer).
    pub fn mark_at(&mut self, phase: Phase, at: Instant) {
        self.events[phase.index()] = Some(at.saturating_duration_since(self.start));
    }

    /// Notes the phase about to run, so a timeout can name it.
    pub fn begin(&mut self, phase: Phase) {
        self.in_progress = Some(phase);
    }

    /// The phase that was running when the request stopped.
    pub fn in_progress(&self) -> Option<Phase> {
        self.in_progress
    }

    /// Offset of `phase` from request start, if it happened.
    pub fn get(&self, phase: Phase) -> Option<Duration> {
        self.events[phase.index()]
    }

    /// Every recorded phase in order.
    pub fn events(&self) -> impl Iterator<Item = (Phase, Duration)> + '_ {
        Phase::ALL.into_iter().filter_map(|p| self.get(p).map(|d| (p, d)))
    }

    /// Time since request start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// How long the TCP connect took: to its end, or to `ended` (request start to when it
    /// stopped) when it stopped in the connect; `None` without a new connection.
    pub fn connect_time(&self, ended: Duration) -> Option<Duration> {
        let start = self.get(Phase::ConnectStart)?;
        let end = match self.get(Phase::ConnectDone) {
            Some(done) => done,
            None if self.in_progress == Some(Phase::ConnectDone) => ended,
            None => return None,
        };
        Some(end.saturating_sub(start))
    }
}

/// Linux's initial TCP retransmission timeout: an unanswered SYN is sent again after it, then
/// after twice as long each time.
pub const INITIAL_RTO: Duration = Duration::from_secs(1);

/// SYN retransmissions a connect of `connect` must have needed (Pingmesh's inference of loss):
/// one from 1 s, two from 3 s, three from 7 s, and so on.
pub fn syn_retransmits(connect: Duration) -> u32 {
    let (mut at, mut wait, mut n) = (Duration::ZERO, INITIAL_RTO, 0);
    while n < kubenurse_proto::MAX_SYN_RETRANSMITS {
        at += wait;
        if connect < at {
            break;
        }
        n += 1;
        wait *= 2;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_connects_count_syn_retransmits() {
        let ms = Duration::from_millis;
        assert_eq!(syn_retransmits(ms(999)), 0);
        assert_eq!(syn_retransmits(ms(1000)), 1);
        assert_eq!(syn_retransmits(ms(2999)), 1);
        assert_eq!(syn_retransmits(ms(3000)), 2);
        assert_eq!(syn_retransmits(ms(7000)), 3);
        assert_eq!(syn_retransmits(Duration::from_secs(1 << 20)), 16, "bounded");
        let mut t = RequestTrace::start();
        assert_eq!(t.connect_time(ms(5)), None, "no new connection");
        t.mark_at(Phase::ConnectStart, t.start + ms(2));
        t.begin(Phase::ConnectDone);
        assert_eq!(t.connect_time(ms(3500)), Some(ms(3498)), "timed out in the connect");
        t.mark_at(Phase::ConnectDone, t.start + ms(1202));
        assert_eq!(t.connect_time(ms(3500)), Some(ms(1200)));
    }

    #[test]
    fn local_causes_are_the_agents_and_keep_upstreams_event_label() {
        let of = |errno| LocalCause::of(&std::io::Error::from_raw_os_error(errno));
        assert_eq!(of(24), Some(LocalCause::FileDescriptors));
        assert_eq!(of(23), Some(LocalCause::FileDescriptors));
        assert_eq!(of(99), Some(LocalCause::EphemeralPorts));
        assert_eq!(of(105), Some(LocalCause::Memory));
        assert_eq!(of(111), None, "connection refused is the target's");
        assert_eq!(LocalCause::of(&std::io::Error::other("x")), None);
        let kind = FailureKind::Local(Phase::ConnectDone, LocalCause::FileDescriptors);
        assert_eq!(kind.event_label(), FailureKind::Phase(Phase::ConnectDone).event_label());
        assert_eq!(kind.wire_kind(), "local_out_of_file_descriptors");
        assert!(kind.wire_kind().starts_with(kubenurse_proto::LOCAL_ERROR_PREFIX));
        assert_eq!(FailureKind::RoundTrip.wire_kind(), ROUND_TRIP_ERROR);
    }
}
