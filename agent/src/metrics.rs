//! Upstream's five `kubenurse_*` metric families on a registry of the agent's own, plus the
//! bookkeeping to remove a neighbour's series when it leaves (upstream leaks them).

use std::collections::BTreeSet;

use dashmap::DashMap;
use kubenurse_proto::CheckKind;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::probe::ProbeResult;
use crate::trace::{FailureKind, ROUND_TRIP_ERROR};

/// The stream's metrics, which the uplink updates.
#[derive(Clone)]
pub struct UplinkMetrics {
    /// `kubenurse_aggregator_dropped_results_total`.
    pub dropped: IntCounter,
    /// `kubenurse_aggregator_connected`.
    pub connected: IntGauge,
    /// `kubenurse_aggregator_targets_refused_total{reason}`.
    pub targets_refused: IntCounterVec,
}

/// The UDP probe's families: per neighbour (`type`), and the datagrams either side ignored.
struct UdpFamilies {
    sent: IntCounterVec,
    lost: IntCounterVec,
    rtt: HistogramVec,
    ignored: IntCounterVec,
    echo: IntCounterVec,
}

impl UdpFamilies {
    fn new(buckets: &[f64]) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, label: &str| IntCounterVec::new(Opts::new(name, help), &[label]);
        let ignored = counter(
            "kubenurse_udp_replies_ignored_total",
            "UDP datagrams at the probe socket that matched no packet sent (stray, late or forged), by reason.",
            "reason",
        )?;
        for reason in crate::udp::book::Ignored::ALL {
            ignored.with_label_values(&[reason.as_str()]);
        }
        let echo = counter(
            "kubenurse_udp_echo_requests_total",
            "UDP datagrams at the echo port, by what was done with them.",
            "result",
        )?;
        for result in crate::udp::echo::EchoResult::ALL {
            echo.with_label_values(&[result.as_str()]);
        }
        Ok(Self {
            sent: counter("kubenurse_udp_packets_sent_total", "UDP echo packets sent, by check type.", "type")?,
            lost: counter(
                "kubenurse_udp_packets_lost_total",
                "UDP echo packets sent and never answered within the round, by check type.",
                "type",
            )?,
            rtt: HistogramVec::new(
                HistogramOpts::new("kubenurse_udp_rtt_seconds", "Round-trip time of answered UDP echo packets.")
                    .buckets(buckets.to_vec()),
                &["type"],
            )?,
            ignored,
            echo,
        })
    }

    fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.sent.clone()))?;
        registry.register(Box::new(self.lost.clone()))?;
        registry.register(Box::new(self.rtt.clone()))?;
        registry.register(Box::new(self.ignored.clone()))?;
        registry.register(Box::new(self.echo.clone()))
    }

    fn forget(&self, check_type: &str) {
        let _ = self.sent.remove_label_values(&[check_type]);
        let _ = self.lost.remove_label_values(&[check_type]);
        let _ = self.rtt.remove_label_values(&[check_type]);
    }
}

/// Label values created per check type, so they can all be removed together.
#[derive(Default)]
struct Series {
    codes: BTreeSet<String>,
    trace_events: BTreeSet<&'static str>,
    error_events: BTreeSet<String>,
    udp: bool,
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    trace: HistogramVec,
    errors: IntCounterVec,
    syn_retransmits: IntCounterVec,
    udp: UdpFamilies,
    incoming: IntGauge,
    /// Every check task records here at once: sharded, so checks never wait on one lock.
    series: DashMap<CheckKind, Series>,
}

impl Metrics {
    /// Creates the families with the given histogram buckets.
    pub fn new(buckets: &[f64]) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("kubenurse_httpclient_requests_total", "A counter for requests from the kubenurse http client."),
            &["type", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "kubenurse_httpclient_request_duration_seconds",
                "A latency histogram of request latencies from the kubenurse http client.",
            )
            .buckets(buckets.to_vec()),
            &["type"],
        )?;
        let trace = HistogramVec::new(
            HistogramOpts::new(
                "kubenurse_httpclient_trace_request_duration_seconds",
                "Latency histogram for requests from the kubenurse http client. Time in seconds since the start of the http request.",
            )
            .buckets(buckets.to_vec()),
            &["type", "event"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new("kubenurse_errors_total", "Kubenurse error counter partitioned by error type"),
            &["type", "event"],
        )?;
        let syn_retransmits = IntCounterVec::new(
            Opts::new(
                "kubenurse_tcp_syn_retransmits_total",
                "SYN retransmissions inferred from slow TCP connects (one from 1 s, two from 3 s, ...), by check type.",
            ),
            &["type"],
        )?;
        let incoming = IntGauge::new(
            "kubenurse_neighbourhood_incoming_checks",
            "Number of unique source nodes checks in the last minute for the neighbourhood checks",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(trace.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(syn_retransmits.clone()))?;
        registry.register(Box::new(incoming.clone()))?;
        let udp = UdpFamilies::new(buckets)?;
        udp.register(&registry)?;
        Ok(Self { registry, requests, duration, trace, errors, syn_retransmits, udp, incoming, series: DashMap::new() })
    }

    /// Records one check's request under its kind's `type` label.
    pub fn record(&self, kind: &CheckKind, result: &ProbeResult) {
        let check_type = kind.label();
        let check_type = check_type.as_ref();
        let mut s = self.series.entry(kind.clone()).or_default();
        for (phase, at) in result.trace.events() {
            self.trace.with_label_values(&[check_type, phase.as_str()]).observe(at.as_secs_f64());
            s.trace_events.insert(phase.as_str());
        }
        if let Some(n) = result.syn_retransmits() {
            // Created at 0 on the first new connection, so a rate exists before any loss.
            self.syn_retransmits.with_label_values(&[check_type]).inc_by(u64::from(n));
        }
        let code = match (result.status, &result.failure) {
            (Some(status), _) => status.as_u16().to_string(),
            // A TCP or DNS extra check that succeeded: no HTTP status to show.
            (None, None) => crate::extra::NON_HTTP_OK.to_string(),
            (None, Some(_)) => ROUND_TRIP_ERROR.to_string(),
        };
        self.requests.with_label_values(&[check_type, &code]).inc();
        s.codes.insert(code);
        if result.status.is_some() || result.failure.is_none() {
            self.duration.with_label_values(&[check_type]).observe(result.duration.as_secs_f64());
        }
        if let Some((kind, _)) = &result.failure {
            self.count_failure(&mut s, check_type, kind);
        }
    }

    /// Records one round of UDP probes to a neighbour.
    pub fn record_udp(&self, kind: &CheckKind, report: &crate::udp::book::LinkReport) {
        let check_type = kind.label();
        let labels = [check_type.as_ref()];
        self.series.entry(kind.clone()).or_default().udp = true;
        self.udp.sent.with_label_values(&labels).inc_by(u64::from(report.sent));
        // Created at 0, so a loss rate exists before the first loss.
        self.udp.lost.with_label_values(&labels).inc_by(u64::from(report.lost()));
        let rtt = self.udp.rtt.with_label_values(&labels);
        for d in &report.rtts {
            rtt.observe(d.as_secs_f64());
        }
    }

    /// Counts a datagram the probe socket ignored.
    pub fn count_ignored(&self, reason: crate::udp::book::Ignored) {
        self.udp.ignored.with_label_values(&[reason.as_str()]).inc();
    }

    /// Counts what the echo did with a datagram.
    pub fn count_echo(&self, result: crate::udp::echo::EchoResult) {
        self.udp.echo.with_label_values(&[result.as_str()]).inc();
    }

    /// Counts a failure that produced no request (an unreadable token).
    pub fn record_failure(&self, kind: &CheckKind, failure: &FailureKind) {
        let mut s = self.series.entry(kind.clone()).or_default();
        self.count_failure(&mut s, &kind.label(), failure);
    }

    fn count_failure(&self, s: &mut Series, check_type: &str, kind: &FailureKind) {
        let event = kind.event_label();
        self.errors.with_label_values(&[check_type, &event]).inc();
        s.error_events.insert(event);
    }

    /// Removes every series of `kind` (a neighbour that left).
    pub fn forget(&self, kind: &CheckKind) {
        let Some((_, s)) = self.series.remove(kind) else { return };
        let check_type = kind.label();
        let check_type = check_type.as_ref();
        for code in &s.codes {
            let _ = self.requests.remove_label_values(&[check_type, code]);
        }
        for event in &s.trace_events {
            let _ = self.trace.remove_label_values(&[check_type, event]);
        }
        for event in &s.error_events {
            let _ = self.errors.remove_label_values(&[check_type, event]);
        }
        let _ = self.duration.remove_label_values(&[check_type]);
        let _ = self.syn_retransmits.remove_label_values(&[check_type]);
        if s.udp {
            self.udp.forget(check_type);
        }
    }

    /// Path checks that currently have series.
    pub fn known_paths(&self) -> Vec<CheckKind> {
        self.series.iter().map(|e| e.key().clone()).filter(|k| k.target_node().is_some()).collect()
    }

    /// Sets the incoming-checks gauge.
    pub fn set_incoming(&self, distinct_origins: usize) {
        self.incoming.set(i64::try_from(distinct_origins).unwrap_or(i64::MAX));
    }

    /// Registers the stream metrics (only when an aggregator is configured, so a plain
    /// kubenurse exposes exactly upstream's families): dropped results, connected streams and
    /// refused target lists.
    pub fn register_aggregator(&self) -> Result<UplinkMetrics, prometheus::Error> {
        let dropped = IntCounter::new(
            "kubenurse_aggregator_dropped_results_total",
            "Check results dropped because the queue to the aggregator was full.",
        )?;
        let connected =
            IntGauge::new("kubenurse_aggregator_connected", "Streams to aggregator replicas that are connected now.")?;
        let targets_refused = IntCounterVec::new(
            Opts::new(
                "kubenurse_aggregator_targets_refused_total",
                "Target lists from the aggregator refused (the previous list is kept), by reason.",
            ),
            &["reason"],
        )?;
        for reason in crate::pushed::TargetsError::REASONS {
            targets_refused.with_label_values(&[reason]);
        }
        self.registry.register(Box::new(dropped.clone()))?;
        self.registry.register(Box::new(connected.clone()))?;
        self.registry.register(Box::new(targets_refused.clone()))?;
        Ok(UplinkMetrics { dropped, connected, targets_refused })
    }

    /// The registry `/metrics` exposes.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        kubenurse_common::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Phase, RequestTrace};

    fn result(status: Option<u16>, failure: Option<FailureKind>) -> ProbeResult {
        let mut trace = RequestTrace::start();
        trace.mark(Phase::ConnectStart);
        trace.mark(Phase::ConnectDone);
        ProbeResult {
            status: status.map(|s| http::StatusCode::from_u16(s).unwrap()),
            failure: failure.map(|f| (f, "x".to_string())),
            trace,
            duration: std::time::Duration::from_micros(300),
        }
    }

    #[test]
    fn records_and_forgets_a_neighbour() {
        let m = Metrics::new(crate::config::DEFAULT_BUCKETS).unwrap();
        let (a, b) = (CheckKind::path("a").unwrap(), CheckKind::path("b").unwrap());
        m.record(&a, &result(Some(200), None));
        m.record(&a, &result(Some(503), Some(FailureKind::Status(503))));
        m.record(&b, &result(None, Some(FailureKind::Phase(Phase::ConnectDone))));
        let text = m.encode().unwrap();
        assert!(text.contains(r#"kubenurse_httpclient_requests_total{code="503",type="path_a"} 1"#), "{text}");
        assert!(text.contains(r#"kubenurse_errors_total{event="status_code_503",type="path_a"} 1"#));
        assert!(text.contains(r#"kubenurse_errors_total{event="connect_done",type="path_b"} 1"#));
        assert!(text.contains(r#"kubenurse_httpclient_requests_total{code="round_trip_error",type="path_b"} 1"#));
        assert!(text.contains(r#"event="connect_done",type="path_a",le="0.005""#));
        assert!(text.contains(r#"kubenurse_tcp_syn_retransmits_total{type="path_a"} 0"#), "{text}");
        // A connect that took 3.2 s needed two SYN retransmissions.
        let mut slow = result(Some(200), None);
        let t0 = std::time::Instant::now();
        slow.trace = RequestTrace::start();
        slow.trace.mark_at(Phase::ConnectStart, t0);
        slow.trace.mark_at(Phase::ConnectDone, t0 + std::time::Duration::from_millis(3200));
        m.record(&b, &slow);
        let text = m.encode().unwrap();
        assert!(text.contains(r#"kubenurse_tcp_syn_retransmits_total{type="path_b"} 2"#), "{text}");
        m.forget(&a);
        let text = m.encode().unwrap();
        assert!(!text.contains("path_a"), "{text}");
        assert!(text.contains("path_b"));
    }
}
