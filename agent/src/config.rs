//! Agent configuration from `KUBENURSE_*` environment variables, validated in one place so a
//! bad value stops the agent at start with the variable's name, never a silent default.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::selector::LabelSelector;
use kubenurse_common::duration::parse_go_duration;
use kubenurse_proto::CheckKind;

/// Every variable the agent reads, with its default and meaning; `--help` prints this table.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    ("KUBENURSE_INGRESS_URL", "", "URL of this kubenurse behind the ingress (me_ingress)"),
    ("KUBENURSE_SERVICE_URL", "", "URL of the kubenurse Service (me_service)"),
    ("KUBENURSE_INSECURE", "false", "skip TLS verification of checked endpoints"),
    ("KUBENURSE_EXTRA_CA", "", "PEM file with extra CA certificates to trust"),
    ("KUBENURSE_NAMESPACE", "", "namespace of the neighbour pods (empty: all namespaces)"),
    ("KUBENURSE_NEIGHBOUR_FILTER", "", "label selector for neighbour pods (empty: all pods)"),
    ("KUBENURSE_NEIGHBOUR_LIMIT", "10", "neighbours checked per node (0: everyone)"),
    ("KUBENURSE_ALLOW_UNSCHEDULABLE", "false", "also check pods on unschedulable nodes (no node watch)"),
    ("KUBENURSE_CHECK_API_SERVER_DIRECT", "true", "check https://$KUBERNETES_SERVICE_HOST:$PORT/version"),
    ("KUBENURSE_CHECK_API_SERVER_DNS", "true", "check https://$KUBERNETES_SERVICE_DNS:$PORT/version"),
    ("KUBENURSE_CHECK_ME_INGRESS", "true", "check $KUBENURSE_INGRESS_URL/alwayshappy"),
    ("KUBENURSE_CHECK_ME_SERVICE", "true", "check $KUBENURSE_SERVICE_URL/alwayshappy"),
    ("KUBENURSE_CHECK_NEIGHBOURHOOD", "true", "check neighbour pods (path_<node>)"),
    ("KUBENURSE_CHECK_INTERVAL", "5s", "time between the starts of two rounds (Go duration)"),
    ("KUBENURSE_CHECK_TIMEOUT", "6s", "timeout of one check (Go duration)"),
    ("KUBENURSE_REUSE_CONNECTIONS", "false", "keep connections alive between rounds"),
    (
        "KUBENURSE_HISTOGRAM_BUCKETS",
        ".005,.01,.025,.05,.1,.25,.5,1,2.5,5,10",
        "comma-separated histogram buckets (seconds)",
    ),
    ("KUBENURSE_VICTORIAMETRICS_HISTOGRAM", "false", "accepted for compatibility; Prometheus buckets are always used"),
    ("KUBENURSE_USE_TLS", "false", "also serve HTTPS on KUBENURSE_HTTPS_PORT; path checks use it"),
    ("KUBENURSE_CERT_FILE", "", "PEM certificate chain for HTTPS (required with USE_TLS)"),
    ("KUBENURSE_CERT_KEY", "", "PEM private key for HTTPS (required with USE_TLS)"),
    ("KUBENURSE_SHUTDOWN_DURATION", "5s", "time /ready answers 503 before the listeners close"),
    ("KUBENURSE_EXTRA_CHECKS", "", "extra checks, name:url|name:url"),
    ("KUBENURSE_EXPOSE_METADATA", "false", "accepted for compatibility"),
    ("KUBERNETES_SERVICE_HOST", "", "API server address (injected by Kubernetes)"),
    ("KUBERNETES_SERVICE_PORT", "443", "API server port (injected by Kubernetes)"),
    ("KUBERNETES_SERVICE_DNS", "kubernetes.default.svc.cluster.local", "API server DNS name"),
    (
        "KUBENURSE_SERVICE_ACCOUNT_DIR",
        "/var/run/secrets/kubernetes.io/serviceaccount",
        "directory with token and ca.crt",
    ),
    ("KUBENURSE_POD_NAME", "(hostname)", "own pod name"),
    ("KUBENURSE_NODE_NAME", "(from own pod)", "own node name"),
    ("KUBENURSE_BIND_ADDRESS", "(all, IPv4 and IPv6)", "address the HTTP(S) listeners bind to"),
    ("KUBENURSE_HTTP_PORT", "8080", "HTTP port, also the port path checks use"),
    ("KUBENURSE_HTTPS_PORT", "8443", "HTTPS port, used by path checks with USE_TLS"),
    (
        "KUBENURSE_AGGREGATOR_URL",
        "",
        "aggregator gRPC URL, http://host:port (empty: off); a name with several addresses streams to each",
    ),
    ("KUBECONFIG", "", "kubeconfig for discovery (else in-cluster config)"),
];

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
    /// The URL fetched as is.
    pub url: http::Uri,
}

impl ExtraCheck {
    /// Its check kind.
    pub fn kind(&self) -> CheckKind {
        CheckKind::Extra { name: self.name.clone() }
    }
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `KUBENURSE_INGRESS_URL`.
    pub ingress_url: Option<String>,
    /// `KUBENURSE_SERVICE_URL`.
    pub service_url: Option<String>,
    /// `KUBENURSE_INSECURE`.
    pub insecure: bool,
    /// `KUBENURSE_EXTRA_CA`.
    pub extra_ca: Option<PathBuf>,
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
    /// `KUBENURSE_USE_TLS`.
    pub use_tls: bool,
    /// `KUBENURSE_CERT_FILE`.
    pub cert_file: Option<PathBuf>,
    /// `KUBENURSE_CERT_KEY`.
    pub cert_key: Option<PathBuf>,
    /// `KUBENURSE_SHUTDOWN_DURATION`.
    pub shutdown_duration: Duration,
    /// `KUBENURSE_EXTRA_CHECKS`.
    pub extra_checks: Vec<ExtraCheck>,
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
    /// `KUBENURSE_AGGREGATOR_URL`: stream results there (empty: off, the agent is then exactly a kubenurse).
    pub aggregator_url: Option<String>,
    /// `KUBENURSE_AGGREGATOR_CA`: the CA (PEM) an https:// aggregator's certificate must chain to.
    pub aggregator_ca: Option<PathBuf>,
}

struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Reader<'_> {
    fn raw(&self, var: &'static str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.is_empty())
    }

    fn err(var: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError { variable: var, value: value.to_string(), reason: reason.into() }
    }

    /// Go's `strconv.ParseBool` spellings; anything else is an error.
    fn bool(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
                _ => Err(Self::err(var, &v, "expected true or false")),
            },
        }
    }

    fn duration(&self, var: &'static str, default: Duration, allow_zero: bool) -> Result<Duration, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => {
                let d = parse_go_duration(&v).map_err(|e| Self::err(var, &v, e.to_string()))?;
                if d.is_zero() && !allow_zero {
                    return Err(Self::err(var, &v, "must be greater than zero"));
                }
                Ok(d)
            }
        }
    }

    fn port(&self, var: &'static str, default: u16) -> Result<u16, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => match v.parse::<u16>() {
                Ok(0) | Err(_) => Err(Self::err(var, &v, "expected a port number 1-65535")),
                Ok(p) => Ok(p),
            },
        }
    }

    fn readable_file(&self, var: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        match self.raw(var) {
            None => Ok(None),
            Some(v) => match std::fs::metadata(&v) {
                Ok(m) if m.is_file() => match std::fs::File::open(&v) {
                    Ok(_) => Ok(Some(PathBuf::from(v))),
                    Err(e) => Err(Self::err(var, &v, format!("cannot read file: {e}"))),
                },
                Ok(_) => Err(Self::err(var, &v, "not a regular file")),
                Err(e) => Err(Self::err(var, &v, format!("cannot read file: {e}"))),
            },
        }
    }
}

fn parse_url(var: &'static str, value: &str) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = value.parse().map_err(|e| Reader::err(var, value, format!("not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(Reader::err(var, value, "URL must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(Reader::err(var, value, "URL has no host"));
    }
    Ok(uri)
}

fn parse_buckets(value: &str) -> Result<Vec<f64>, ConfigError> {
    const VAR: &str = "KUBENURSE_HISTOGRAM_BUCKETS";
    let mut buckets = Vec::new();
    for part in value.split(',') {
        let b: f64 =
            part.trim().parse().map_err(|_| Reader::err(VAR, value, format!("{:?} is not a number", part.trim())))?;
        if !b.is_finite() || b <= 0.0 {
            return Err(Reader::err(VAR, value, "buckets must be positive finite numbers"));
        }
        if buckets.last().is_some_and(|&prev| b <= prev) {
            return Err(Reader::err(VAR, value, "buckets must be strictly increasing"));
        }
        buckets.push(b);
    }
    Ok(buckets)
}

fn parse_extra_checks(value: &str) -> Result<Vec<ExtraCheck>, ConfigError> {
    const VAR: &str = "KUBENURSE_EXTRA_CHECKS";
    let mut checks: Vec<ExtraCheck> = Vec::new();
    for entry in value.split('|') {
        let (name, url) =
            entry.split_once(':').ok_or_else(|| Reader::err(VAR, value, format!("entry {entry:?} is not name:url")))?;
        let name = name.trim();
        CheckKind::extra(name).map_err(|e| Reader::err(VAR, value, e.to_string()))?;
        if checks.iter().any(|c| c.name == name) {
            return Err(Reader::err(VAR, value, format!("check name {name:?} appears twice")));
        }
        let url = parse_url(VAR, url.trim()).map_err(|e| Reader::err(VAR, value, e.reason))?;
        checks.push(ExtraCheck { name: name.to_string(), url });
    }
    Ok(checks)
}

impl Config {
    /// Reads and validates every variable through `lookup` (the process environment in `main`,
    /// a map in tests), so the same rules hold for both.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let r = Reader { lookup };
        let ingress_url = r.raw("KUBENURSE_INGRESS_URL");
        let service_url = r.raw("KUBENURSE_SERVICE_URL");
        if let Some(u) = &ingress_url {
            parse_url("KUBENURSE_INGRESS_URL", u)?;
        }
        if let Some(u) = &service_url {
            parse_url("KUBENURSE_SERVICE_URL", u)?;
        }
        let check_me_ingress = r.bool("KUBENURSE_CHECK_ME_INGRESS", true)?;
        let check_me_service = r.bool("KUBENURSE_CHECK_ME_SERVICE", true)?;
        if check_me_ingress && ingress_url.is_none() {
            return Err(Reader::err(
                "KUBENURSE_INGRESS_URL",
                "",
                "required while KUBENURSE_CHECK_ME_INGRESS is true (set the URL or disable the check)",
            ));
        }
        if check_me_service && service_url.is_none() {
            return Err(Reader::err(
                "KUBENURSE_SERVICE_URL",
                "",
                "required while KUBENURSE_CHECK_ME_SERVICE is true (set the URL or disable the check)",
            ));
        }
        let filter_raw = r.raw("KUBENURSE_NEIGHBOUR_FILTER").unwrap_or_default();
        let neighbour_filter = LabelSelector::parse(&filter_raw)
            .map_err(|e| Reader::err("KUBENURSE_NEIGHBOUR_FILTER", &filter_raw, e.to_string()))?;
        let neighbour_limit = match r.raw("KUBENURSE_NEIGHBOUR_LIMIT") {
            None => 10,
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| Reader::err("KUBENURSE_NEIGHBOUR_LIMIT", &v, "expected a non-negative integer"))?,
        };
        let histogram_buckets = match r.raw("KUBENURSE_HISTOGRAM_BUCKETS") {
            None => DEFAULT_BUCKETS.to_vec(),
            Some(v) => parse_buckets(&v)?,
        };
        let use_tls = r.bool("KUBENURSE_USE_TLS", false)?;
        let cert_file = r.readable_file("KUBENURSE_CERT_FILE")?;
        let cert_key = r.readable_file("KUBENURSE_CERT_KEY")?;
        if use_tls && cert_file.is_none() {
            return Err(Reader::err("KUBENURSE_CERT_FILE", "", "required while KUBENURSE_USE_TLS is true"));
        }
        if use_tls && cert_key.is_none() {
            return Err(Reader::err("KUBENURSE_CERT_KEY", "", "required while KUBENURSE_USE_TLS is true"));
        }
        let extra_checks = match r.raw("KUBENURSE_EXTRA_CHECKS") {
            None => Vec::new(),
            Some(v) => parse_extra_checks(&v)?,
        };
        let check_api_server_direct = r.bool("KUBENURSE_CHECK_API_SERVER_DIRECT", true)?;
        let check_api_server_dns = r.bool("KUBENURSE_CHECK_API_SERVER_DNS", true)?;
        let kubernetes_service_host = r.raw("KUBERNETES_SERVICE_HOST");
        if check_api_server_direct && kubernetes_service_host.is_none() {
            return Err(Reader::err(
                "KUBERNETES_SERVICE_HOST",
                "",
                "required while KUBENURSE_CHECK_API_SERVER_DIRECT is true (Kubernetes sets it in pods)",
            ));
        }
        let check_timeout = r.duration("KUBENURSE_CHECK_TIMEOUT", Duration::from_secs(6), false)?;
        let bind_address = match r.raw("KUBENURSE_BIND_ADDRESS") {
            None => None,
            Some(v) => Some(
                v.parse::<IpAddr>().map_err(|_| Reader::err("KUBENURSE_BIND_ADDRESS", &v, "expected an IP address"))?,
            ),
        };
        let pod_name = match r.raw("KUBENURSE_POD_NAME") {
            Some(p) => p,
            None => hostname()
                .ok_or_else(|| Reader::err("KUBENURSE_POD_NAME", "", "not set and the hostname cannot be read"))?,
        };
        let aggregator_url = r.raw("KUBENURSE_AGGREGATOR_URL");
        let aggregator_ca = r.readable_file("KUBENURSE_AGGREGATOR_CA")?;
        if let Some(list) = &aggregator_url {
            for u in list.split(',') {
                let https = parse_url("KUBENURSE_AGGREGATOR_URL", u.trim())?.scheme_str() == Some("https");
                if https && aggregator_ca.is_none() {
                    return Err(Reader::err(
                        "KUBENURSE_AGGREGATOR_CA",
                        "",
                        format!("required for the https:// aggregator URL {}", u.trim()),
                    ));
                }
            }
        }
        Ok(Self {
            ingress_url,
            service_url,
            insecure: r.bool("KUBENURSE_INSECURE", false)?,
            extra_ca: r.readable_file("KUBENURSE_EXTRA_CA")?,
            namespace: r.raw("KUBENURSE_NAMESPACE"),
            neighbour_filter,
            neighbour_limit,
            allow_unschedulable: r.bool("KUBENURSE_ALLOW_UNSCHEDULABLE", false)?,
            check_api_server_direct,
            check_api_server_dns,
            check_me_ingress,
            check_me_service,
            check_neighbourhood: r.bool("KUBENURSE_CHECK_NEIGHBOURHOOD", true)?,
            check_interval: r.duration("KUBENURSE_CHECK_INTERVAL", Duration::from_secs(5), false)?,
            check_timeout,
            reuse_connections: r.bool("KUBENURSE_REUSE_CONNECTIONS", false)?,
            histogram_buckets,
            use_tls,
            cert_file,
            cert_key,
            shutdown_duration: r.duration("KUBENURSE_SHUTDOWN_DURATION", Duration::from_secs(5), true)?,
            extra_checks,
            kubernetes_service_host,
            kubernetes_service_port: r.port("KUBERNETES_SERVICE_PORT", 443)?,
            kubernetes_service_dns: r
                .raw("KUBERNETES_SERVICE_DNS")
                .unwrap_or_else(|| "kubernetes.default.svc.cluster.local".into()),
            service_account_dir: r
                .raw("KUBENURSE_SERVICE_ACCOUNT_DIR")
                .map_or_else(|| PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount"), PathBuf::from),
            pod_name,
            node_name: r.raw("KUBENURSE_NODE_NAME"),
            bind_address,
            http_port: r.port("KUBENURSE_HTTP_PORT", 8080)?,
            https_port: r.port("KUBENURSE_HTTPS_PORT", 8443)?,
            aggregator_url,
            aggregator_ca,
        })
        .and_then(|c| {
            // Validated last so the reading order above stays simple.
            r.bool("KUBENURSE_VICTORIAMETRICS_HISTOGRAM", false)?;
            r.bool("KUBENURSE_EXPOSE_METADATA", false)?;
            Ok(c)
        })
    }

    /// The `--help` text: every variable with its default.
    pub fn help_text() -> String {
        let mut out = String::from(
            "kubenurse-agent: per-node network health checks (drop-in kubenurse)\n\n\
             Usage: kubenurse-agent [--help]\n\nConfigured by environment variables:\n",
        );
        for (name, default, what) in VARIABLES {
            let default = if default.is_empty() { "(empty)" } else { default };
            out.push_str(&format!("  {name:<38} default {default}\n  {:<38} {what}\n", ""));
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
        assert!(c.check_neighbourhood && !c.insecure && !c.reuse_connections && !c.use_tls);
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
    }

    #[test]
    fn help_lists_every_variable() {
        let help = Config::help_text();
        for (name, _, _) in VARIABLES {
            assert!(help.contains(name));
        }
    }
}
