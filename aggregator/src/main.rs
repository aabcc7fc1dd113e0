//! The `kubenurse-aggregator` binary: flags and environment in, signals in, exit code out.

use std::process::ExitCode;

use kubenurse_aggregator::config::{parse_args, Command, Config};

fn main() -> ExitCode {
    let mut args = match parse_args(std::env::args_os()) {
        Ok(a) => a,
        Err((code, text)) => {
            // --help and --version come here too, with code 0 and stdout as their place.
            if code == 0 {
                print!("{text}");
            } else {
                eprint!("{text}");
            }
            return ExitCode::from(u8::try_from(code).unwrap_or(2));
        }
    };
    if let Some(Command::Check(check)) = args.command.take() {
        return run_check(&check);
    }
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubenurse-aggregator: {e}");
            return ExitCode::from(2);
        }
    };
    kubenurse_common::logging::init(tracing::Level::INFO);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kubenurse-aggregator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kubenurse_aggregator::run(config, None, kubenurse_common::signal::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubenurse-aggregator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `kubenurse-aggregator check`: no logging, one line of verdict (or JSON) on stdout.
fn run_check(args: &kubenurse_aggregator::check::CheckArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kubenurse-aggregator check: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let (outcome, text) = runtime.block_on(kubenurse_aggregator::check::run(args));
    print!("{text}");
    ExitCode::from(outcome.code())
}
