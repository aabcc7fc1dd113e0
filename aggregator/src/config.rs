//! Aggregator configuration: flags with environment fallbacks (clap); every value validated at
//! start, errors name the flag and the variable, exit code 2.

use std::net::SocketAddr;

use clap::Parser;
use kubenurse_proto::duration::parse_go_duration;

use crate::state::Settings;

/// Command line (each flag also reads its environment variable).
#[derive(Debug, Parser)]
#[command(
    name = "kubenurse-aggregator",
    version,
    about = "Cluster-wide tier of kubenurse-rs: ingests agent results over gRPC, builds the node-to-node matrix, names suspects."
)]
pub struct Args {
    /// gRPC listen address.
    #[arg(long, env = "KUBENURSE_AGGREGATOR_GRPC_ADDRESS", default_value = "0.0.0.0:50051")]
    pub grpc_address: String,
    /// HTTP listen address (API, /alive, /metrics).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
    pub http_address: String,
    /// Sliding window of the matrix (Go duration).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_WINDOW", default_value = "5m")]
    pub window: String,
    /// Consecutive failing rounds before a cell or node turns failing (and good ones to recover).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_HYSTERESIS", default_value = "2")]
    pub hysteresis: String,
    /// How long a disconnected agent's node stays before it is marked gone (Go duration).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_GONE_AFTER", default_value = "1m")]
    pub gone_after: String,
    /// Latency below which no cell is ever slow, however the cluster median looks (Go duration).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_SLOW_FLOOR", default_value = "20ms")]
    pub slow_floor: String,
}

/// A value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag} / {env} = {value:?}: {reason}")]
pub struct ConfigError {
    flag: &'static str,
    env: &'static str,
    value: String,
    reason: String,
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
}

impl Config {
    /// Validates parsed flags.
    pub fn from_args(a: &Args) -> Result<Self, ConfigError> {
        let err = |flag, env, value: &str, reason: String| ConfigError { flag, env, value: value.to_string(), reason };
        let addr = |flag, env, v: &str| v.parse::<SocketAddr>().map_err(|e| err(flag, env, v, e.to_string()));
        let dur = |flag, env, v: &str| match parse_go_duration(v) {
            Ok(d) if !d.is_zero() => Ok(d.as_micros() as i64),
            Ok(_) => Err(err(flag, env, v, "must be greater than zero".into())),
            Err(e) => Err(err(flag, env, v, e.to_string())),
        };
        let window = dur("--window", "KUBENURSE_AGGREGATOR_WINDOW", &a.window)?;
        if window < 10_000_000 {
            return Err(err("--window", "KUBENURSE_AGGREGATOR_WINDOW", &a.window, "must be at least 10s".into()));
        }
        let hysteresis: u32 = a.hysteresis.parse().ok().filter(|h| (1..=100).contains(h)).ok_or_else(|| {
            err("--hysteresis", "KUBENURSE_AGGREGATOR_HYSTERESIS", &a.hysteresis, "expected 1-100".into())
        })?;
        let gone = dur("--gone-after", "KUBENURSE_AGGREGATOR_GONE_AFTER", &a.gone_after)?;
        let floor = dur("--slow-floor", "KUBENURSE_AGGREGATOR_SLOW_FLOOR", &a.slow_floor)?;
        Ok(Self {
            grpc_address: addr("--grpc-address", "KUBENURSE_AGGREGATOR_GRPC_ADDRESS", &a.grpc_address)?,
            http_address: addr("--http-address", "KUBENURSE_AGGREGATOR_HTTP_ADDRESS", &a.http_address)?,
            settings: Settings {
                window_micros: window,
                hysteresis,
                gone_after_micros: gone,
                drop_after_micros: gone.saturating_mul(10),
                slow_floor_micros: floor as u64,
                ..Settings::default()
            },
        })
    }
}
