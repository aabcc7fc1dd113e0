//! Shutdown signals: the first SIGTERM or SIGINT starts a graceful shutdown; a second one
//! exits at once (an operator pressing Ctrl-C twice means it).

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Resolves once a stop flag turns true (or its sender is gone): how tasks inside a binary learn
/// that shutdown has begun. The borrow guard is dropped inside, so callers' futures stay `Send`.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Exit code after a second signal: 128 + SIGINT, what a shell reports for an interrupted job.
pub const FORCED_EXIT_CODE: i32 = 130;

/// Resolves on the first SIGTERM or SIGINT. From then on a second one ends the process at once
/// with [`FORCED_EXIT_CODE`]. Where signals cannot be installed it never resolves (the process
/// then runs until killed), and says so in the log.
pub async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot install signal handlers: running until killed");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutdown requested; a second signal exits at once");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("second signal: exiting now");
        std::process::exit(FORCED_EXIT_CODE);
    });
}
