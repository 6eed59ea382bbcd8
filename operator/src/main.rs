use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferry_operator::controller::validate::{ImageAllowList, OperatorDefaults};
use ferry_operator::controller::{self, Context};
use ferry_operator::http::{self, HttpState};
use ferry_operator::metrics::Metrics;
use ferry_operator::telemetry::{self, LogFormat};
use ferry_operator::{autoscale, worker_status};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Ferry's operator: reconciles Pipelines into receiver and processor Deployments.
#[derive(Debug, Parser)]
#[command(name = "ferry-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Worker image for Pipelines that don't name one.
    #[arg(long, env = "FERRY_WORKER_IMAGE", default_value = concat!("ferry/worker:", env!("CARGO_PKG_VERSION")))]
    worker_image: String,
    /// Images a Pipeline may name in spec.receiver.image besides --worker-image:
    /// comma-separated references, each exact or a prefix ending in `*` (`*` alone allows
    /// any). Empty: only --worker-image. A Pipeline naming another image is refused.
    #[arg(long, env = "FERRY_ALLOWED_WORKER_IMAGES", value_delimiter = ',')]
    allowed_worker_images: Vec<String>,
    /// The app.kubernetes.io/version label of the objects the operator writes (never of their
    /// pods); this build's version by default.
    #[arg(long, env = "FERRY_OPERATOR_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    operator_version: String,
    /// Let Pipelines deploy the read API (`spec.api`): the operator then creates a
    /// ServiceAccount, a Role (get on that one Pipeline) and a RoleBinding per Pipeline.
    #[arg(long, env = "FERRY_READ_API")]
    read_api: bool,
    /// Serves /metrics, /healthz and /readyz.
    #[arg(long, env = "FERRY_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Take a Lease before reconciling, so only one replica acts at a time.
    #[arg(long, env = "FERRY_LEADER_ELECTION", default_value_t = false)]
    leader_election: bool,
    #[arg(long, env = "FERRY_LEASE_NAME", default_value = "ferry-operator")]
    lease_name: String,
    /// Watch only this namespace (namespaced RBAC suffices); all namespaces when absent.
    #[arg(long, env = "FERRY_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Namespace of the Lease; the pod's own in a cluster.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Run(args) = cli.command;
    telemetry::init(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!(error = format!("{err:#}"), "operator stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot build a Kubernetes client (KUBECONFIG or in-cluster config)")?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let http_state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let listen = args.listen;
    tokio::spawn(async move {
        if let Err(err) = http::serve(listen, http_state).await {
            error!(error = %err, %listen, "HTTP server stopped");
        }
    });

    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown signal received: finishing in-flight reconciles");
        on_signal.cancel();
    });

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("ferry-operator-{}", std::process::id()));
    let ctx = Arc::new(Context::new(
        client.clone(),
        OperatorDefaults {
            worker_image: args.worker_image.clone(),
            allowed_images: ImageAllowList::new(args.allowed_worker_images.clone()),
            operator_version: args.operator_version.clone(),
            read_api: args.read_api,
        },
        metrics,
        identity.clone(),
    ));
    ready.store(true, Ordering::Relaxed);

    if !args.leader_election {
        info!(worker_image = %args.worker_image, "starting the Pipeline controller");
        return run_peers(ctx, args.watch_namespace.as_deref(), shutdown).await;
    }

    let manager = LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .context("cannot set up leader election")?;
    let (mut leader_rx, lease_task) = manager.watch().await;
    info!(lease = %args.lease_name, %identity, "waiting to become the leader");
    loop {
        if *leader_rx.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader_rx.changed() => changed.context("leader election stopped")?,
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    info!(%identity, worker_image = %args.worker_image, "became the leader: starting the Pipeline controller");

    // Stop reconciling on shutdown or when the Lease is lost, whichever comes first: a
    // child of `shutdown` is cancelled by either.
    let stop = shutdown.child_token();
    let on_loss = stop.clone();
    let mut lost = leader_rx.clone();
    let lost_leadership = Arc::new(AtomicBool::new(false));
    let lost_flag = lost_leadership.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = lost.changed() => {
                    if changed.is_err() || !*lost.borrow() {
                        lost_flag.store(true, Ordering::Relaxed);
                        on_loss.cancel();
                        break;
                    }
                }
                () = on_loss.cancelled() => break,
            }
        }
    });
    let result = run_peers(ctx, args.watch_namespace.as_deref(), stop).await;
    drop(leader_rx);
    match lease_task.await {
        Ok(Ok(_)) => info!("released the Lease"),
        Ok(Err(err)) => warn!(error = %err, "cannot release the Lease"),
        Err(err) => warn!(error = %err, "lease task failed"),
    }
    result?;
    if lost_leadership.load(Ordering::Relaxed) {
        // Another replica holds the Lease now; restart to rejoin the election cleanly.
        anyhow::bail!("lost the leader Lease");
    }
    Ok(())
}

/// The controller and the autoscaler side by side until `stop`. The autoscaler publishes
/// desired replicas in the state both share (`ctx.autoscaler`) and asks for a reconcile
/// through the channel; it imports nothing of the controller.
async fn run_peers(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // Either ending ends both: the controller may stop on its own (no CRD, say).
    let peers = stop.child_token();
    let (scale_trigger, scale_requests) = futures::channel::mpsc::unbounded();
    let autoscaler = tokio::spawn(autoscale::run(
        ctx.autoscaler_peer(),
        ctx.pipelines(),
        scale_trigger,
        peers.clone(),
    ));
    let (status_trigger, status_requests) = futures::channel::mpsc::unbounded();
    let worker_status = tokio::spawn(worker_status::run(
        ctx.worker_status_peer(namespace),
        ctx.pipelines(),
        status_trigger,
        peers.clone(),
    ));
    let requests = futures::stream::select(scale_requests, status_requests);
    let result = controller::run(ctx, namespace, peers.clone(), requests).await;
    peers.cancel();
    if let Err(err) = autoscaler.await {
        warn!(error = %err, "the autoscaler task failed");
    }
    if let Err(err) = worker_status.await {
        warn!(error = %err, "the worker status task failed");
    }
    result
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
