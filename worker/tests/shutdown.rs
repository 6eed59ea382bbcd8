//! SIGTERM is answered inside the pod's grace period (30 s) whatever the stage is doing,
//! for the receiver and a processor. The fault: SIGTERM arrives while the stage drains a revoke it cannot finish (each of
//! its partitions holds a record for a key of another Redis type, so no batch commits);
//! the drain waits its 10 s, then the shutdown drain its 25 s. Counted from when the
//! shutdown began rather than from SIGTERM, the two added up past the grace period, and
//! the kubelet's SIGKILL would have cut the final commit.
//!
//! Needs the local stack (`make stack-up`); fails, never skips, without it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod oracle;
mod receiver_support;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;
use receiver_support::*;

/// The pods' `terminationGracePeriodSeconds` (operator/src/controller/build.rs).
const GRACE: Duration = Duration::from_secs(30);

/// A worker process, SIGKILLed when dropped (pass or fail).
struct Process {
    child: Child,
    log: std::path::PathBuf,
    port: u16,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(receiver: &Receiver, subcommand: &str, config: &std::path::Path, name: &str) -> Process {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = receiver.dir.join(format!("{name}.log"));
    // The pods' timeouts: the defaults (drain 10 s, shutdown 25 s).
    let listen = format!("127.0.0.1:{port}");
    let args = [subcommand, "--config"].map(std::ffi::OsStr::new);
    let session = ["--session-timeout", "6s"].map(std::ffi::OsStr::new);
    let child = oracle::spawn_worker(
        &[&args[..], &[config.as_os_str()], &session[..]].concat(),
        &[("FERRY__HTTP__LISTEN", listen.as_str())],
        &log,
    );
    Process { child, log, port }
}

fn log_of(process: &Process) -> String {
    std::fs::read_to_string(&process.log).unwrap_or_default()
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_sigtermed_during_a_revoke_that_cannot_drain_exits_inside_the_grace_period() {
    sigterm_during_a_revoke_that_cannot_drain(Stage::Receiver).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_sigtermed_during_a_revoke_that_cannot_drain_exits_inside_the_grace_period() {
    sigterm_during_a_revoke_that_cannot_drain(Stage::Processor).await;
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    Receiver,
    /// A validate processor: its counters hash is the key of another type.
    Processor,
}

async fn sigterm_during_a_revoke_that_cannot_drain(stage: Stage) {
    let stack = stack();
    let topic = unique("sigterm");
    create_topic(&stack, &topic, 2).await;
    let receiver = Receiver::new(
        &stack,
        ReceiverSpec {
            topic: &topic,
            redis_url: &stack.redis,
            format: "dsdata",
            storage: "list",
            depth: 100,
            max_records: 100,
            extra: "",
        },
    );
    let (subcommand, config, data_key) = match stage {
        Stage::Receiver => ("receive", receiver.config.clone(), "list"),
        Stage::Processor => {
            let config = receiver.dir.join("processor.yaml");
            std::fs::write(
                &config,
                format!(
                    "pipeline: test\n\
                     kafka: {{bootstrap_servers: \"{kafka}\", topic: {topic}, consumer_group: {group}}}\n\
                     redis: {{url: \"{redis}\", key_prefix: {prefix}}}\n\
                     format: dsdata\n\
                     stage:\n  processor:\n    name: check\n    \
                     batch: {{max_records: 100, max_wait: 20ms}}\n    \
                     kind:\n      validate:\n        rules:\n          \
                     - {{name: any, expression: \"values[0] IN RANGE -1000000 1000000\"}}\n",
                    kafka = stack.kafka,
                    redis = stack.redis,
                    group = receiver.group,
                    prefix = receiver.prefix,
                ),
            )
            .unwrap();
            ("process", config, "counters:check")
        }
    };
    // A key of another type on each partition: no batch can commit anywhere.
    let mut redis = receiver.redis();
    let producer = producer(&stack);
    for partition in 0..2 {
        let key = format!("src-wrong-{partition}");
        let () = redis::cmd("SET")
            .arg(format!("{}:{data_key}:{key}", receiver.prefix))
            .arg("not a list nor a hash")
            .query(&mut redis)
            .unwrap();
        producer
            .send(
                FutureRecord::to(&topic)
                    .partition(partition)
                    .key(&key)
                    .payload(&value(&key, 0, now_ms())),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(err, _)| err)
            .unwrap();
    }

    let mut first = start(&receiver, subcommand, &config, "first");
    wait_for(
        "the first receiver to block",
        Duration::from_secs(60),
        || {
            oracle::http_get(first.port, "/readyz")
                .is_some_and(|(_, body)| body.contains("src-wrong"))
        },
    );
    // A second receiver joins: the first is asked to drain what it cannot commit.
    let _second = start(&receiver, subcommand, &config, "second");
    wait_for(
        "the revoke to start draining",
        Duration::from_secs(60),
        || log_of(&first).contains("partitions revoked; draining"),
    );
    std::thread::sleep(Duration::from_secs(1));
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .unwrap();
    let exited = loop {
        if let Some(status) = first.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(90),
            "no exit 90 s after SIGTERM; log:\n{}",
            log_of(&first)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = signalled.elapsed();
    println!(
        "{stage:?}: SIGTERM 1 s into a revoke drain that cannot finish: exited ({exited}) after \
         {:.1} s (grace period {} s)",
        took.as_secs_f64(),
        GRACE.as_secs()
    );
    for partition in 0..2 {
        let _: Result<i64, _> = redis::cmd("DEL")
            .arg(format!(
                "{}:{data_key}:src-wrong-{partition}",
                receiver.prefix
            ))
            .query(&mut redis);
    }
    assert!(exited.success(), "a clean exit; log:\n{}", log_of(&first));
    assert!(
        took < GRACE,
        "took {took:?}, past the {GRACE:?} grace period: the kubelet would have killed it"
    );
    let _ = &mut first;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_sigtermed_under_load_commits_what_it_applied_inside_the_grace_period() {
    under_load(Stage::Receiver).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_sigtermed_under_load_commits_what_it_applied_inside_the_grace_period() {
    under_load(Stage::Processor).await;
}

/// SIGTERM while records stream in: the stage exits inside the grace period, and the
/// offsets it committed to Kafka are exactly past what its checkpoints say it applied (no
/// applied record left to be read again, none committed unapplied).
async fn under_load(stage: Stage) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let stack = stack();
    let topic = unique("sigterm-load");
    create_topic(&stack, &topic, 3).await;
    let receiver = Receiver::new(
        &stack,
        ReceiverSpec {
            topic: &topic,
            redis_url: &stack.redis,
            format: "dsdata",
            storage: "list",
            depth: 100,
            max_records: 500,
            extra: "",
        },
    );
    let (subcommand, config, stage_name) = match stage {
        Stage::Receiver => ("receive", receiver.config.clone(), "receiver"),
        Stage::Processor => {
            let config = receiver.dir.join("processor.yaml");
            std::fs::write(
                &config,
                format!(
                    "pipeline: test\n\
                     kafka: {{bootstrap_servers: \"{kafka}\", topic: {topic}, consumer_group: {group}}}\n\
                     redis: {{url: \"{redis}\", key_prefix: {prefix}}}\n\
                     format: dsdata\n\
                     stage:\n  processor:\n    name: stats\n    \
                     batch: {{max_records: 500, max_wait: 20ms}}\n    \
                     kind:\n      stats: {{window: 10}}\n",
                    kafka = stack.kafka,
                    redis = stack.redis,
                    group = receiver.group,
                    prefix = receiver.prefix,
                ),
            )
            .unwrap();
            ("process", config, "stats")
        }
    };
    let worker = start(&receiver, subcommand, &config, "worker");
    wait_for("the stage to be ready", Duration::from_secs(60), || {
        oracle::http_get(worker.port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    let load = {
        let stack = Stack {
            kafka: stack.kafka.clone(),
            redis: stack.redis.clone(),
        };
        let topic = topic.clone();
        tokio::spawn(async move { produce_paced(&stack, &topic, 50, 40_000, 4000.0).await })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut worker = worker;
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-TERM", &worker.child.id().to_string()])
        .status()
        .unwrap();
    let exited = loop {
        if let Some(status) = worker.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(90),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    let _ = load.await;

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("group.id", &receiver.group)
        .create()
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        partitions.add_partition(&topic, p);
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    // `{prefix}:ckpt:{stage}:{topic}:{partition}`, holding `{offset}@{timestamp}`.
    let keys: Vec<String> = (0..3)
        .map(|p| format!("{}:ckpt:{stage_name}:{topic}:{p}", receiver.prefix))
        .collect();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query(&mut receiver.redis())
        .unwrap();
    let checkpoints: Vec<Option<i64>> = values
        .iter()
        .map(|v| v.as_deref()?.split('@').next()?.parse().ok())
        .collect();
    let mut pairs = Vec::new();
    for (p, checkpoint) in (0..3).zip(&checkpoints) {
        let committed = match committed.find_partition(&topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => Some(o),
            _ => None,
        };
        pairs.push((p, *checkpoint, committed));
    }
    println!(
        "{stage:?} under load: SIGTERM answered in {:.2} s ({exited}); per partition \
         (checkpoint, committed): {pairs:?}",
        took.as_secs_f64()
    );
    assert!(exited.success(), "a clean exit; log:\n{}", log_of(&worker));
    assert!(took < GRACE, "took {took:?}, past the grace period");
    for (p, checkpoint, committed) in pairs {
        assert_eq!(
            committed,
            checkpoint.map(|c| c + 1),
            "partition {p}: the commit is right past what was applied"
        );
    }
}
