//! The `kubenurse-aggregator` binary: flags and environment in, signals in, exit code out.

use std::process::ExitCode;

use kubenurse_aggregator::config::{parse_args, Command, Config};

/// mimalloc, not the C library's malloc: the aggregator allocates for every result it takes
/// in. With glibc's malloc, 18 % of its CPU went to the allocator (a perf profile of the
/// aggregator_ingest bench, much of it consolidating freed chunks when a snapshot allocates).
/// In the same bench mimalloc took CPU per result from 2.84 to 2.01 µs and the resident memory
/// of 10,000 streams from 599 to 411 MiB. The shipped image is static musl, whose malloc is
/// slower still under threads. The agent keeps the C library's: its memory is mostly code.
/// Built without transparent huge pages (`no_thp`): mimalloc asked for them on its arenas, and
/// 2 MiB pages of which a few KiB are used put 15-35 MiB more in the same bench's resident
/// memory (231-237 against 247-257 MiB after the trials at 100 streams a connection) and
/// bought no speed we could measure.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
