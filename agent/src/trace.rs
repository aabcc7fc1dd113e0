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
}

impl FailureKind {
    /// The `event` label value of `kubenurse_errors_total`.
    pub fn event_label(&self) -> String {
        match self {
            FailureKind::Phase(p) => p.as_str().to_string(),
            FailureKind::RoundTrip => ROUND_TRIP_ERROR.to_string(),
            FailureKind::Status(code) => format!("status_code_{code}"),
            FailureKind::Token => "token_error".to_string(),
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
}
