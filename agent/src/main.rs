//! The `kubenurse-agent` binary: environment in, signals in, exit code out.

use std::process::ExitCode;

use kubenurse_agent::config::Config;

fn main() -> ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{}", Config::help_text());
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("kubenurse-agent {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("kubenurse-agent: unknown argument {other:?}; configuration is by environment variables, see --help");
                return ExitCode::from(2);
            }
        }
    }
    let config = match Config::from_lookup(&|name| std::env::var(name).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubenurse-agent: {e}");
            return ExitCode::from(2);
        }
    };
    kubenurse_common::logging::init(tracing::Level::INFO);
    // Two workers: a check's timing must not wait for another check's CPU work.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kubenurse-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kubenurse_agent::run(config, None, kubenurse_common::signal::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubenurse-agent: {e}");
            match e {
                kubenurse_agent::AgentError::Tls(_) | kubenurse_agent::AgentError::KubeConfig(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
