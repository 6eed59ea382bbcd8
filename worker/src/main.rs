use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ferry_worker::cli::{self, LogFormat};
use ferry_worker::config::RecordFormat;
use ferry_worker::consume::pipeline::{DEFAULT_MAX_MESSAGE_BYTES, StageOptions};
use ferry_worker::consume::receiver;
use ferry_worker::duration::HumanDuration;
use ferry_worker::simulate::{self, SimulateOptions};

const PROGRAM: &str = "ferry-worker";

/// Ferry's worker: streams Kafka records into Redis and computes from them.
#[derive(Debug, Parser)]
#[command(name = "ferry-worker", version, about)]
struct Cli {
    /// Log lines as JSON (for collectors) or human-readable.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "json",
        env = "FERRY_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume a topic and write its records into Redis, exactly once in effect.
    Receive {
        #[arg(long, env = "FERRY_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        stage: StageArgs,
    },
    /// Compute from a topic (stats, validate, enrich) and write results to Redis.
    Process {
        #[arg(long, env = "FERRY_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        stage: StageArgs,
    },
    /// Play the data sources: each sends timestamped float arrays with a text.
    Simulate(SimulateArgs),
}

/// The consumption pipeline's process-level knobs, the same for every stage kind.
#[derive(Debug, clap::Args)]
struct StageArgs {
    /// How long a rebalance waits for revoked partitions' records to reach Redis.
    #[arg(long, default_value = "10s", env = "FERRY_DRAIN_TIMEOUT")]
    drain_timeout: HumanDuration,
    /// How long the stage has from SIGTERM to drain, commit and leave the group, whatever
    /// it was doing then; the operator sets it from the pod's grace period.
    #[arg(long, default_value = "25s", env = "FERRY_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: HumanDuration,
    /// Kafka group session timeout: how soon a crashed worker's partitions move.
    #[arg(long, default_value = "10s", env = "FERRY_SESSION_TIMEOUT")]
    session_timeout: HumanDuration,
    /// Redis response timeout; slower replies are retried.
    #[arg(long, default_value = "5s", env = "FERRY_REDIS_TIMEOUT")]
    redis_timeout: HumanDuration,
    /// The largest record a produced topic takes where its `max.message.bytes` cannot be
    /// read (DescribeConfigs denied): bigger dead letters go out as stubs.
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_BYTES, env = "FERRY_MAX_MESSAGE_BYTES")]
    max_message_bytes: usize,
}

impl StageArgs {
    fn options(&self) -> StageOptions {
        StageOptions {
            drain_timeout: self.drain_timeout.as_duration(),
            shutdown_timeout: self.shutdown_timeout.as_duration(),
            session_timeout: self.session_timeout.as_duration(),
            redis_timeout: self.redis_timeout.as_duration(),
            max_message_bytes: self.max_message_bytes,
        }
    }
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    bootstrap_servers: String,
    #[arg(long)]
    topic: String,
    /// Number of sources, keyed src-0000, src-0001, ...
    #[arg(long, default_value_t = 1000)]
    sources: u32,
    /// Records a second per source; 0 sends as fast as the broker takes.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Floats per record: a sine wave, then random walks.
    #[arg(long, default_value_t = 4)]
    floats: usize,
    /// Stop after this many records in total.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long, e.g. 30s or 5m.
    #[arg(long)]
    duration: Option<HumanDuration>,
    #[arg(long, value_enum, default_value = "dsdata")]
    format: SimulateFormat,
    #[arg(long, value_enum, default_value = "lz4")]
    compression: Compression,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Between progress lines.
    #[arg(long, default_value = "1s")]
    progress_interval: HumanDuration,
    /// Extra librdkafka producer property, e.g. `-X security.protocol=ssl`; repeatable.
    #[arg(short = 'X', value_parser = parse_property)]
    property: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SimulateFormat {
    Dsdata,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Compression {
    Lz4,
    None,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn run(command: Command) -> Result<(), ExitCode> {
    match command {
        Command::Receive { config, stage } => {
            let config = cli::load_config(PROGRAM, "ferry-worker receive", &config, "receiver")?;
            let options = stage.options();
            cli::run_until_signalled(PROGRAM, "receiver", |shutdown| {
                receiver::run(config, options, shutdown)
            })
        }
        Command::Process { config, stage } => {
            let config = cli::load_config(PROGRAM, "ferry-worker process", &config, "processor")?;
            let options = stage.options();
            cli::run_until_signalled(PROGRAM, "processor", |shutdown| {
                ferry_worker::process::run(config, options, shutdown)
            })
        }
        Command::Simulate(args) => {
            let options = SimulateOptions {
                bootstrap_servers: args.bootstrap_servers,
                topic: args.topic,
                sources: args.sources,
                rate: args.rate.max(0.0),
                floats: args.floats,
                count: args.count,
                duration: args.duration.map(HumanDuration::as_duration),
                format: match args.format {
                    SimulateFormat::Dsdata => RecordFormat::Dsdata,
                    SimulateFormat::Json => RecordFormat::Json,
                },
                compression: match args.compression {
                    Compression::Lz4 => "lz4".to_owned(),
                    Compression::None => "none".to_owned(),
                },
                seed: args.seed,
                progress_interval: args
                    .progress_interval
                    .as_duration()
                    .max(Duration::from_millis(100)),
                properties: args.property,
            };
            let stop = Arc::new(AtomicBool::new(false));
            let on_signal = Arc::clone(&stop);
            cli::runtime(PROGRAM)?.block_on(async move {
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    on_signal.store(true, Ordering::Relaxed);
                });
                let outcome = tokio::task::spawn_blocking(move || simulate::run(&options, &stop))
                    .await
                    .map_err(|err| {
                        eprintln!("{PROGRAM}: simulator crashed: {err}");
                        ExitCode::FAILURE
                    })?;
                outcome.map(drop).map_err(|err| {
                    eprintln!("{PROGRAM}: {err}");
                    ExitCode::FAILURE
                })
            })
        }
    }
}
