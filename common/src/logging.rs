//! Log initialisation: structured lines on stderr, filtered by `RUST_LOG` in every binary.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// The variable that sets the log filter (`info`, `warn,kube=error`, …).
pub const LOG_FILTER_VARIABLE: &str = "RUST_LOG";

/// Parses a `RUST_LOG` value; `None` (unset or empty) means `default`.
pub fn parse_filter(value: Option<&str>, default: tracing::Level) -> Result<Targets, String> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(Targets::new().with_default(default)),
        Some(v) => v.parse::<Targets>().map_err(|e| format!("invalid {LOG_FILTER_VARIABLE}={v:?}: {e}")),
    }
}

/// Installs the global subscriber with the filter from `RUST_LOG` (else `default`). An invalid
/// filter is reported on stderr and the default is used, so a typo never silences the logs.
pub fn init(default: tracing::Level) {
    let value = std::env::var(LOG_FILTER_VARIABLE).ok();
    let filter = parse_filter(value.as_deref(), default).unwrap_or_else(|e| {
        eprintln!("{e}; logging at {default}");
        Targets::new().with_default(default)
    });
    // A second init (tests starting several components in one process) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::io::stderr))
        .with(filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_or_fail_loudly() {
        assert!(parse_filter(None, tracing::Level::INFO).is_ok());
        assert!(parse_filter(Some(""), tracing::Level::INFO).is_ok());
        assert!(parse_filter(Some("warn,kube=error"), tracing::Level::INFO).is_ok());
        let err = parse_filter(Some("kube=loud"), tracing::Level::INFO).unwrap_err();
        assert!(err.contains("RUST_LOG") && err.contains("kube=loud"), "{err}");
    }
}
