//! The `simverify` binary: parse the command line, set up logging and trace
//! export, run, and turn the outcome into an exit code.

use std::process::ExitCode;

/// glibc's allocator spent about a third of the gateway's CPU time in a
/// warm full-scale stream (fragmentation from batch-sized buffers made it
/// consolidate free chunks over and over); see BENCHMARKS.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use simverify::cli::{Cli, CliError, Command, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rustls needs one process-wide crypto provider; ring is the only one built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(simverify::cli::EXIT_SOFTWARE);
        }
    };
    // Inside the runtime: the trace exporter's channel is one of its tasks.
    let telemetry = {
        let _entered = runtime.enter();
        simverify::telemetry::init(
            &cli.common.log_filter(),
            simverify::cli::stderr_is_tty(),
            // Only the gateway answers calls, so only it has spans to export.
            match &cli.command {
                Command::Serve(a) => a.otlp_endpoint.as_deref(),
                _ => None,
            },
        )
    };
    let telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(simverify::cli::EXIT_USAGE);
        }
    };
    let outcome = runtime.block_on(run(cli));
    // Before the runtime goes: the last spans travel on it.
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::ClosedPipe) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
