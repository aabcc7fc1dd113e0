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

use crate::config::Config;
use crate::discovery::NeighbourhoodView;
use crate::metrics::Metrics;
use crate::probe::{ProbeClient, ProbeResult};
use crate::ring::Neighbour;
use crate::trace::FailureKind;

/// Header telling the neighbour who checked it (upstream's name).
pub const ORIGIN_HEADER: &str = "KUBENURSE-NEIGHBOUR-ORIGIN";
/// The `/alive` value of a disabled check.
pub const SKIPPED: &str = "skipped";

/// One check to run this round.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    /// What is checked; its label is the metric `type` and the `/alive` key.
    pub kind: CheckKind,
    /// What to GET.
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
}

impl RoundResult {
    /// True when every check is ok or skipped and the neighbourhood is known.
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

/// Runs rounds with one client and one config.
pub struct Checker {
    config: Arc<Config>,
    client: ProbeClient,
    metrics: Arc<Metrics>,
    token_path: PathBuf,
}

impl Checker {
    /// A checker for `config`, recording into `metrics`.
    pub fn new(config: Arc<Config>, client: ProbeClient, metrics: Arc<Metrics>) -> Self {
        let token_path = config.service_account_dir.join("token");
        Self { config, client, metrics, token_path }
    }

    /// The checks of a round, given the neighbours to check; disabled checks are listed as skipped.
    pub fn plan(&self, neighbours: &[Neighbour]) -> (Vec<CheckSpec>, Vec<CheckKind>) {
        let c = &self.config;
        let mut specs = Vec::new();
        let mut skipped = Vec::new();
        let mut add = |kind: CheckKind, url: Option<String>| match url.map(|u| (u.parse::<Uri>(), u)) {
            Some((Ok(url), _)) => specs.push(CheckSpec { kind, url }),
            Some((Err(e), url)) => warn!(check = %kind, url = %url, error = %e, "cannot build check URL"),
            None => skipped.push(kind),
        };
        let api_url = |host: &str| format!("https://{}/version", host_port(host, c.kubernetes_service_port));
        add(
            CheckKind::ApiServerDirect,
            c.kubernetes_service_host.as_deref().filter(|_| c.check_api_server_direct).map(api_url),
        );
        add(CheckKind::ApiServerDns, c.check_api_server_dns.then(|| api_url(&c.kubernetes_service_dns)));
        let happy =
            |url: &Option<String>, on: bool| url.as_deref().filter(|_| on).map(|u| join_path(u, "/alwayshappy"));
        add(CheckKind::MeIngress, happy(&c.ingress_url, c.check_me_ingress));
        add(CheckKind::MeService, happy(&c.service_url, c.check_me_service));
        for extra in &c.extra_checks {
            specs.push(CheckSpec { kind: extra.kind(), url: extra.url.clone() });
        }
        let (scheme, port) = if c.use_tls { ("https", c.https_port) } else { ("http", c.http_port) };
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
        (specs, skipped)
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
        let (specs, skipped) = self.plan(&neighbourhood);
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
        RoundResult { started_at, took: start.elapsed(), values, neighbourhood_state, neighbourhood, outcomes }
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
            if let Ok(v) = HeaderValue::from_str(&self.config.pod_name) {
                headers.insert(ORIGIN_HEADER, v);
            }
        }
        let probe = self.client.get(&spec.url, &headers, self.config.check_timeout).await;
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
