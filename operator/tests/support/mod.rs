//! Shared plumbing for the operator's integration tests against the local stack's real
//! Kubernetes API server (`make stack-up`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub mod ownership;

/// What `e2e/local/stack.sh up` wrote to `$FERRY_STACK_DIR/env`.
#[derive(Debug, Clone)]
pub struct StackEnv {
    pub vars: BTreeMap<String, String>,
}

impl StackEnv {
    pub fn load() -> Self {
        static ENV: OnceLock<StackEnv> = OnceLock::new();
        ENV.get_or_init(|| {
            let vars: BTreeMap<String, String> = [
                "KUBECONFIG",
                "KAFKA_BOOTSTRAP",
                "REDIS_URL",
                "FERRY_BIN",
                "FERRY_ADVERTISE_HOST",
            ]
            .into_iter()
            .filter_map(|key| Some((key.to_owned(), ferry_test_support::stack_var(key)?)))
            .collect();
            assert!(
                vars.contains_key("KUBECONFIG"),
                "no KUBECONFIG in the environment or in {}: start the stack first with `make stack-up`",
                ferry_test_support::stack_env_file().display()
            );
            StackEnv { vars }
        })
        .clone()
    }

    pub fn get(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not set by the local stack: run `make stack-up`"))
    }

    pub fn kubeconfig(&self) -> PathBuf {
        PathBuf::from(self.get("KUBECONFIG"))
    }

    pub fn kubectl_path(&self) -> PathBuf {
        let bin = Path::new(self.get("FERRY_BIN")).join("kubectl");
        if bin.exists() {
            bin
        } else {
            PathBuf::from("kubectl")
        }
    }

    /// The local Redis's port, from `REDIS_URL` (`redis://host:port[/db]`).
    pub fn redis_port(&self) -> String {
        self.get("REDIS_URL")
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .to_owned()
    }

    /// The address pods reach the host's Kafka and Redis on.
    pub fn pod_host(&self) -> String {
        self.vars
            .get("FERRY_ADVERTISE_HOST")
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".to_owned())
    }
}

/// The checkout being tested. Cargo sets CARGO_MANIFEST_DIR when it runs the test too; that
/// comes first because clones sharing one target dir can share a test binary, and the path
/// compiled in would then be another clone's (with or without `../shared` beside it).
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
}

pub async fn client() -> Client {
    let env = StackEnv::load();
    let kubeconfig =
        Kubeconfig::read_from(env.kubeconfig()).expect("the stack's kubeconfig is readable");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the stack's kubeconfig is valid");
    Client::try_from(config).expect("a client for the stack's API server")
}

pub fn kubectl(args: &[&str]) -> Output {
    let env = StackEnv::load();
    Command::new(env.kubectl_path())
        .args(args)
        .env("KUBECONFIG", env.kubeconfig())
        .output()
        .expect("kubectl runs")
}

pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs the Pipeline CRD once per test binary and waits until it is served.
pub fn install_crds() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let crd = repo_root().join("crds/pipeline.yaml");
        kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crd.to_str().unwrap_or_default(),
        ]);
        wait_established("pipelines.ferry.dev");
    });
}

/// Waits until the CRD is served. `kubectl wait` fails at once, rather than waiting, while
/// the API server has not yet written the new CRD's `status.conditions`, so that is retried.
pub fn wait_established(crd: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let target = format!("crd/{crd}");
    loop {
        let out = kubectl(&[
            "wait",
            "--for=condition=Established",
            &target,
            "--timeout=60s",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return;
        }
        assert!(
            stderr.contains(".status.conditions accessor error") && Instant::now() < deadline,
            "kubectl wait for {target} failed: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Which Strimzi CRDs the tests install: Strimzi 1.2.0's real ones where the shared folder
/// is beside the clone, else the project's minimal stand-ins in `e2e/strimzi-minimal`.
#[derive(Debug, Clone)]
pub struct StrimziCrds {
    pub dir: PathBuf,
}

impl StrimziCrds {
    /// `STRIMZI_CRDS_DIR` overrides where the real CRDs are looked for, as in e2e/chart/lib.sh.
    pub fn chosen() -> Self {
        static CHOSEN: OnceLock<StrimziCrds> = OnceLock::new();
        CHOSEN
            .get_or_init(|| {
                let real_dir = std::env::var_os("STRIMZI_CRDS_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| repo_root().join("../shared/strimzi-crds"));
                let (dir, set) = if real_dir.is_dir() {
                    (real_dir, "Strimzi 1.2.0's real CRDs".to_owned())
                } else {
                    let set = format!(
                        "the project's minimal Strimzi CRDs ({} does not exist)",
                        real_dir.display()
                    );
                    (repo_root().join("e2e/strimzi-minimal"), set)
                };
                // Through the stderr handle, not eprintln!: libtest captures only the macros,
                // and which set ran must show in a passing run too.
                let _ = writeln!(
                    std::io::stderr(),
                    "strimzi: using {set}, from {}",
                    dir.display()
                );
                StrimziCrds { dir }
            })
            .clone()
    }

    /// Strimzi's single-node example cluster, or the minimal set's copy of its shape.
    pub fn example_kafka(&self) -> PathBuf {
        self.dir.join("example-kafka-single-node.yaml")
    }
}

/// One field manager for either set (and in e2e/chart/lib.sh), so a switch of sets leaves
/// none of the other set's labels behind; the schema list is replaced whole either way.
const STRIMZI_CRDS_FIELD_MANAGER: &str = "ferry-strimzi-crds";

/// Installs the chosen Strimzi CRDs once per test binary and waits until they are served.
pub fn install_strimzi_crds() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let crds = StrimziCrds::chosen();
        for file in [
            "040-Crd-kafka.yaml",
            "043-Crd-kafkatopic.yaml",
            "045-Crd-kafkanodepool.yaml",
        ] {
            let path = crds.dir.join(file);
            assert!(path.is_file(), "no Strimzi CRD {}", path.display());
            kubectl_ok(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                STRIMZI_CRDS_FIELD_MANAGER,
                "-f",
                path.to_str().unwrap_or_default(),
            ]);
        }
        for crd in [
            "kafkas.kafka.strimzi.io",
            "kafkatopics.kafka.strimzi.io",
            "kafkanodepools.kafka.strimzi.io",
        ] {
            wait_established(crd);
        }
    });
}

pub fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..6)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// A fresh, labelled namespace, deleted when dropped. Its name says which test made it.
#[derive(Debug)]
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub fn new(test: &str) -> Self {
        let name = format!(
            "t-{}-{}",
            test.replace('_', "-").chars().take(40).collect::<String>(),
            random_suffix()
        );
        kubectl_ok(&["create", "namespace", &name]);
        kubectl_ok(&["label", "namespace", &name, "ferry.dev/test=true"]);
        Self { name }
    }

    /// Prints what was in the namespace, to explain a failure.
    pub fn dump(&self) {
        let out = kubectl(&[
            "get",
            "pipelines,deployments,configmaps,pods,events",
            "-n",
            &self.name,
            "-o",
            "wide",
        ]);
        eprintln!(
            "--- namespace {} ---\n{}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// The real operator binary, watching one namespace, killed when dropped.
#[derive(Debug)]
pub struct OperatorProcess {
    child: Child,
    pub log: PathBuf,
}

impl OperatorProcess {
    pub fn start(namespace: &str) -> Self {
        Self::spawn(namespace, &format!("operator-{namespace}.log"), &[], &[])
    }

    /// With extra environment (`FERRY_ALLOWED_WORKER_IMAGES`, `FERRY_OPERATOR_VERSION`), its
    /// log named by `tag`.
    pub fn start_with_env(namespace: &str, tag: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(
            namespace,
            &format!("operator-{namespace}-{tag}.log"),
            &[],
            env,
        )
    }

    /// With leader election, as replica `identity`, its lease in the watched namespace.
    pub fn start_elected(namespace: &str, identity: &str) -> Self {
        Self::spawn(
            namespace,
            &format!("operator-{namespace}-{identity}.log"),
            &[
                "--leader-election",
                "--lease-namespace",
                namespace,
                "--identity",
                identity,
            ],
            &[],
        )
    }

    fn spawn(
        namespace: &str,
        log_name: &str,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Self {
        let env = StackEnv::load();
        let log_dir = repo_root().join("target/test-logs");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let log = log_dir.join(log_name);
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ferry-operator"))
            .args([
                "run",
                "--watch-namespace",
                namespace,
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(extra_args)
            .env("KUBECONFIG", env.kubeconfig())
            .env("FERRY_WORKER_IMAGE", worker_image())
            .env("RUST_LOG", "info,ferry_operator=debug")
            .envs(extra_env.iter().copied())
            .stdout(Stdio::from(file.try_clone().expect("log handle")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("the operator starts");
        Self { child, log }
    }

    /// Kills the operator at once, as a node failure would.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it and waits until it is gone.
    pub fn stop(mut self) {
        self.sigkill();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.sigkill();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- operator log tail ({}) ---", self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The `ferry-worker` binary cargo built beside this test binary, wherever the target dir is.
/// A Deployment's pod template metadata (the operator always sets it).
pub fn pod_template_meta(
    deployment: &k8s_openapi::api::apps::v1::Deployment,
) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
}

pub fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // <target>/<profile>/deps/<test binary> -> <target>/<profile>/ferry-worker
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary sits in <target>/<profile>/deps");
    profile_dir.join("ferry-worker")
}

/// The worker image the local stack imported (`e2e/local/images.sh`).
pub fn worker_image() -> String {
    std::env::var("FERRY_TEST_WORKER_IMAGE").unwrap_or_else(|_| "ferry/worker:dev".to_owned())
}

/// Polls `check` until it returns `Some`, or fails the test with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates `topic` with `partitions` partitions on the local stack's Kafka.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    ferry_test_support::create_topics(bootstrap, &[(topic, partitions)]).await;
}

/// The lag of `consumer`'s group on `topic`, read as a test oracle (independent of the
/// operator's lag reader): high watermarks minus committed offsets, a partition without a
/// commit counting from 0. `None` when a call fails.
pub fn committed_lag(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Option<i64> {
    use rdkafka::consumer::Consumer;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, timeout).ok()?;
    let mut lag = 0;
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, timeout).ok()?;
        let at = match committed.find_partition(topic, p)?.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        };
        lag += (high - at).max(0);
    }
    Some(lag)
}

/// A dsdata Pipeline with list storage against the local stack's Kafka and Redis (as pods
/// reach them). Each test sets what it is about: the receiver's scaling, dead letters,
/// processors, Redis credentials or another Redis port.
#[derive(Debug, Clone)]
pub struct StackPipeline<'a> {
    pub name: &'a str,
    pub topic: &'a str,
    pub prefix: &'a str,
    pub history_depth: usize,
    /// YAML under `spec.redis`, indented four spaces (`username`, `passwordSecretRef`).
    pub redis_extra: &'a str,
    /// YAML under `spec.receiver`, indented four spaces (`scaling`, `deadLetter`).
    pub receiver_extra: &'a str,
    /// YAML under `spec`, indented two spaces (`processors`).
    pub spec_extra: &'a str,
    /// Another Redis port than the stack's (one nothing listens on, say).
    pub redis_port: Option<u16>,
}

impl<'a> StackPipeline<'a> {
    pub fn new(name: &'a str, topic: &'a str, prefix: &'a str) -> Self {
        Self {
            name,
            topic,
            prefix,
            history_depth: 1000,
            redis_extra: "",
            receiver_extra: "",
            spec_extra: "",
            redis_port: None,
        }
    }

    pub fn build(&self) -> ferry_operator::crd::Pipeline {
        let env = StackEnv::load();
        let yaml = format!(
            "apiVersion: ferry.dev/v1alpha1\n\
             kind: Pipeline\n\
             metadata:\n  name: {name}\n\
             spec:\n  \
             kafka:\n    bootstrapServers: {bootstrap}\n    topic: {topic}\n    \
             consumerGroup: {name}-{prefix}\n  \
             redis:\n    host: {host}\n    port: {port}\n    keyPrefix: {prefix}\n{redis_extra}\n  \
             format: dsdata\n  \
             receiver:\n    storage:\n      type: list\n      historyDepth: {depth}\n{receiver_extra}\n\
             {spec_extra}\n",
            name = self.name,
            topic = self.topic,
            prefix = self.prefix,
            bootstrap = env.get("KAFKA_BOOTSTRAP"),
            host = env.pod_host(),
            port = self
                .redis_port
                .map_or_else(|| env.redis_port(), |port| port.to_string()),
            depth = self.history_depth,
            redis_extra = self.redis_extra,
            receiver_extra = self.receiver_extra,
            spec_extra = self.spec_extra,
        );
        serde_yaml::from_str(&yaml).unwrap_or_else(|error| panic!("{error}:\n{yaml}"))
    }
}

/// Waits up to two minutes until Deployment `name` has at least `ready` ready replicas.
pub async fn wait_ready(
    deployments: &kube::Api<k8s_openapi::api::apps::v1::Deployment>,
    name: &str,
    ready: i32,
) {
    eventually(
        Duration::from_secs(120),
        &format!("{ready} ready replica(s) of {name}"),
        || async {
            let deployment = deployments.get_opt(name).await.ok()??;
            (deployment.status?.ready_replicas? >= ready).then_some(())
        },
    )
    .await;
}
