//! Agent configuration from `KUBENURSE_*` environment variables: every variable is declared
//! once in [`vars`] (name, default, parser, `--help` line) and read into typed values here, so a
//! bad value stops the agent at start with the variable's name, never a silent default.

pub mod vars;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use kubenurse_proto::CheckKind;
use rustls::pki_types::CertificateDer;

use crate::pushed::DiscoveryMode;
use crate::selector::LabelSelector;
use crate::tls;
use vars::{DefaultValue, FileContents, Setting};

/// Upstream's default histogram buckets (the Prometheus client default), as `--help` shows them.
pub const DEFAULT_BUCKETS_TEXT: &str = ".005,.01,.025,.05,.1,.25,.5,1,2.5,5,10";

/// Default histogram buckets, the Prometheus client default (upstream's default).
pub const DEFAULT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A configuration value that cannot be used; the message names the variable and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {variable}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment variable's name.
    pub variable: &'static str,
    /// The offending value, as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// An extra check from `KUBENURSE_EXTRA_CHECKS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraCheck {
    /// The check type label, validated by [`CheckKind::extra`].
    pub name: String,
    /// The URL fetched as is, or `tcp://host:port` connected to, or `dns://name` (or
    /// `dns://server:port/name`) looked up.
    pub url: Uri,
}

impl ExtraCheck {
    /// Its check kind.
    pub fn kind(&self) -> CheckKind {
        CheckKind::Extra { name: self.name.clone() }
    }
}

/// Where results are streamed (`KUBENURSE_AGGREGATOR_URL`, `KUBENURSE_AGGREGATOR_CA`).
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    /// One or more `http(s)://host:port` URLs; a host may resolve to several replicas.
    pub urls: Vec<Uri>,
    /// The CA (PEM) an `https://` aggregator's certificate must chain to.
    pub ca_pem: Option<Vec<u8>>,
    /// The projected token proving who we are (read again on every connect).
    pub token_file: Option<PathBuf>,
    /// Client certificate and key files for an aggregator with `--auth mtls`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `KUBENURSE_INGRESS_URL`.
    pub ingress_url: Option<Uri>,
    /// `KUBENURSE_SERVICE_URL`.
    pub service_url: Option<Uri>,
    /// `KUBENURSE_INSECURE`.
    pub insecure: bool,
    /// `KUBENURSE_EXTRA_CA`, parsed.
    pub extra_ca: Vec<CertificateDer<'static>>,
    /// `KUBENURSE_NAMESPACE`; `None` watches all namespaces.
    pub namespace: Option<String>,
    /// `KUBENURSE_NEIGHBOUR_FILTER`, validated.
    pub neighbour_filter: LabelSelector,
    /// `KUBENURSE_NEIGHBOUR_LIMIT`.
    pub neighbour_limit: usize,
    /// `KUBENURSE_ALLOW_UNSCHEDULABLE`.
    pub allow_unschedulable: bool,
    /// `KUBENURSE_CHECK_API_SERVER_DIRECT`.
    pub check_api_server_direct: bool,
    /// `KUBENURSE_CHECK_API_SERVER_DNS`.
    pub check_api_server_dns: bool,
    /// `KUBENURSE_CHECK_ME_INGRESS`.
    pub check_me_ingress: bool,
    /// `KUBENURSE_CHECK_ME_SERVICE`.
    pub check_me_service: bool,
    /// `KUBENURSE_CHECK_NEIGHBOURHOOD`.
    pub check_neighbourhood: bool,
    /// `KUBENURSE_CHECK_INTERVAL`.
    pub check_interval: Duration,
    /// `KUBENURSE_CHECK_TIMEOUT`.
    pub check_timeout: Duration,
    /// `KUBENURSE_REUSE_CONNECTIONS`.
    pub reuse_connections: bool,
    /// `KUBENURSE_HISTOGRAM_BUCKETS`.
    pub histogram_buckets: Vec<f64>,
    /// `KUBENURSE_VICTORIAMETRICS_HISTOGRAM`: validated, then ignored (Prometheus buckets always).
    pub victoriametrics_histogram: bool,
    /// `KUBENURSE_USE_TLS` with `KUBENURSE_CERT_FILE` and `KUBENURSE_CERT_KEY`: the HTTPS
    /// listener's certificate, checked against its key at start.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// `KUBENURSE_SHUTDOWN_DURATION`.
    pub shutdown_duration: Duration,
    /// `KUBENURSE_EXTRA_CHECKS`.
    pub extra_checks: Vec<ExtraCheck>,
    /// `KUBENURSE_EXPOSE_METADATA`: validated, then ignored (upstream's flag, nothing to expose).
    pub expose_metadata: bool,
    /// `KUBERNETES_SERVICE_HOST`.
    pub kubernetes_service_host: Option<String>,
    /// `KUBERNETES_SERVICE_PORT`.
    pub kubernetes_service_port: u16,
    /// `KUBERNETES_SERVICE_DNS`.
    pub kubernetes_service_dns: String,
    /// `KUBENURSE_SERVICE_ACCOUNT_DIR`.
    pub service_account_dir: PathBuf,
    /// `KUBENURSE_POD_NAME` or the hostname.
    pub pod_name: String,
    /// `KUBENURSE_NODE_NAME`; `None` means look it up from the own pod.
    pub node_name: Option<String>,
    /// `KUBENURSE_BIND_ADDRESS`; `None` binds all interfaces (IPv6 dual-stack, else IPv4).
    pub bind_address: Option<IpAddr>,
    /// `KUBENURSE_HTTP_PORT`.
    pub http_port: u16,
    /// `KUBENURSE_HTTPS_PORT`.
    pub https_port: u16,
    /// `KUBENURSE_CHECK_UDP`.
    pub check_udp: bool,
    /// `KUBENURSE_UDP_PORT`: answered always, probed while `check_udp`.
    pub udp_port: u16,
    /// `KUBENURSE_UDP_PACKETS`.
    pub udp_packets: u32,
    /// The stream to the aggregator; `None` (no URL) makes the agent exactly a kubenurse.
    pub aggregator: Option<AggregatorConfig>,
    /// `KUBENURSE_DISCOVERY` (`Local` whenever there is no aggregator).
    pub discovery: DiscoveryMode,
    /// `KUBENURSE_DISCOVERY_FALLBACK_AFTER`.
    pub discovery_fallback_after: Duration,
}

/// Reads declared settings through a lookup (the environment in `main`, a map in tests).
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

fn err(variable: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { variable, value: value.to_string(), reason: reason.into() }
}

impl Reader<'_> {
    fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.is_empty())
    }

    /// The value, or `None` when unset (whatever the declared default: callers of settings
    /// with a `Value` default use [`Reader::get`]).
    fn opt<T>(&self, s: &Setting<T>) -> Result<Option<T>, ConfigError> {
        match self.raw(s.var.name) {
            None => Ok(None),
            Some(v) => (s.parse)(&v).map(Some).map_err(|reason| err(s.var.name, &v, reason)),
        }
    }

    /// The value, or the declared default parsed by the same parser.
    fn get<T>(&self, s: &Setting<T>) -> Result<T, ConfigError> {
        if let Some(v) = self.opt(s)? {
            return Ok(v);
        }
        match s.var.default {
            DefaultValue::Value(d) => {
                (s.parse)(d).map_err(|reason| err(s.var.name, d, format!("built-in default: {reason}")))
            }
            DefaultValue::Unset | DefaultValue::Derived(_) => {
                Err(err(s.var.name, "", "has no default (a bug: read it with opt)"))
            }
        }
    }
}

fn certs(var: &'static str, file: &FileContents) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    tls::certs_from_pem(&file.bytes).map_err(|reason| err(var, &file.path.display().to_string(), reason))
}

impl Config {
    /// Reads and validates every variable through `lookup` (the process environment in `main`,
    /// a map in tests), so the same rules hold for both.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        use vars::*;
        let r = Reader { lookup };
        let ingress_url = r.opt(&INGRESS_URL)?;
        let service_url = r.opt(&SERVICE_URL)?;
        let check_me_ingress = r.get(&CHECK_ME_INGRESS)?;
        let check_me_service = r.get(&CHECK_ME_SERVICE)?;
        if check_me_ingress && ingress_url.is_none() {
            return Err(err(
                INGRESS_URL.var.name,
                "",
                format!("required while {} is true (set the URL or disable the check)", CHECK_ME_INGRESS.var.name),
            ));
        }
        if check_me_service && service_url.is_none() {
            return Err(err(
                SERVICE_URL.var.name,
                "",
                format!("required while {} is true (set the URL or disable the check)", CHECK_ME_SERVICE.var.name),
            ));
        }
        let neighbour_filter = r.get(&NEIGHBOUR_FILTER)?;
        let neighbour_limit = r.get(&NEIGHBOUR_LIMIT)?;
        let histogram_buckets = r.get(&HISTOGRAM_BUCKETS)?;
        let use_tls = r.get(&USE_TLS)?;
        let cert_key = r.opt(&CERT_KEY)?;
        let cert_file = r.opt(&CERT_FILE)?;
        let server_chain = cert_file.as_ref().map(|f| certs(CERT_FILE.var.name, f)).transpose()?;
        let server_tls = match (use_tls, server_chain, cert_key) {
            (false, _, _) => None,
            (true, None, _) => {
                return Err(err(CERT_FILE.var.name, "", format!("required while {} is true", USE_TLS.var.name)))
            }
            (true, _, None) => {
                return Err(err(CERT_KEY.var.name, "", format!("required while {} is true", USE_TLS.var.name)))
            }
            (true, Some(chain), Some(key)) => Some(
                tls::server_config(chain, &key.bytes)
                    .map_err(|reason| err(CERT_KEY.var.name, &key.path.display().to_string(), reason))?,
            ),
        };
        let extra_checks = r.opt(&EXTRA_CHECKS)?.unwrap_or_default();
        let check_api_server_direct = r.get(&CHECK_API_SERVER_DIRECT)?;
        let check_api_server_dns = r.get(&CHECK_API_SERVER_DNS)?;
        let kubernetes_service_host = r.opt(&KUBERNETES_SERVICE_HOST)?;
        if check_api_server_direct && kubernetes_service_host.is_none() {
            return Err(err(
                KUBERNETES_SERVICE_HOST.var.name,
                "",
                format!("required while {} is true (Kubernetes sets it in pods)", CHECK_API_SERVER_DIRECT.var.name),
            ));
        }
        let check_timeout = r.get(&CHECK_TIMEOUT)?;
        let bind_address = r.opt(&BIND_ADDRESS)?;
        let pod_name = match r.opt(&POD_NAME)? {
            Some(p) => p,
            None => hostname().ok_or_else(|| err(POD_NAME.var.name, "", "not set and the hostname cannot be read"))?,
        };
        let aggregator_ca = r.opt(&AGGREGATOR_CA)?;
        if let Some(ca) = &aggregator_ca {
            certs(AGGREGATOR_CA.var.name, ca)?;
        }
        let aggregator = match r.opt(&AGGREGATOR_URL)? {
            None => None,
            Some(urls) => {
                if let Some(https) = urls.iter().find(|u| u.scheme_str() == Some("https")) {
                    if aggregator_ca.is_none() {
                        return Err(err(
                            AGGREGATOR_CA.var.name,
                            "",
                            format!("required for the https:// aggregator URL {https}"),
                        ));
                    }
                }
                let client_cert = match (r.opt(&AGGREGATOR_CERT)?, r.opt(&AGGREGATOR_KEY)?) {
                    (None, None) => None,
                    (Some(cert), Some(key)) => {
                        certs(AGGREGATOR_CERT.var.name, &cert)?;
                        if !String::from_utf8_lossy(&key.bytes).contains("PRIVATE KEY") {
                            return Err(err(
                                AGGREGATOR_KEY.var.name,
                                &key.path.display().to_string(),
                                "no PEM private key in file",
                            ));
                        }
                        if !urls.iter().all(|u| u.scheme_str() == Some("https")) {
                            return Err(err(
                                AGGREGATOR_CERT.var.name,
                                &cert.path.display().to_string(),
                                "a client certificate needs https:// aggregator URLs",
                            ));
                        }
                        Some((cert.path, key.path))
                    }
                    (Some(_), None) => {
                        return Err(err(AGGREGATOR_KEY.var.name, "", "required with KUBENURSE_AGGREGATOR_CERT"))
                    }
                    (None, Some(_)) => {
                        return Err(err(AGGREGATOR_CERT.var.name, "", "required with KUBENURSE_AGGREGATOR_KEY"))
                    }
                };
                let token_file = r.opt(&AGGREGATOR_TOKEN_FILE)?;
                Some(AggregatorConfig { urls, ca_pem: aggregator_ca.map(|f| f.bytes), token_file, client_cert })
            }
        };
        let discovery = match (r.opt(&DISCOVERY)?, &aggregator) {
            (Some(DiscoveryMode::Aggregator), None) => {
                return Err(err(DISCOVERY.var.name, "aggregator", "needs KUBENURSE_AGGREGATOR_URL"))
            }
            // Without an aggregator there is nothing to wait for: auto is local.
            (Some(DiscoveryMode::Auto | DiscoveryMode::Local) | None, None) => DiscoveryMode::Local,
            (Some(mode), Some(_)) => mode,
            (None, Some(_)) => DiscoveryMode::Auto,
        };
        let extra_ca = match r.opt(&EXTRA_CA)? {
            Some(f) => certs(EXTRA_CA.var.name, &f)?,
            None => Vec::new(),
        };
        Ok(Self {
            ingress_url,
            service_url,
            insecure: r.get(&INSECURE)?,
            extra_ca,
            namespace: r.opt(&NAMESPACE)?,
            neighbour_filter,
            neighbour_limit,
            allow_unschedulable: r.get(&ALLOW_UNSCHEDULABLE)?,
            check_api_server_direct,
            check_api_server_dns,
            check_me_ingress,
            check_me_service,
            check_neighbourhood: r.get(&CHECK_NEIGHBOURHOOD)?,
            check_interval: r.get(&CHECK_INTERVAL)?,
            check_timeout,
            reuse_connections: r.get(&REUSE_CONNECTIONS)?,
            histogram_buckets,
            victoriametrics_histogram: r.get(&VICTORIAMETRICS_HISTOGRAM)?,
            server_tls,
            shutdown_duration: r.get(&SHUTDOWN_DURATION)?,
            extra_checks,
            expose_metadata: r.get(&EXPOSE_METADATA)?,
            kubernetes_service_host,
            kubernetes_service_port: r.get(&KUBERNETES_SERVICE_PORT)?,
            check_udp: r.get(&CHECK_UDP)?,
            udp_port: r.get(&UDP_PORT)?,
            udp_packets: r.get(&UDP_PACKETS)?,
            kubernetes_service_dns: r.get(&KUBERNETES_SERVICE_DNS)?,
            service_account_dir: r.get(&SERVICE_ACCOUNT_DIR)?,
            pod_name,
            node_name: r.opt(&NODE_NAME)?,
            bind_address,
            http_port: r.get(&HTTP_PORT)?,
            https_port: r.get(&HTTPS_PORT)?,
            aggregator,
            discovery,
            discovery_fallback_after: r.get(&DISCOVERY_FALLBACK_AFTER)?,
        })
    }

    /// `KUBENURSE_USE_TLS`: the HTTPS listener is on (and path checks use https).
    pub fn use_tls(&self) -> bool {
        self.server_tls.is_some()
    }

    /// The `--help` text: every declared variable with its default.
    pub fn help_text() -> String {
        let mut out = String::from(
            "kubenurse-agent: per-node network health checks (drop-in kubenurse)\n\n\
             Usage: kubenurse-agent [--help]\n\nConfigured by environment variables:\n",
        );
        for var in vars::ALL {
            let default = match var.default_text() {
                "" => "(empty)",
                d => d,
            };
            out.push_str(&format!("  {:<38} default {default}\n  {:<38} {}\n", var.name, "", var.help));
        }
        out.push_str("\nAn invalid value exits with code 2 and names the variable.\n");
        out
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn base() -> HashMap<&'static str, String> {
        HashMap::from([
            ("KUBENURSE_INGRESS_URL", "https://kubenurse.example.com".to_string()),
            ("KUBENURSE_SERVICE_URL", "http://kubenurse.kube-system.svc:8080".to_string()),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1".to_string()),
            ("KUBENURSE_POD_NAME", "kubenurse-abc".to_string()),
        ])
    }

    fn load(vars: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(&|k| vars.get(k).cloned())
    }

    #[test]
    fn defaults_match_upstream() {
        let c = load(&base()).unwrap();
        assert_eq!(c.check_interval, Duration::from_secs(5));
        assert_eq!(c.check_timeout, Duration::from_secs(6));
        assert_eq!(c.shutdown_duration, Duration::from_secs(5));
        assert_eq!(c.neighbour_limit, 10);
        assert_eq!(c.histogram_buckets, DEFAULT_BUCKETS);
        assert_eq!(c.kubernetes_service_dns, "kubernetes.default.svc.cluster.local");
        assert_eq!((c.http_port, c.https_port, c.kubernetes_service_port), (8080, 8443, 443));
        assert!(c.check_neighbourhood && !c.insecure && !c.reuse_connections && !c.use_tls());
        assert_eq!((c.check_udp, c.udp_port, c.udp_packets), (true, 8081, 10));
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases = [
            ("KUBENURSE_CHECK_INTERVAL", "5 seconds"),
            ("KUBENURSE_CHECK_INTERVAL", "0s"),
            ("KUBENURSE_CHECK_TIMEOUT", "x"),
            ("KUBENURSE_SHUTDOWN_DURATION", "-1s"),
            ("KUBENURSE_NEIGHBOUR_LIMIT", "ten"),
            ("KUBENURSE_NEIGHBOUR_LIMIT", "-1"),
            ("KUBENURSE_EXTRA_CHECKS", "nourl"),
            ("KUBENURSE_EXTRA_CHECKS", "a:ftp://x"),
            ("KUBENURSE_EXTRA_CHECKS", "a:http://x|a:http://y"),
            ("KUBENURSE_EXTRA_CA", "/nonexistent/ca.pem"),
            ("KUBENURSE_NEIGHBOUR_FILTER", "app in (x"),
            ("KUBENURSE_HISTOGRAM_BUCKETS", "1,abc"),
            ("KUBENURSE_HISTOGRAM_BUCKETS", "2,1"),
            ("KUBENURSE_INSECURE", "yes"),
            ("KUBENURSE_CHECK_NEIGHBOURHOOD", "nope"),
            ("KUBENURSE_HTTP_PORT", "70000"),
            ("KUBENURSE_BIND_ADDRESS", "localhost"),
            ("KUBENURSE_INGRESS_URL", "not a url"),
            ("KUBENURSE_AGGREGATOR_CA", "/nonexistent/ca.pem"),
            ("KUBENURSE_AGGREGATOR_URL", "aggregator:50051"),
            ("KUBERNETES_SERVICE_PORT", "https"),
            ("KUBENURSE_CHECK_UDP", "maybe"),
            ("KUBENURSE_UDP_PORT", "0x1f91"),
            ("KUBENURSE_UDP_PORT", "65536"),
            ("KUBENURSE_UDP_PACKETS", "0"),
            ("KUBENURSE_UDP_PACKETS", "101"),
            ("KUBENURSE_UDP_PACKETS", "ten"),
        ];
        for (var, value) in cases {
            let mut vars = base();
            vars.insert(var, value.to_string());
            let err = load(&vars).expect_err(&format!("{var}={value} must be rejected"));
            assert_eq!(err.variable, var, "{err}");
            assert!(err.to_string().contains(var) && err.to_string().contains(value), "{err}");
        }
    }

    #[test]
    fn required_companions() {
        let mut vars = base();
        vars.insert("KUBENURSE_USE_TLS", "true".into());
        assert_eq!(load(&vars).unwrap_err().variable, "KUBENURSE_CERT_FILE");
        let mut vars = base();
        vars.remove("KUBENURSE_INGRESS_URL");
        assert_eq!(load(&vars).unwrap_err().variable, "KUBENURSE_INGRESS_URL");
        vars.insert("KUBENURSE_CHECK_ME_INGRESS", "false".into());
        assert!(load(&vars).is_ok());
        vars.insert("KUBENURSE_AGGREGATOR_URL", "https://aggregator.kubenurse.svc:50051".into());
        assert_eq!(load(&vars).unwrap_err().variable, "KUBENURSE_AGGREGATOR_CA");
    }

    #[test]
    fn extra_checks_parse() {
        let mut vars = base();
        vars.insert("KUBENURSE_EXTRA_CHECKS", "google:https://example.org/x|local:http://127.0.0.1:9/version".into());
        let c = load(&vars).unwrap();
        assert_eq!(c.extra_checks.len(), 2);
        assert_eq!(c.extra_checks[1].name, "local");
        assert_eq!(c.extra_checks[1].url.port_u16(), Some(9));
        vars.insert(
            "KUBENURSE_EXTRA_CHECKS",
            "db:tcp://10.0.0.5:5432|coredns:dns://kubernetes.default.svc.cluster.local|ns:dns://10.96.0.10:53/kubernetes.default".into(),
        );
        let c = load(&vars).unwrap();
        assert_eq!(c.extra_checks[0].url.scheme_str(), Some("tcp"));
        assert_eq!(c.extra_checks[1].url.host(), Some("kubernetes.default.svc.cluster.local"));
        for bad in ["db:tcp://10.0.0.5", "ns:dns://coredns:53/kubernetes.default", "ns:dns://not_a_name", "x:udp://a:1"]
        {
            vars.insert("KUBENURSE_EXTRA_CHECKS", bad.into());
            let e = load(&vars).unwrap_err();
            assert_eq!(e.variable, "KUBENURSE_EXTRA_CHECKS", "{bad}");
            assert!(
                e.reason.contains(bad.split_once(':').map_or(bad, |(n, _)| n)),
                "names the entry: {bad}: {}",
                e.reason
            );
        }
    }

    #[test]
    fn help_lists_every_variable() {
        let help = Config::help_text();
        for var in vars::ALL {
            assert!(help.contains(var.name));
        }
    }

    /// Every variable name the agent's source mentions, anywhere (code, messages, docs).
    fn names_in_source() -> std::collections::BTreeSet<String> {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        let mut sources = Vec::new();
        walk(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut sources);
        let mut names = std::collections::BTreeSet::new();
        for text in sources {
            for prefix in ["KUBENURSE_", "KUBERNETES_SERVICE_", "KUBECONFIG"] {
                for (at, _) in text.match_indices(prefix) {
                    let name: String = text[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if text[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                        continue; // part of a longer identifier
                    }
                    let name = name.trim_end_matches('_');
                    // The bare prefixes (in this scan itself) name no variable.
                    if name.len() > prefix.trim_end_matches('_').len() || name == "KUBECONFIG" {
                        names.insert(name.to_string());
                    }
                }
            }
        }
        names
    }

    #[test]
    fn every_variable_the_source_names_is_declared() {
        let declared: Vec<&str> = vars::ALL.iter().map(|v| v.name).collect();
        let named = names_in_source();
        assert!(named.len() >= declared.len(), "the scan found too little: {named:?}");
        for name in &named {
            assert!(
                declared.contains(&name.as_str()),
                "{name} is named in agent/src but not declared in config/vars.rs"
            );
        }
    }
}
