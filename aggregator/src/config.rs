//! Aggregator configuration: flags with environment fallbacks (clap); every value validated at
//! start, errors name the flag and the variable, exit code 2.

use std::net::SocketAddr;

use clap::Parser;
use kubenurse_common::duration::parse_go_duration;

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
    /// PEM certificate chain for TLS on the gRPC port (with --tls-key; without both: plaintext).
    #[arg(long, env = "KUBENURSE_AGGREGATOR_TLS_CERT")]
    pub tls_cert: Option<String>,
    /// PEM private key for TLS on the gRPC port.
    #[arg(long, env = "KUBENURSE_AGGREGATOR_TLS_KEY")]
    pub tls_key: Option<String>,
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
    /// TLS for the gRPC port: (certificate chain PEM, key PEM).
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
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
        let read = |flag, env, path: &str| std::fs::read(path).map_err(|e| err(flag, env, path, e.to_string()));
        let tls =
            match (a.tls_cert.as_deref().filter(|v| !v.is_empty()), a.tls_key.as_deref().filter(|v| !v.is_empty())) {
                (None, None) => None,
                (Some(cert), Some(key)) => {
                    let cert_pem = read("--tls-cert", "KUBENURSE_AGGREGATOR_TLS_CERT", cert)?;
                    let key_pem = read("--tls-key", "KUBENURSE_AGGREGATOR_TLS_KEY", key)?;
                    if !String::from_utf8_lossy(&cert_pem).contains("BEGIN CERTIFICATE") {
                        return Err(err(
                            "--tls-cert",
                            "KUBENURSE_AGGREGATOR_TLS_CERT",
                            cert,
                            "no PEM certificate in file".into(),
                        ));
                    }
                    if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY") {
                        return Err(err(
                            "--tls-key",
                            "KUBENURSE_AGGREGATOR_TLS_KEY",
                            key,
                            "no PEM private key in file".into(),
                        ));
                    }
                    Some((cert_pem, key_pem))
                }
                (Some(cert), None) => {
                    return Err(err(
                        "--tls-key",
                        "KUBENURSE_AGGREGATOR_TLS_KEY",
                        "",
                        format!("required with --tls-cert {cert}"),
                    ))
                }
                (None, Some(key)) => {
                    return Err(err(
                        "--tls-cert",
                        "KUBENURSE_AGGREGATOR_TLS_CERT",
                        "",
                        format!("required with --tls-key {key}"),
                    ))
                }
            };
        Ok(Self {
            tls,
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
