//! Aggregator configuration: clap flags with environment fallbacks, typed by their value
//! parsers, defaults taken from [`Settings::default`] (the one home of every tunable's default,
//! which tests and the lab use too). Every bad value exits 2 naming the flag and the variable.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use kubenurse_common::duration::parse_go_duration;

use kubenurse_neighbours::selector::LabelSelector;
use kubenurse_neighbours::vars::{self as shared, parse_bool, parse_limit, parse_selector};

use crate::auth::{AuthMode, Expectation, ServiceAccount, DEFAULT_AUDIENCE};
use crate::conditions::plan::Policy;
use crate::conditions::{ConditionsConfig, NodeConditionsMode};
use crate::discovery::DiscoveryConfig;
use crate::metrics::CellMetrics;
use crate::state::Settings;

/// Shortest window accepted: the window holds ten slots of at least a second.
pub const MIN_WINDOW: Duration = Duration::from_secs(10);

/// A positive Go duration (`5m`, `250ms`), shown the same way in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// From microseconds (the state's unit).
    pub fn from_micros(micros: i64) -> Self {
        Self(Duration::from_micros(u64::try_from(micros).unwrap_or(0)))
    }

    /// In microseconds (the state's unit).
    pub fn micros(self) -> i64 {
        i64::try_from(self.0.as_micros()).unwrap_or(i64::MAX)
    }
}

impl FromStr for GoDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match parse_go_duration(s) {
            Ok(d) if d.is_zero() => Err("must be greater than zero".into()),
            Ok(d) => Ok(Self(d)),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        for (unit, size) in [("h", 3_600_000_000u128), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1_000)] {
            if us >= size && us % size == 0 {
                return write!(f, "{}{unit}", us / size);
            }
        }
        write!(f, "{us}us")
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    s.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| "expected a whole number above 0".into())
}

fn parse_share(s: &str) -> Result<f64, String> {
    s.parse::<f64>().ok().filter(|v| *v > 0.0 && *v <= 1.0).ok_or_else(|| "expected a share above 0, at most 1".into())
}

/// A loss share, `2%` or `0.02`: at least 0, below 1.
fn parse_loss_threshold(s: &str) -> Result<f64, String> {
    let share = match s.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
        None => s.parse::<f64>(),
    };
    share.ok().filter(|v| (0.0..1.0).contains(v)).ok_or_else(|| "expected a share like 2% or 0.02, below 100%".into())
}

fn parse_hysteresis(s: &str) -> Result<u32, String> {
    s.parse::<u32>().ok().filter(|h| (1..=100).contains(h)).ok_or_else(|| "expected 1-100".into())
}

/// What else the binary does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Read a running aggregator's API once and exit 0 when the cluster's network is healthy,
    /// 1 when there is a suspect, coverage is below the limit or too few agents stream, 2 on
    /// bad input or when the aggregator cannot be read (CI pipelines, `helm test`).
    Check(crate::check::CheckArgs),
}

/// Command line (each flag also reads its environment variable).
#[derive(Debug, Parser)]
#[command(
    name = "kubenurse-aggregator",
    version,
    about = "Cluster-wide tier of kubenurse-rs: ingests agent results over gRPC, builds the node-to-node matrix, names suspects.",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// Without a command: run the aggregator.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// gRPC listen address.
    #[arg(long, env = "KUBENURSE_AGGREGATOR_GRPC_ADDRESS", default_value = "0.0.0.0:50051")]
    pub grpc_address: SocketAddr,
    /// HTTP listen address (API, /alive, /metrics).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
    pub http_address: SocketAddr,
    /// Sliding window of the matrix (Go duration, at least 10s).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_WINDOW", default_value_t = GoDuration::from_micros(Settings::default().window_micros))]
    pub window: GoDuration,
    /// Consecutive failing rounds before a cell or node turns failing (and good ones to recover).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_HYSTERESIS", default_value_t = Settings::default().hysteresis, value_parser = parse_hysteresis)]
    pub hysteresis: u32,
    /// How long a disconnected agent's node stays before it is marked gone (Go duration); it is
    /// forgotten after ten times as long.
    #[arg(long, env = "KUBENURSE_AGGREGATOR_GONE_AFTER", default_value_t = GoDuration::from_micros(Settings::default().gone_after_micros))]
    pub gone_after: GoDuration,
    /// The UDP loss a cell is named lossy at (`2%` or 0.02): a sequential test sums the evidence
    /// of every packet, "loses this much" against "loses a quarter of it", to 2 × hysteresis nats.
    #[arg(long, env = "KUBENURSE_AGGREGATOR_LOSS_THRESHOLD", default_value = "2%", value_parser = parse_loss_threshold)]
    pub loss_threshold: f64,
    /// Latency below which no cell is ever slow, however the cluster median looks (Go duration).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_SLOW_FLOOR", default_value_t = GoDuration::from_micros(Settings::default().slow_floor_micros as i64))]
    pub slow_floor: GoDuration,
    /// Most nodes known at once (streaming or targeted): a hello that would add more is refused.
    #[arg(long, env = "KUBENURSE_AGGREGATOR_MAX_NODES", default_value_t = Settings::default().max_nodes, value_parser = parse_positive)]
    pub max_nodes: usize,
    /// Most targets one agent's hello may declare.
    #[arg(long, env = "KUBENURSE_AGGREGATOR_MAX_TARGETS", default_value_t = Settings::default().max_targets, value_parser = parse_positive)]
    pub max_targets: usize,
    /// PEM certificate chain for TLS on the gRPC port (with --tls-key; without both: plaintext).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the gRPC port.
    #[arg(long, env = "KUBENURSE_AGGREGATOR_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// How agents prove who they are: tokenreview (projected service-account tokens checked
    /// with the API server), mtls (client certificates naming the node) or none (anyone may
    /// feed the matrix; only when set explicitly).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_AUTH", value_enum, default_value_t = AuthMode::TokenReview)]
    pub auth: AuthMode,
    /// Audience the agents' tokens must carry (tokenreview).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_AUTH_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub auth_audience: String,
    /// The agents' service account as namespace:name (tokenreview; required there).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_AUTH_SERVICE_ACCOUNT")]
    pub auth_service_account: Option<ServiceAccount>,
    /// PEM CA bundle the agents' client certificates must chain to (mtls; required there, with --tls-cert).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Per-cell series on /metrics: none (the matrix is in /api/v1/matrix) or all (p50, p99 and
    /// error ratio of every targeted cell: 3 × nodes × limit series; the matrix dashboard's).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_CELL_METRICS", value_enum, default_value_t = CellMetrics::None)]
    pub cell_metrics: CellMetrics,
    /// Mark nodes the suspects name with the Node condition KubenurseNetworkProblem and an
    /// Event (off, dry-run: plan, log and count only, or on; one replica writes, by a Lease).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_NODE_CONDITIONS", value_enum, default_value_t = NodeConditionsMode::Off)]
    pub node_conditions: NodeConditionsMode,
    /// Most nodes marked at once, as a share of the nodes (0-1; at least one node): more
    /// suspected nodes than that is not the nodes, and none is marked.
    #[arg(long, env = "KUBENURSE_AGGREGATOR_NODE_CONDITIONS_MAX_SHARE", default_value = "0.1", value_parser = parse_share)]
    pub node_conditions_max_share: f64,
    /// A node's condition stays True at least this long before it clears (Go duration).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_NODE_CONDITIONS_MIN_HOLD", default_value = "5m")]
    pub node_conditions_min_hold: GoDuration,
    /// Watch the agents' Pods and the Nodes once and push each agent its targets (true or
    /// false; uses KUBECONFIG or the in-cluster config).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_DISCOVERY", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub discovery: bool,
    /// Shared with the agents ([`shared::NAMESPACE`]).
    #[arg(long, env = shared::NAMESPACE.name, help = shared::NAMESPACE.help)]
    pub namespace: Option<String>,
    /// Shared with the agents ([`shared::NEIGHBOUR_FILTER`]).
    #[arg(long, env = shared::NEIGHBOUR_FILTER.name, help = shared::NEIGHBOUR_FILTER.help,
          default_value = shared::NEIGHBOUR_FILTER.default_text(), value_parser = parse_selector)]
    pub neighbour_filter: LabelSelector,
    /// Shared with the agents ([`shared::NEIGHBOUR_LIMIT`]).
    #[arg(long, env = shared::NEIGHBOUR_LIMIT.name, help = shared::NEIGHBOUR_LIMIT.help,
          default_value = shared::NEIGHBOUR_LIMIT.default_text(), value_parser = parse_limit)]
    pub neighbour_limit: usize,
    /// Shared with the agents ([`shared::ALLOW_UNSCHEDULABLE`]).
    #[arg(long, env = shared::ALLOW_UNSCHEDULABLE.name, help = shared::ALLOW_UNSCHEDULABLE.help,
          default_value = shared::ALLOW_UNSCHEDULABLE.default_text(), value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub allow_unschedulable: bool,
}

/// A value that cannot be used, naming the flag and its variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag} / {env} = {value:?}: {reason}")]
pub struct ConfigError {
    flag: String,
    env: String,
    value: String,
    reason: String,
}

impl ConfigError {
    /// An error about the argument with clap id `id` (its field name).
    fn new(id: &str, value: impl fmt::Display, reason: impl Into<String>) -> Self {
        let (flag, env) = names(id);
        Self { flag, env, value: value.to_string(), reason: reason.into() }
    }
}

/// The `--flag` and variable of argument `id`, from the one declaration in [`Args`].
pub fn names(id: &str) -> (String, String) {
    let command = Args::command();
    let arg = command.get_arguments().find(|a| a.get_id() == id);
    let flag = arg.and_then(|a| a.get_long()).map_or_else(|| id.to_string(), |l| format!("--{l}"));
    let env = arg.and_then(|a| a.get_env()).map_or_else(String::new, |e| e.to_string_lossy().into_owned());
    (flag, env)
}

/// Parses the command line and environment; on a bad value, the message names the flag and
/// its variable (clap alone names only the flag). `Err` carries the exit code and the text.
pub fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Args, (i32, String)> {
    Args::try_parse_from(args).map_err(|e| {
        let code = e.exit_code();
        let mut text = e.render().to_string();
        if let Some(clap::error::ContextValue::String(arg)) = e.get(clap::error::ContextKind::InvalidArg) {
            let long = arg.trim_start_matches('-').split([' ', '=']).next().unwrap_or_default().to_string();
            let command = Args::command();
            let env = command
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()))
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned());
            if let Some(env) = env {
                text.push_str(&format!("(--{long} can also be set as {env})\n"));
            }
        }
        (code, text)
    })
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listen address.
    pub grpc_address: SocketAddr,
    /// HTTP listen address.
    pub http_address: SocketAddr,
    /// State tunables.
    pub settings: Settings,
    /// TLS for the gRPC port: (certificate chain PEM, key PEM).
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// How streams are authenticated.
    pub auth: AuthConfig,
    /// Pushed discovery (`--discovery true`): what the agents' variables say.
    pub discovery: Option<DiscoveryConfig>,
    /// `--cell-metrics`.
    pub cell_metrics: CellMetrics,
    /// `--node-conditions` (unless off) with its cap and hold.
    pub node_conditions: Option<ConditionsConfig>,
}

/// How streams are authenticated, with what the mode needs.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// `--auth none`.
    None,
    /// `--auth tokenreview`: what reviewed tokens must show.
    TokenReview(Expectation),
    /// `--auth mtls`: the CA bundle (PEM) client certificates must chain to.
    Mtls {
        /// PEM of `--client-ca`.
        client_ca_pem: Vec<u8>,
    },
}

impl AuthConfig {
    /// The mode.
    pub fn mode(&self) -> AuthMode {
        match self {
            Self::None => AuthMode::None,
            Self::TokenReview(_) => AuthMode::TokenReview,
            Self::Mtls { .. } => AuthMode::Mtls,
        }
    }
}

fn read_pem(id: &str, path: &PathBuf, marker: &str, what: &str) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path).map_err(|e| ConfigError::new(id, path.display(), e.to_string()))?;
    if !String::from_utf8_lossy(&pem).contains(marker) {
        return Err(ConfigError::new(id, path.display(), format!("no PEM {what} in file")));
    }
    Ok(pem)
}

impl Config {
    /// Checks what the value parsers cannot (ranges across flags, files) and builds the config.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let Args {
            // Dispatched by `main` before the aggregator's configuration is built.
            command: _,
            grpc_address,
            http_address,
            window,
            hysteresis,
            gone_after,
            loss_threshold,
            slow_floor,
            max_nodes,
            max_targets,
            tls_cert,
            tls_key,
            auth,
            auth_audience,
            auth_service_account,
            client_ca,
            cell_metrics,
            node_conditions,
            node_conditions_max_share,
            node_conditions_min_hold,
            discovery,
            namespace,
            neighbour_filter,
            neighbour_limit,
            allow_unschedulable,
        } = args;
        if window.0 < MIN_WINDOW {
            return Err(ConfigError::new("window", window, format!("must be at least {}", GoDuration(MIN_WINDOW))));
        }
        let tls = match (tls_cert, tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                read_pem("tls_cert", &cert, "BEGIN CERTIFICATE", "certificate")?,
                read_pem("tls_key", &key, "PRIVATE KEY", "private key")?,
            )),
            (Some(cert), None) => {
                return Err(ConfigError::new("tls_key", "", format!("required with --tls-cert {}", cert.display())))
            }
            (None, Some(key)) => {
                return Err(ConfigError::new("tls_cert", "", format!("required with --tls-key {}", key.display())))
            }
        };
        let auth = match auth {
            AuthMode::None => AuthConfig::None,
            AuthMode::TokenReview => {
                if auth_audience.trim().is_empty() {
                    return Err(ConfigError::new("auth_audience", &auth_audience, "must not be empty"));
                }
                let service_account = auth_service_account.ok_or_else(|| {
                    ConfigError::new(
                        "auth_service_account",
                        "",
                        "required with --auth tokenreview (namespace:name of the agents' service account)",
                    )
                })?;
                AuthConfig::TokenReview(Expectation { audience: auth_audience, service_account })
            }
            AuthMode::Mtls => {
                if tls.is_none() {
                    return Err(ConfigError::new("auth", auth, "mtls needs --tls-cert and --tls-key"));
                }
                let path = client_ca.ok_or_else(|| ConfigError::new("client_ca", "", "required with --auth mtls"))?;
                AuthConfig::Mtls { client_ca_pem: read_pem("client_ca", &path, "BEGIN CERTIFICATE", "certificate")? }
            }
        };
        let discovery = discovery.then(|| DiscoveryConfig {
            // Empty is all namespaces, as for the agents.
            namespace: namespace.filter(|ns| !ns.trim().is_empty()),
            neighbour_filter,
            neighbour_limit,
            allow_unschedulable,
        });
        let policy =
            Policy { max_share: node_conditions_max_share, min_hold_micros: node_conditions_min_hold.micros() };
        let node_conditions = match node_conditions {
            NodeConditionsMode::Off => None,
            mode => Some(ConditionsConfig { dry_run: mode == NodeConditionsMode::DryRun, policy }),
        };
        Ok(Self {
            grpc_address,
            http_address,
            tls,
            auth,
            discovery,
            cell_metrics,
            node_conditions,
            settings: Settings {
                window_micros: window.micros(),
                hysteresis,
                gone_after_micros: gone_after.micros(),
                slow_floor_micros: u64::try_from(slow_floor.micros()).unwrap_or(u64::MAX),
                loss_threshold,
                max_nodes,
                max_targets,
                ..Settings::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_settings_defaults() {
        let args =
            Args::try_parse_from(["kubenurse-aggregator", "--auth-service-account", "kubenurse:kubenurse"]).unwrap();
        let config = Config::from_args(args).unwrap();
        let d = Settings::default();
        let s = &config.settings;
        assert_eq!(
            (s.window_micros, s.hysteresis, s.gone_after_micros, s.slow_floor_micros, s.max_nodes, s.max_targets),
            (d.window_micros, d.hysteresis, d.gone_after_micros, d.slow_floor_micros, d.max_nodes, d.max_targets)
        );
        assert_eq!(s.drop_after_micros(), 10 * d.gone_after_micros);
        assert_eq!(s.loss_threshold, d.loss_threshold, "the flag's default is the settings' default");
    }

    #[test]
    fn loss_threshold_takes_percent_or_share_and_refuses_the_rest() {
        assert_eq!(parse_loss_threshold("2%"), Ok(0.02));
        assert_eq!(parse_loss_threshold("0.5"), Ok(0.5));
        assert_eq!(parse_loss_threshold("0%"), Ok(0.0));
        for bad in ["100%", "1", "-1%", "x", "2 %%", ""] {
            assert!(parse_loss_threshold(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn auth_defaults_to_tokenreview_and_each_mode_demands_its_inputs() {
        let parse = |extra: &[&str]| {
            let args = Args::try_parse_from(std::iter::once("kubenurse-aggregator").chain(extra.iter().copied()));
            Config::from_args(args.map_err(|e| e.to_string())?).map_err(|e| e.to_string())
        };
        let c = parse(&["--auth-service-account", "kubenurse:agent"]).unwrap();
        match &c.auth {
            AuthConfig::TokenReview(e) => {
                assert_eq!(e.audience, DEFAULT_AUDIENCE);
                assert_eq!(e.service_account.username(), "system:serviceaccount:kubenurse:agent");
            }
            other => panic!("default auth is {other:?}"),
        }
        let e = parse(&[]).unwrap_err();
        assert!(e.contains("--auth-service-account") && e.contains("KUBENURSE_AGGREGATOR_AUTH_SERVICE_ACCOUNT"), "{e}");
        let e = parse(&["--auth-service-account", "kubenurse:agent", "--auth-audience", " "]).unwrap_err();
        assert!(e.contains("--auth-audience"), "{e}");
        assert!(parse(&["--auth-service-account", "kubenurse"]).is_err());
        assert_eq!(parse(&["--auth", "none"]).unwrap().auth.mode(), AuthMode::None);
        let e = parse(&["--auth", "mtls"]).unwrap_err();
        assert!(e.contains("--tls-cert"), "{e}");
        assert!(parse(&["--auth", "password"]).is_err());
    }

    #[test]
    fn go_durations_print_as_they_parse() {
        for text in ["5m", "1m", "20ms", "1h", "90s", "1500us"] {
            let d: GoDuration = text.parse().unwrap();
            assert_eq!(d.to_string().parse::<GoDuration>(), Ok(d), "{text}");
        }
        assert_eq!(GoDuration(Duration::from_secs(300)).to_string(), "5m");
        assert!("0s".parse::<GoDuration>().is_err());
    }

    #[test]
    fn every_variable_the_source_names_is_declared() {
        let declared: Vec<String> =
            Args::command().get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into()).collect();
        let mut sources = String::new();
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src")).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(entry.path()).unwrap());
            }
        }
        let named: std::collections::BTreeSet<String> = sources
            .match_indices("KUBENURSE_")
            .map(|(at, _)| {
                sources[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect()
            })
            // The bare prefix (in this scan itself) names no variable.
            .filter(|name: &String| name.trim_end_matches('_') != "KUBENURSE")
            .collect();
        assert!(named.len() >= declared.len(), "{named:?}");
        for name in named {
            assert!(declared.contains(&name), "{name} is named in aggregator/src but not declared in Args");
        }
    }
}
