//! One round of checks: build the list (API server, ingress, service, extra, neighbours), run
//! them all concurrently, and produce the result `/alive` shows. A round is complete before it
//! is published, and the caller never starts the next one before this one ends.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::join_all;
use http::{HeaderMap, HeaderValue, Uri};
use serde_json::Value;
use tracing::{debug, warn};

use kubenurse_proto::CheckKind;

use crate::config::ExtraCheck;
use crate::discovery::NeighbourhoodView;
use crate::metrics::Metrics;
use crate::probe::{ProbeClient, ProbeResult};
use crate::ring::Neighbour;
use crate::trace::FailureKind;
use crate::udp::book::LinkReport;
use crate::udp::UdpProber;

/// Header telling the neighbour who checked it (upstream's name).
pub const ORIGIN_HEADER: &str = "KUBENURSE-NEIGHBOUR-ORIGIN";
/// The `/alive` value of a disabled check.
pub const SKIPPED: &str = "skipped";

/// One check to run this round.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    /// What is checked; its label is the metric `type` and the `/alive` key.
    pub kind: CheckKind,
    /// What to GET (or, for an extra check, `tcp://` to connect to or `dns://` to look up).
    pub url: Uri,
}

impl CheckSpec {
    /// Only the API server ever receives the service-account token.
    pub fn sends_token(&self) -> bool {
        matches!(self.kind, CheckKind::ApiServerDirect | CheckKind::ApiServerDns)
    }

    /// Neighbours learn who checked them from the origin header.
    pub fn sends_origin(&self) -> bool {
        matches!(self.kind, CheckKind::Path { .. })
    }
}

/// A finished check.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    /// The check.
    pub spec: CheckSpec,
    /// `ok`, a status line, or the error text.
    pub value: String,
    /// The request, or why none was sent (the token could not be read).
    pub probe: Result<ProbeResult, FailureKind>,
}

/// A complete round, as `/alive` shows it.
#[derive(Debug, Clone)]
pub struct RoundResult {
    /// When the round started.
    pub started_at: SystemTime,
    /// How long the whole round took.
    pub took: Duration,
    /// Every check of the round, plus disabled ones as `skipped`.
    pub values: BTreeMap<String, String>,
    /// `ok` or why the neighbourhood is incomplete.
    pub neighbourhood_state: String,
    /// The neighbours checked.
    pub neighbourhood: Vec<Neighbour>,
    /// The finished checks, for streaming and tests.
    pub outcomes: Vec<CheckOutcome>,
    /// Each path neighbour's UDP probes, once they ended (none while `KUBENURSE_CHECK_UDP` is
    /// false).
    pub udp: Vec<LinkReport>,
}

impl RoundResult {
    /// True when every check is ok or skipped and the neighbourhood is known (UDP loss is
    /// shown, not an error: TCP checks that pass are the verdict).
    pub fn all_ok(&self) -> bool {
        (self.neighbourhood_state == "ok" || self.neighbourhood_state == SKIPPED)
            && self.values.values().all(|v| v == "ok" || v == SKIPPED)
    }

    /// Upstream's `last_check_result` object.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (k, v) in &self.values {
            map.insert(k.clone(), Value::String(v.clone()));
        }
        for r in &self.udp {
            if let Ok(kind) = CheckKind::path(&r.node) {
                map.insert(crate::udp::alive_key(&kind), Value::String(r.summary()));
            }
        }
        map.insert("neighbourhood_state".into(), Value::String(self.neighbourhood_state.clone()));
        map.insert(
            "neighbourhood".into(),
            serde_json::to_value(&self.neighbourhood).unwrap_or(Value::Array(Vec::new())),
        );
        Value::Object(map)
    }
}

/// Formats `host:port` for a URL, bracketing IPv6 literals.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn join_path(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// What the checks of every round are, from the configuration: the fixed checks are worked
/// out once at start, the path checks each round from the neighbours.
#[derive(Debug, Clone)]
pub struct PlanSettings {
    /// API server address for `api_server_direct`, when that check is on.
    pub api_server_direct: Option<String>,
    /// API server DNS name for `api_server_dns`, when that check is on.
    pub api_server_dns: Option<String>,
    /// The API server's port.
    pub api_server_port: u16,
    /// Base URL for `me_ingress`, when that check is on.
    pub me_ingress: Option<Uri>,
    /// Base URL for `me_service`, when that check is on.
    pub me_service: Option<Uri>,
    /// `KUBENURSE_EXTRA_CHECKS`.
    pub extra: Vec<ExtraCheck>,
    /// Scheme of neighbours' `/alwayshappy` (https with `KUBENURSE_USE_TLS`).
    pub path_scheme: &'static str,
    /// Port of neighbours' `/alwayshappy` (the HTTPS port with `KUBENURSE_USE_TLS`).
    pub path_port: u16,
}

/// The round's fixed checks and those left out, planned once.
#[derive(Debug, Clone)]
pub struct Plan {
    fixed: Vec<CheckSpec>,
    skipped: Vec<CheckKind>,
    path_scheme: &'static str,
    path_port: u16,
}

impl Plan {
    /// Plans the fixed checks; a URL that cannot be built is logged and the check left out.
    pub fn new(settings: PlanSettings) -> Self {
        let PlanSettings {
            api_server_direct,
            api_server_dns,
            api_server_port,
            me_ingress,
            me_service,
            extra,
            path_scheme,
            path_port,
        } = settings;
        let mut fixed = Vec::new();
        let mut skipped = Vec::new();
        let mut add = |kind: CheckKind, url: Option<String>| match url.map(|u| (u.parse::<Uri>(), u)) {
            Some((Ok(url), _)) => fixed.push(CheckSpec { kind, url }),
            Some((Err(e), url)) => warn!(check = %kind, url = %url, error = %e, "cannot build check URL"),
            None => skipped.push(kind),
        };
        let api_url = |host: String| format!("https://{}/version", host_port(&host, api_server_port));
        add(CheckKind::ApiServerDirect, api_server_direct.map(api_url));
        add(CheckKind::ApiServerDns, api_server_dns.map(api_url));
        let happy = |url: Option<Uri>| url.map(|u| join_path(&u.to_string(), "/alwayshappy"));
        add(CheckKind::MeIngress, happy(me_ingress));
        add(CheckKind::MeService, happy(me_service));
        for e in extra {
            fixed.push(CheckSpec { kind: e.kind(), url: e.url });
        }
        Self { fixed, skipped, path_scheme, path_port }
    }

    /// The checks of a round, given the neighbours to check; disabled checks are listed as skipped.
    pub fn round(&self, neighbours: &[Neighbour]) -> (Vec<CheckSpec>, Vec<CheckKind>) {
        let mut specs = self.fixed.clone();
        let (scheme, port) = (self.path_scheme, self.path_port);
        for n in neighbours {
            let kind = match CheckKind::path(&n.node_name) {
                Ok(k) => k,
                Err(e) => {
                    warn!(pod = %n.pod_name, error = %e, "neighbour has an unusable node name");
                    continue;
                }
            };
            match format!("{scheme}://{}/alwayshappy", host_port(&n.pod_ip, port)).parse::<Uri>() {
                Ok(url) => specs.push(CheckSpec { kind, url }),
                Err(e) => warn!(pod = %n.pod_name, ip = %n.pod_ip, error = %e, "neighbour has an unusable pod IP"),
            }
        }
        (specs, self.skipped.clone())
    }
}

/// Runs rounds with one plan and one client.
pub struct Checker {
    plan: Plan,
    client: ProbeClient,
    metrics: Arc<Metrics>,
    /// Sent as the origin header of path checks.
    pod_name: String,
    /// Read again for every API-server check (the kubelet rotates it).
    token_path: PathBuf,
    timeout: Duration,
    udp: Option<Arc<UdpProber>>,
}

impl Checker {
    /// A checker running `plan` with `client`, recording into `metrics`.
    pub fn new(
        plan: Plan,
        client: ProbeClient,
        metrics: Arc<Metrics>,
        pod_name: String,
        token_path: PathBuf,
        timeout: Duration,
    ) -> Self {
        Self { plan, client, metrics, pod_name, token_path, timeout, udp: None }
    }

    /// Also probes every path neighbour over UDP each round.
    pub fn with_udp(mut self, prober: UdpProber) -> Self {
        self.udp = Some(Arc::new(prober));
        self
    }

    /// Runs one round over `view` (or no neighbours when the neighbourhood check is off),
    /// calling `on_done` as each check finishes.
    ///
    /// Each check is its own task, so one check's CPU work (a TLS handshake) never delays when
    /// another check notices its response: the timings stay per check.
    pub async fn run_round(
        self: &Arc<Self>,
        view: Option<NeighbourhoodView>,
        on_done: Arc<dyn Fn(&CheckOutcome) + Send + Sync>,
    ) -> RoundResult {
        let started_at = SystemTime::now();
        let start = std::time::Instant::now();
        let (neighbourhood_state, neighbourhood) = match view {
            Some(v) => (v.state, v.neighbours),
            None => (SKIPPED.to_string(), Vec::new()),
        };
        let (specs, skipped) = self.plan.round(&neighbourhood);
        let tasks: Vec<_> = specs
            .into_iter()
            .map(|spec| {
                let (me, on_done) = (self.clone(), on_done.clone());
                tokio::spawn(async move {
                    let outcome = me.run_check(spec).await;
                    on_done(&outcome);
                    outcome
                })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for joined in join_all(tasks).await {
            match joined {
                Ok(o) => outcomes.push(o),
                // A check task can only fail by panicking, a bug: report it, keep the round.
                Err(e) => warn!(error = %e, "check task failed"),
            }
        }
        let mut values: BTreeMap<String, String> =
            skipped.iter().map(|kind| (kind.label().into_owned(), SKIPPED.to_string())).collect();
        for o in &outcomes {
            values.insert(o.spec.kind.label().into_owned(), o.value.clone());
        }
        let took = start.elapsed();
        RoundResult { started_at, took, values, neighbourhood_state, neighbourhood, outcomes, udp: Vec::new() }
    }

    /// Starts this round's UDP probes of `neighbours` (none without a prober). They take about
    /// 0.75 of an interval, so they run beside the HTTP checks and end after them: the round is
    /// published without them and [`AgentState::publish_udp`](crate::state::AgentState::publish_udp)
    /// adds them.
    pub fn start_udp(&self, neighbours: Vec<Neighbour>) -> Option<tokio::task::JoinHandle<Vec<LinkReport>>> {
        let prober = self.udp.clone()?;
        Some(tokio::spawn(async move { prober.run_round(&neighbours).await }))
    }

    async fn run_check(&self, spec: CheckSpec) -> CheckOutcome {
        let mut headers = HeaderMap::new();
        if spec.sends_token() {
            // A few hundred bytes on a tmpfs: read in place, cheaper than a blocking-pool hop.
            match std::fs::read_to_string(&self.token_path) {
                Ok(token) => match HeaderValue::from_str(&format!("Bearer {}", token.trim())) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        headers.insert(http::header::AUTHORIZATION, v);
                    }
                    Err(_) => {
                        return self.token_failure(spec, "service account token contains invalid characters".into())
                    }
                },
                Err(e) => {
                    let msg = format!("cannot read service account token {}: {e}", self.token_path.display());
                    return self.token_failure(spec, msg);
                }
            }
        }
        if spec.sends_origin() {
            if let Ok(v) = HeaderValue::from_str(&self.pod_name) {
                headers.insert(ORIGIN_HEADER, v);
            }
        }
        let probe = match crate::extra::NonHttp::of(&spec.url) {
            Some(crate::extra::NonHttp::Tcp) => crate::extra::tcp(&self.client, &spec.url, self.timeout).await,
            Some(crate::extra::NonHttp::Dns) => crate::extra::dns(&spec.url, self.timeout).await,
            None => self.client.get(&spec.url, &headers, self.timeout).await,
        };
        self.metrics.record(&spec.kind, &probe);
        let value = probe.summary();
        if let Some((kind, message)) = &probe.failure {
            warn!(check = %spec.kind, event = %kind.event_label(), error = %message, "check failed");
        } else {
            debug!(check = %spec.kind, micros = probe.duration.as_micros() as u64, "check ok");
        }
        CheckOutcome { spec, value, probe: Ok(probe) }
    }

    fn token_failure(&self, spec: CheckSpec, message: String) -> CheckOutcome {
        warn!(check = %spec.kind, error = %message, "API server check not sent");
        self.metrics.record_failure(&spec.kind, &FailureKind::Token);
        CheckOutcome { spec, value: message, probe: Err(FailureKind::Token) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_ipv6() {
        assert_eq!(host_port("fd00::1", 8080), "[fd00::1]:8080");
        assert_eq!(host_port("10.0.0.1", 8080), "10.0.0.1:8080");
        assert_eq!(host_port("[fd00::1]", 443), "[fd00::1]:443");
        assert!(format!("http://{}/alwayshappy", host_port("fd00::1", 8080)).parse::<Uri>().is_ok());
    }

    #[test]
    fn joins_paths() {
        assert_eq!(join_path("https://x.example/", "/alwayshappy"), "https://x.example/alwayshappy");
    }
}
