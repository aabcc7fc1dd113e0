//! Every variable the agent reads, declared once: its name, its default, how it is parsed and
//! its `--help` line. Reading goes through these declarations only, so `--help` cannot drift
//! from the code (a test scans the source for names that are not declared here).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use kubenurse_common::duration::parse_go_duration;

use super::{ExtraCheck, DEFAULT_BUCKETS_TEXT};
use crate::pushed::DiscoveryMode;
use crate::selector::LabelSelector;
use kubenurse_neighbours::vars::{self as shared, SharedVar};

/// What a variable is when it is unset or empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// This value, parsed like a given one.
    Value(&'static str),
    /// Nothing (the feature is off, or the value is optional).
    Unset,
    /// Worked out at start; the text says from what (`(hostname)`).
    Derived(&'static str),
}

/// A variable's name, default and `--help` text.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    /// The environment variable.
    pub name: &'static str,
    /// Its default.
    pub default: DefaultValue,
    /// One line for `--help`.
    pub help: &'static str,
}

impl Var {
    /// The default as `--help` shows it.
    pub fn default_text(&self) -> &'static str {
        match self.default {
            DefaultValue::Value(v) => v,
            DefaultValue::Unset => "",
            DefaultValue::Derived(how) => how,
        }
    }
}

/// A declared variable with the parser of its values (the error is the reason, without the name).
pub struct Setting<T> {
    /// Name, default, help.
    pub var: Var,
    /// Turns a non-empty value into the typed one.
    pub parse: fn(&str) -> Result<T, String>,
}

const fn setting<T>(
    name: &'static str,
    default: DefaultValue,
    help: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Setting<T> {
    Setting { var: Var { name, default, help }, parse }
}

/// A variable the aggregator reads too: its name, default and help come from the shared one.
const fn shared_setting<T>(var: SharedVar, parse: fn(&str) -> Result<T, String>) -> Setting<T> {
    let default = match var.default {
        Some(v) => Value(v),
        None => Unset,
    };
    setting(var.name, default, var.help, parse)
}

use DefaultValue::{Derived, Unset, Value};

/// Go's `strconv.ParseBool` spellings; anything else is an error.
pub use shared::parse_bool;

fn parse_interval(v: &str) -> Result<Duration, String> {
    match parse_go_duration(v).map_err(|e| e.to_string())? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

fn parse_wait(v: &str) -> Result<Duration, String> {
    parse_go_duration(v).map_err(|e| e.to_string())
}

fn parse_port(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(0) | Err(_) => Err("expected a port number 1-65535".into()),
        Ok(p) => Ok(p),
    }
}

fn parse_udp_packets(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if (1..=kubenurse_proto::MAX_UDP_PACKETS).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number 1-{}", kubenurse_proto::MAX_UDP_PACKETS)),
    }
}

fn parse_text(v: &str) -> Result<String, String> {
    Ok(v.to_string())
}

fn parse_path(v: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(v))
}

fn parse_ip(v: &str) -> Result<IpAddr, String> {
    v.parse::<IpAddr>().map_err(|_| "expected an IP address".into())
}

/// An `http://` or `https://` URL with a host.
pub fn parse_url(value: &str) -> Result<Uri, String> {
    let uri: Uri = value.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("URL must start with http:// or https://".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("URL has no host".into());
    }
    Ok(uri)
}

/// Comma-separated aggregator URLs.
fn parse_url_list(value: &str) -> Result<Vec<Uri>, String> {
    value.split(',').map(|u| parse_url(u.trim())).collect()
}

/// A readable regular file's contents.
pub fn read_file(path: &str) -> Result<Vec<u8>, String> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err("not a regular file".into()),
        Ok(_) => std::fs::read(path).map_err(|e| format!("cannot read file: {e}")),
        Err(e) => Err(format!("cannot read file: {e}")),
    }
}

/// A file read at start, kept with its path for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContents {
    /// Where it was read.
    pub path: PathBuf,
    /// What it held.
    pub bytes: Vec<u8>,
}

fn parse_file(v: &str) -> Result<FileContents, String> {
    Ok(FileContents { path: PathBuf::from(v), bytes: read_file(v)? })
}

/// A token file that exists and holds a token now (it is read again on every connect).
pub fn parse_token_file(v: &str) -> Result<PathBuf, String> {
    read_token(Path::new(v))?;
    Ok(PathBuf::from(v))
}

/// The token in `path`, without surrounding whitespace; an empty one is an error.
pub fn read_token(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if token.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(format!("{} holds characters a bearer token cannot have", path.display()));
    }
    Ok(token.to_string())
}

/// Strictly increasing positive bucket bounds, in seconds.
pub fn parse_buckets(value: &str) -> Result<Vec<f64>, String> {
    let mut buckets = Vec::new();
    for part in value.split(',') {
        let b: f64 = part.trim().parse().map_err(|_| format!("{:?} is not a number", part.trim()))?;
        if !b.is_finite() || b <= 0.0 {
            return Err("buckets must be positive finite numbers".into());
        }
        if buckets.last().is_some_and(|&prev| b <= prev) {
            return Err("buckets must be strictly increasing".into());
        }
        buckets.push(b);
    }
    Ok(buckets)
}

/// `name:url|name:url`, names unique and valid check kinds.
pub fn parse_extra_checks(value: &str) -> Result<Vec<ExtraCheck>, String> {
    let mut checks: Vec<ExtraCheck> = Vec::new();
    for entry in value.split('|') {
        let (name, url) = entry.split_once(':').ok_or_else(|| format!("entry {entry:?} is not name:url"))?;
        let name = name.trim();
        kubenurse_proto::CheckKind::extra(name).map_err(|e| e.to_string())?;
        if checks.iter().any(|c| c.name == name) {
            return Err(format!("check name {name:?} appears twice"));
        }
        let url = url.trim();
        let url = if url.starts_with("tcp://") || url.starts_with("dns://") {
            let uri: Uri = url.parse().map_err(|e| format!("entry {entry:?}: not a URL: {e}"))?;
            crate::extra::validate(&uri).map_err(|e| format!("entry {entry:?}: {e}"))?;
            uri
        } else {
            parse_url(url).map_err(|e| format!("entry {entry:?}: {e}"))?
        };
        checks.push(ExtraCheck { name: name.to_string(), url });
    }
    Ok(checks)
}

/// `KUBENURSE_INGRESS_URL`.
pub const INGRESS_URL: Setting<Uri> =
    setting("KUBENURSE_INGRESS_URL", Unset, "URL of this kubenurse behind the ingress (me_ingress)", parse_url);
/// `KUBENURSE_SERVICE_URL`.
pub const SERVICE_URL: Setting<Uri> =
    setting("KUBENURSE_SERVICE_URL", Unset, "URL of the kubenurse Service (me_service)", parse_url);
/// `KUBENURSE_INSECURE`.
pub const INSECURE: Setting<bool> =
    setting("KUBENURSE_INSECURE", Value("false"), "skip TLS verification of checked endpoints", parse_bool);
/// `KUBENURSE_EXTRA_CA`.
pub const EXTRA_CA: Setting<FileContents> =
    setting("KUBENURSE_EXTRA_CA", Unset, "PEM file with extra CA certificates to trust", parse_file);
/// `KUBENURSE_NAMESPACE` (shared with the aggregator).
pub const NAMESPACE: Setting<String> = shared_setting(shared::NAMESPACE, parse_text);
/// `KUBENURSE_NEIGHBOUR_FILTER` (shared with the aggregator).
pub const NEIGHBOUR_FILTER: Setting<LabelSelector> = shared_setting(shared::NEIGHBOUR_FILTER, shared::parse_selector);
/// `KUBENURSE_NEIGHBOUR_LIMIT` (shared with the aggregator).
pub const NEIGHBOUR_LIMIT: Setting<usize> = shared_setting(shared::NEIGHBOUR_LIMIT, shared::parse_limit);
/// `KUBENURSE_ALLOW_UNSCHEDULABLE` (shared with the aggregator).
pub const ALLOW_UNSCHEDULABLE: Setting<bool> = shared_setting(shared::ALLOW_UNSCHEDULABLE, parse_bool);
/// `KUBENURSE_CHECK_API_SERVER_DIRECT`.
pub const CHECK_API_SERVER_DIRECT: Setting<bool> = setting(
    "KUBENURSE_CHECK_API_SERVER_DIRECT",
    Value("true"),
    "check https://$KUBERNETES_SERVICE_HOST:$PORT/version",
    parse_bool,
);
/// `KUBENURSE_CHECK_API_SERVER_DNS`.
pub const CHECK_API_SERVER_DNS: Setting<bool> = setting(
    "KUBENURSE_CHECK_API_SERVER_DNS",
    Value("true"),
    "check https://$KUBERNETES_SERVICE_DNS:$PORT/version",
    parse_bool,
);
/// `KUBENURSE_CHECK_ME_INGRESS`.
pub const CHECK_ME_INGRESS: Setting<bool> =
    setting("KUBENURSE_CHECK_ME_INGRESS", Value("true"), "check $KUBENURSE_INGRESS_URL/alwayshappy", parse_bool);
/// `KUBENURSE_CHECK_ME_SERVICE`.
pub const CHECK_ME_SERVICE: Setting<bool> =
    setting("KUBENURSE_CHECK_ME_SERVICE", Value("true"), "check $KUBENURSE_SERVICE_URL/alwayshappy", parse_bool);
/// `KUBENURSE_CHECK_NEIGHBOURHOOD`.
pub const CHECK_NEIGHBOURHOOD: Setting<bool> =
    setting("KUBENURSE_CHECK_NEIGHBOURHOOD", Value("true"), "check neighbour pods (path_<node>)", parse_bool);
/// `KUBENURSE_CHECK_INTERVAL`.
pub const CHECK_INTERVAL: Setting<Duration> = setting(
    "KUBENURSE_CHECK_INTERVAL",
    Value("5s"),
    "time between the starts of two rounds (Go duration)",
    parse_interval,
);
/// `KUBENURSE_CHECK_TIMEOUT`.
pub const CHECK_TIMEOUT: Setting<Duration> =
    setting("KUBENURSE_CHECK_TIMEOUT", Value("6s"), "timeout of one check (Go duration)", parse_interval);
/// `KUBENURSE_REUSE_CONNECTIONS`.
pub const REUSE_CONNECTIONS: Setting<bool> =
    setting("KUBENURSE_REUSE_CONNECTIONS", Value("false"), "keep connections alive between rounds", parse_bool);
/// `KUBENURSE_HISTOGRAM_BUCKETS`.
pub const HISTOGRAM_BUCKETS: Setting<Vec<f64>> = setting(
    "KUBENURSE_HISTOGRAM_BUCKETS",
    Value(DEFAULT_BUCKETS_TEXT),
    "comma-separated histogram buckets (seconds)",
    parse_buckets,
);
/// `KUBENURSE_VICTORIAMETRICS_HISTOGRAM`.
pub const VICTORIAMETRICS_HISTOGRAM: Setting<bool> = setting(
    "KUBENURSE_VICTORIAMETRICS_HISTOGRAM",
    Value("false"),
    "accepted for compatibility; Prometheus buckets are always used",
    parse_bool,
);
/// `KUBENURSE_USE_TLS`.
pub const USE_TLS: Setting<bool> = setting(
    "KUBENURSE_USE_TLS",
    Value("false"),
    "also serve HTTPS on KUBENURSE_HTTPS_PORT; path checks use it",
    parse_bool,
);
/// `KUBENURSE_CERT_FILE`.
pub const CERT_FILE: Setting<FileContents> =
    setting("KUBENURSE_CERT_FILE", Unset, "PEM certificate chain for HTTPS (required with USE_TLS)", parse_file);
/// `KUBENURSE_CERT_KEY`.
pub const CERT_KEY: Setting<FileContents> =
    setting("KUBENURSE_CERT_KEY", Unset, "PEM private key for HTTPS (required with USE_TLS)", parse_file);
/// `KUBENURSE_SHUTDOWN_DURATION`.
pub const SHUTDOWN_DURATION: Setting<Duration> = setting(
    "KUBENURSE_SHUTDOWN_DURATION",
    Value("5s"),
    "time /ready answers 503 before the listeners close",
    parse_wait,
);
/// `KUBENURSE_EXTRA_CHECKS`.
pub const EXTRA_CHECKS: Setting<Vec<ExtraCheck>> = setting(
    "KUBENURSE_EXTRA_CHECKS",
    Unset,
    "extra checks, name:url|name:tcp://host:port|name:dns://name|name:dns://server:port/name",
    parse_extra_checks,
);
/// `KUBENURSE_EXPOSE_METADATA`.
pub const EXPOSE_METADATA: Setting<bool> =
    setting("KUBENURSE_EXPOSE_METADATA", Value("false"), "accepted for compatibility", parse_bool);
/// `KUBERNETES_SERVICE_HOST`.
pub const KUBERNETES_SERVICE_HOST: Setting<String> =
    setting("KUBERNETES_SERVICE_HOST", Unset, "API server address (injected by Kubernetes)", parse_text);
/// `KUBERNETES_SERVICE_PORT`.
pub const KUBERNETES_SERVICE_PORT: Setting<u16> =
    setting("KUBERNETES_SERVICE_PORT", Value("443"), "API server port (injected by Kubernetes)", parse_port);
/// `KUBERNETES_SERVICE_DNS`.
pub const KUBERNETES_SERVICE_DNS: Setting<String> =
    setting("KUBERNETES_SERVICE_DNS", Value("kubernetes.default.svc.cluster.local"), "API server DNS name", parse_text);
/// `KUBENURSE_SERVICE_ACCOUNT_DIR`.
pub const SERVICE_ACCOUNT_DIR: Setting<PathBuf> = setting(
    "KUBENURSE_SERVICE_ACCOUNT_DIR",
    Value("/var/run/secrets/kubernetes.io/serviceaccount"),
    "directory with token and ca.crt",
    parse_path,
);
/// `KUBENURSE_POD_NAME`.
pub const POD_NAME: Setting<String> = setting("KUBENURSE_POD_NAME", Derived("(hostname)"), "own pod name", parse_text);
/// `KUBENURSE_NODE_NAME`.
pub const NODE_NAME: Setting<String> =
    setting("KUBENURSE_NODE_NAME", Derived("(from own pod)"), "own node name", parse_text);
/// `KUBENURSE_BIND_ADDRESS`.
pub const BIND_ADDRESS: Setting<IpAddr> = setting(
    "KUBENURSE_BIND_ADDRESS",
    Derived("(all, IPv4 and IPv6)"),
    "address the HTTP(S) listeners bind to",
    parse_ip,
);
/// `KUBENURSE_HTTP_PORT`.
pub const HTTP_PORT: Setting<u16> =
    setting("KUBENURSE_HTTP_PORT", Value("8080"), "HTTP port, also the port path checks use", parse_port);
/// `KUBENURSE_HTTPS_PORT`.
pub const HTTPS_PORT: Setting<u16> =
    setting("KUBENURSE_HTTPS_PORT", Value("8443"), "HTTPS port, used by path checks with USE_TLS", parse_port);
/// `KUBENURSE_CHECK_UDP`.
pub const CHECK_UDP: Setting<bool> = setting(
    "KUBENURSE_CHECK_UDP",
    Value("true"),
    "send UDP echo packets to every path neighbour each round (loss, path_<node>_udp)",
    parse_bool,
);
/// `KUBENURSE_UDP_PORT`.
pub const UDP_PORT: Setting<u16> = setting(
    "KUBENURSE_UDP_PORT",
    Value("8081"),
    "UDP echo port, answered always; the port UDP probes go to",
    parse_port,
);
/// `KUBENURSE_UDP_PACKETS`.
pub const UDP_PACKETS: Setting<u32> = setting(
    "KUBENURSE_UDP_PACKETS",
    Value("10"),
    "UDP echo packets per neighbour per round, spread over half the interval (1-100)",
    parse_udp_packets,
);
/// `KUBENURSE_AGGREGATOR_URL`.
pub const AGGREGATOR_URL: Setting<Vec<Uri>> = setting(
    "KUBENURSE_AGGREGATOR_URL",
    Unset,
    "aggregator gRPC URL(s), http(s)://host:port, comma-separated (empty: off); a name with several addresses streams to each",
    parse_url_list,
);
/// `KUBENURSE_AGGREGATOR_CA`.
pub const AGGREGATOR_CA: Setting<FileContents> = setting(
    "KUBENURSE_AGGREGATOR_CA",
    Unset,
    "PEM CA an https:// aggregator's certificate must chain to (required with https://)",
    parse_file,
);
/// `KUBENURSE_AGGREGATOR_TOKEN_FILE`.
pub const AGGREGATOR_TOKEN_FILE: Setting<PathBuf> = setting(
    "KUBENURSE_AGGREGATOR_TOKEN_FILE",
    Unset,
    "projected service-account token sent as the stream's bearer token (read again on every connect, so rotation is taken up)",
    parse_token_file,
);
/// `KUBENURSE_AGGREGATOR_CERT`.
pub const AGGREGATOR_CERT: Setting<FileContents> = setting(
    "KUBENURSE_AGGREGATOR_CERT",
    Unset,
    "PEM client certificate for an aggregator with --auth mtls (with KUBENURSE_AGGREGATOR_KEY; read again on every connect)",
    parse_file,
);
/// `KUBENURSE_AGGREGATOR_KEY`.
pub const AGGREGATOR_KEY: Setting<FileContents> =
    setting("KUBENURSE_AGGREGATOR_KEY", Unset, "PEM private key of KUBENURSE_AGGREGATOR_CERT", parse_file);
/// `KUBENURSE_DISCOVERY`.
pub const DISCOVERY: Setting<DiscoveryMode> = setting(
    "KUBENURSE_DISCOVERY",
    Derived("(auto with KUBENURSE_AGGREGATOR_URL, else local)"),
    "where neighbours come from: auto (the aggregator's pushed targets, local watches after it has been unreachable for KUBENURSE_DISCOVERY_FALLBACK_AFTER), local (watch Pods and Nodes, upstream's way) or aggregator (pushed targets only)",
    DiscoveryMode::parse,
);
/// `KUBENURSE_DISCOVERY_FALLBACK_AFTER`.
pub const DISCOVERY_FALLBACK_AFTER: Setting<Duration> = setting(
    "KUBENURSE_DISCOVERY_FALLBACK_AFTER",
    Value("60s"),
    "auto: how long without pushed targets before local watches start, plus a random share of it (Go duration)",
    parse_interval,
);
/// `KUBECONFIG`, read by the Kubernetes client itself (not parsed here).
pub const KUBECONFIG: Var = Var {
    name: "KUBECONFIG",
    default: Derived("(in-cluster config)"),
    help: "kubeconfig for discovery (else the in-cluster config)",
};

/// Every variable, in `--help` order.
pub const ALL: &[Var] = &[
    INGRESS_URL.var,
    SERVICE_URL.var,
    INSECURE.var,
    EXTRA_CA.var,
    NAMESPACE.var,
    NEIGHBOUR_FILTER.var,
    NEIGHBOUR_LIMIT.var,
    ALLOW_UNSCHEDULABLE.var,
    CHECK_API_SERVER_DIRECT.var,
    CHECK_API_SERVER_DNS.var,
    CHECK_ME_INGRESS.var,
    CHECK_ME_SERVICE.var,
    CHECK_NEIGHBOURHOOD.var,
    CHECK_INTERVAL.var,
    CHECK_TIMEOUT.var,
    REUSE_CONNECTIONS.var,
    HISTOGRAM_BUCKETS.var,
    VICTORIAMETRICS_HISTOGRAM.var,
    USE_TLS.var,
    CERT_FILE.var,
    CERT_KEY.var,
    SHUTDOWN_DURATION.var,
    EXTRA_CHECKS.var,
    EXPOSE_METADATA.var,
    KUBERNETES_SERVICE_HOST.var,
    KUBERNETES_SERVICE_PORT.var,
    KUBERNETES_SERVICE_DNS.var,
    SERVICE_ACCOUNT_DIR.var,
    POD_NAME.var,
    NODE_NAME.var,
    BIND_ADDRESS.var,
    HTTP_PORT.var,
    HTTPS_PORT.var,
    CHECK_UDP.var,
    UDP_PORT.var,
    UDP_PACKETS.var,
    AGGREGATOR_URL.var,
    AGGREGATOR_CA.var,
    AGGREGATOR_TOKEN_FILE.var,
    AGGREGATOR_CERT.var,
    AGGREGATOR_KEY.var,
    DISCOVERY.var,
    DISCOVERY_FALLBACK_AFTER.var,
    KUBECONFIG,
];
