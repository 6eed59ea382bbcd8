//! `ferry-api`: the read API over one Pipeline's data (docs/read-api.md), stateless and
//! read-only. A binary of its own so that it can have its own allocator: under concurrent
//! requests glibc malloc's arena locks cost it about a quarter of its throughput, while the
//! receivers gain nothing from mimalloc and hold more memory with it (bench/README.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use ferry_worker::cli::{self, LogFormat};
use ferry_worker::duration::HumanDuration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PROGRAM: &str = "ferry-api";

/// Ferry's read API: reads one Pipeline's data with its receiver's config (Redis, key
/// prefix, storage, format); the processors' names say which of their keys it reads.
#[derive(Debug, Parser)]
#[command(name = "ferry-api", version)]
struct Args {
    /// Log lines as JSON (for collectors) or human-readable.
    #[arg(long, value_enum, default_value = "json", env = "FERRY_LOG_FORMAT")]
    log_format: LogFormat,
    /// The Pipeline's receiver config.
    #[arg(long, env = "FERRY_CONFIG")]
    config: PathBuf,
    #[arg(long, default_value = "0.0.0.0:8090", env = "FERRY_API_LISTEN")]
    listen: std::net::SocketAddr,
    /// A stats processor's name, whose figures `/v1/sources/{id}/stats` serves; repeatable.
    #[arg(long = "stats")]
    stats: Vec<String>,
    /// A validate processor's name, whose counters the API serves; repeatable.
    #[arg(long = "validate")]
    validate: Vec<String>,
    /// Another processor's name, whose dead-letter counts `/v1/totals` serves; repeatable.
    #[arg(long = "processor")]
    processor: Vec<String>,
    /// Redis response timeout.
    #[arg(long, default_value = "5s", env = "FERRY_REDIS_TIMEOUT")]
    redis_timeout: HumanDuration,
    /// Multiplexed Redis connections the requests are spread over (each parses its replies
    /// on one task: more of them use more cores of a larger machine).
    #[arg(long, default_value_t = 1, env = "FERRY_API_REDIS_CONNECTIONS")]
    redis_connections: usize,
    /// A file holding the bearer token every data route asks for (mounted from a Secret).
    #[arg(long, env = "FERRY_API_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// `<namespace>/<name>` of the Pipeline whose stages `/v1/pipeline` and the dashboard
    /// show, read from its status on Kubernetes.
    #[arg(long, env = "FERRY_API_PIPELINE")]
    pipeline_object: Option<String>,
}

/// The API's bearer token: the file's content, trimmed; an empty file is refused, since it
/// would let every request through.
fn read_token(path: &Path) -> Result<String, ExitCode> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        eprintln!("{PROGRAM}: --token-file {}: {err}", path.display());
        ExitCode::from(2)
    })?;
    let token = text.trim();
    if token.is_empty() {
        eprintln!(
            "{PROGRAM}: --token-file {}: the file is empty",
            path.display()
        );
        return Err(ExitCode::from(2));
    }
    Ok(token.to_owned())
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging(args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn run(args: Args) -> Result<(), ExitCode> {
    let config = cli::load_config(PROGRAM, PROGRAM, &args.config, "receiver")?;
    let options = ferry_worker::api::ServeOptions {
        listen: args.listen,
        stats: args.stats,
        validate: args.validate,
        other_processors: args.processor,
        redis_timeout: args.redis_timeout.as_duration(),
        redis_connections: args.redis_connections,
        token: match &args.token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        },
        pipeline_object: args.pipeline_object,
    };
    cli::run_until_signalled(PROGRAM, "read API", |shutdown| {
        ferry_worker::api::run(config, options, shutdown)
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Args;

    #[test]
    fn help_says_it_is_the_read_api_not_the_worker() {
        let about = Args::command().get_about().map(ToString::to_string);
        assert_eq!(
            about.as_deref(),
            Some(
                "Ferry's read API: reads one Pipeline's data with its receiver's config (Redis, key \
                 prefix, storage, format); the processors' names say which of their keys it reads"
            )
        );
    }
}
