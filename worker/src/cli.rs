//! What the worker's two binaries (`ferry-worker` and `ferry-api`) start alike: logging,
//! the config load and its one-line errors, and the async runtime.

use std::fmt::Display;
use std::path::Path;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::config::{StageConfig, WorkerConfig};
use crate::consume::Shutdown;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// Loads the config for `command` (`ferry-worker receive`, `ferry-api`, …), whose stage
/// must be `stage`: any problem is one line on stderr, starting with `program` and naming
/// the key, and exit code 2.
pub fn load_config(
    program: &str,
    command: &str,
    path: &Path,
    stage: &str,
) -> Result<WorkerConfig, ExitCode> {
    let config = WorkerConfig::load(path).map_err(|err| {
        eprintln!("{program}: {err}");
        ExitCode::from(2)
    })?;
    let found = match config.stage {
        StageConfig::Receiver(_) => "receiver",
        StageConfig::Processor(_) => "processor",
    };
    if found != stage {
        eprintln!(
            "{program}: config {}: `stage`: `{command}` needs `stage.{stage}`, found `stage.{found}`",
            path.display()
        );
        return Err(ExitCode::from(2));
    }
    Ok(config)
}

/// Runs `service` on a new runtime until it ends, SIGTERM and SIGINT being its `Shutdown`; a
/// failure is logged as `{what} failed` and exits 1.
pub fn run_until_signalled<F, Fut, E>(program: &str, what: &str, service: F) -> Result<(), ExitCode>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    runtime(program)?.block_on(async move {
        let shutdown = Shutdown::from_signals().map_err(|err| {
            tracing::error!(%err, "cannot install signal handlers");
            ExitCode::FAILURE
        })?;
        service(shutdown).await.map_err(|err| {
            tracing::error!(error = %err, "{what} failed");
            ExitCode::FAILURE
        })
    })
}

pub fn runtime(program: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            eprintln!("{program}: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        })
}
