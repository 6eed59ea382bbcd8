//! The lag reader against the local real Kafka, checked against Kafka's own tools
//! (`kafka-consumer-groups --describe`, `kafka-get-offsets`) at the same moment.
//!
//! Needs the local stack: `bash e2e/local/stack.sh up redis kafka` (with `FERRY_STACK_K8S=0`).
//! Reads `KAFKA_BOOTSTRAP` and `FERRY_BIN` from the environment or from
//! `${FERRY_STACK_DIR:-/tmp/ferry-stack}/env`, and fails when neither has them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use ferry_config::config::OffsetReset;
use ferry_operator::lag::{ClusterConfig, GroupLag, LagQuery, LagReader};
use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

struct Stack {
    bootstrap: String,
    bin: String,
}

fn stack() -> Stack {
    let dir = std::env::var("FERRY_STACK_DIR").unwrap_or_else(|_| "/tmp/ferry-stack".to_owned());
    let file = std::fs::read_to_string(format!("{dir}/env")).unwrap_or_default();
    let from_file: BTreeMap<String, String> = file
        .lines()
        .filter_map(|line| line.strip_prefix("export ").unwrap_or(line).split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect();
    let get = |key: &str| {
        std::env::var(key)
            .ok()
            .or_else(|| from_file.get(key).cloned())
            .unwrap_or_else(|| {
                panic!(
                    "{key} is not set and {dir}/env does not define it: start the local stack \
                     with `FERRY_STACK_K8S=0 bash e2e/local/stack.sh up redis kafka`"
                )
            })
    };
    Stack {
        bootstrap: get("KAFKA_BOOTSTRAP"),
        bin: get("FERRY_BIN"),
    }
}

fn random_name(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::rng().random::<u32>())
}

async fn create_topic(stack: &Stack, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for result in results {
        result.unwrap();
    }
}

/// Produces `counts[p]` records to partition `p`, and waits for each delivery.
async fn produce(stack: &Stack, topic: &str, counts: &[usize]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for (partition, count) in counts.iter().enumerate() {
        for i in 0..*count {
            let payload = format!("record {i}");
            let record = FutureRecord::to(topic)
                .partition(i32::try_from(partition).unwrap())
                .key("k")
                .payload(&payload);
            deliveries.push(
                producer
                    .send_result(record)
                    .map_err(|(err, _)| err)
                    .unwrap(),
            );
        }
    }
    for delivery in futures::future::join_all(deliveries).await {
        delivery.unwrap().map_err(|(err, _)| err).unwrap();
    }
}

/// Commits `offsets` (partition → offset) for `group` without joining it, as a worker would.
fn commit(stack: &Stack, group: &str, topic: &str, offsets: &[(i32, i64)]) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .unwrap();
    }
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
}

fn run_tool(stack: &Stack, tool: &str, args: &[&str]) -> String {
    let output = Command::new(format!("{}/{tool}", stack.bin))
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}/{tool}: {err}", stack.bin));
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `kafka-consumer-groups --describe`: partition → (current offset, log-end offset, lag), with
/// `None` where the tool prints `-`.
type Described = BTreeMap<i32, (Option<i64>, i64, Option<i64>)>;

fn describe_group(stack: &Stack, group: &str, topic: &str) -> Described {
    let text = run_tool(
        stack,
        "kafka-consumer-groups",
        &[
            "--bootstrap-server",
            &stack.bootstrap,
            "--describe",
            "--group",
            group,
        ],
    );
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .find(|l| l.contains("LOG-END-OFFSET"))
        .unwrap_or_else(|| panic!("no header in:\n{text}"))
        .split_whitespace()
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (c_topic, c_partition, c_current, c_end, c_lag) = (
        column("TOPIC"),
        column("PARTITION"),
        column("CURRENT-OFFSET"),
        column("LOG-END-OFFSET"),
        column("LAG"),
    );
    let number = |s: &str| s.parse::<i64>().ok();
    lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.get(c_topic) == Some(&topic))
        .map(|cells| {
            (
                cells[c_partition].parse().unwrap(),
                (
                    number(cells[c_current]),
                    number(cells[c_end]).unwrap(),
                    number(cells[c_lag]),
                ),
            )
        })
        .collect()
}

/// `kafka-get-offsets --time -1|-2`: partition → offset.
fn get_offsets(stack: &Stack, topic: &str, time: &str) -> BTreeMap<i32, i64> {
    run_tool(
        stack,
        "kafka-get-offsets",
        &[
            "--bootstrap-server",
            &stack.bootstrap,
            "--topic",
            topic,
            "--time",
            time,
        ],
    )
    .lines()
    .filter_map(|l| {
        // `topic:partition:offset`
        let mut parts = l.rsplitn(3, ':');
        let offset = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        Some((partition, offset))
    })
    .collect()
}

async fn read_one(reader: &LagReader, stack: &Stack, query: LagQuery) -> GroupLag {
    reader
        .read(&ClusterConfig::plaintext(&stack.bootstrap), vec![query])
        .await
        .pop()
        .unwrap()
        .unwrap()
}

fn by_partition(lag: &GroupLag) -> BTreeMap<i32, (Option<i64>, i64, i64)> {
    lag.partitions
        .iter()
        .map(|p| {
            (
                p.offsets.partition,
                (p.offsets.committed, p.offsets.log_end, p.lag),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_with_committed_offsets_matches_kafka_consumer_groups() {
    let stack = stack();
    let topic = random_name("lag-committed");
    let group = random_name("group");
    create_topic(&stack, &topic, 3).await;
    produce(&stack, &topic, &[50, 30, 20]).await;
    commit(&stack, &group, &topic, &[(0, 10), (1, 30), (2, 5)]);

    let reader = LagReader::new();
    let ours = read_one(
        &reader,
        &stack,
        LagQuery {
            topic: topic.clone(),
            group: group.clone(),
            offset_reset: OffsetReset::Earliest,
        },
    )
    .await;
    let kafka = describe_group(&stack, &group, &topic);

    let ours_by_partition = by_partition(&ours);
    assert_eq!(kafka.len(), 3, "{kafka:?}");
    for (partition, (current, log_end, lag)) in &kafka {
        let (committed, our_end, our_lag) = ours_by_partition[partition];
        assert_eq!(committed, *current, "partition {partition} committed");
        assert_eq!(our_end, *log_end, "partition {partition} log end");
        assert_eq!(Some(our_lag), *lag, "partition {partition} lag");
    }
    let kafka_total: i64 = kafka.values().filter_map(|(_, _, lag)| *lag).sum();
    assert_eq!(ours.total(), kafka_total);
    assert_eq!(ours.total(), 40 + 15, "partition 1 is caught up");
    println!("lag {} = kafka-consumer-groups {kafka_total}", ours.total());
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_without_committed_offsets_follows_auto_offset_reset() {
    let stack = stack();
    let topic = random_name("lag-uncommitted");
    let group = random_name("group");
    create_topic(&stack, &topic, 3).await;
    produce(&stack, &topic, &[25, 40, 0]).await;
    // Only partition 0 has a commit; 1 and 2 never had one.
    commit(&stack, &group, &topic, &[(0, 20)]);

    let reader = LagReader::new();
    let query = |offset_reset| LagQuery {
        topic: topic.clone(),
        group: group.clone(),
        offset_reset,
    };
    let earliest = read_one(&reader, &stack, query(OffsetReset::Earliest)).await;
    let latest = read_one(&reader, &stack, query(OffsetReset::Latest)).await;
    let kafka = describe_group(&stack, &group, &topic);
    let ends = get_offsets(&stack, &topic, "-1");
    let starts = get_offsets(&stack, &topic, "-2");

    // The committed partition: exactly what kafka-consumer-groups says, under either reset.
    let (_, _, kafka_lag_0) = kafka[&0];
    assert_eq!(Some(by_partition(&earliest)[&0].2), kafka_lag_0);
    assert_eq!(Some(by_partition(&latest)[&0].2), kafka_lag_0);
    // The others: kafka-consumer-groups prints `-` (or nothing) for them; a consumer would
    // start at log start (earliest) or log end (latest), per kafka-get-offsets.
    for partition in [1, 2] {
        if let Some((current, _, lag)) = kafka.get(&partition) {
            assert_eq!((*current, *lag), (None, None), "{kafka:?}");
        }
        assert_eq!(
            by_partition(&earliest)[&partition].2,
            ends[&partition] - starts[&partition],
            "partition {partition} under earliest"
        );
        assert_eq!(by_partition(&latest)[&partition].2, 0);
    }
    assert_eq!(earliest.total(), 5 + 40);
    assert_eq!(latest.total(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_deleted_by_retention_never_count() {
    let stack = stack();
    let topic = random_name("lag-deleted");
    let group = random_name("group");
    create_topic(&stack, &topic, 1).await;
    produce(&stack, &topic, &[100]).await;
    commit(&stack, &group, &topic, &[(0, 10)]);
    // What retention does, on demand: log start moves to 60, past the commit at 10.
    let offsets_file = std::env::temp_dir().join(format!("{topic}.json"));
    std::fs::write(
        &offsets_file,
        format!(
            r#"{{"partitions":[{{"topic":"{topic}","partition":0,"offset":60}}],"version":1}}"#
        ),
    )
    .unwrap();
    run_tool(
        &stack,
        "kafka-delete-records",
        &[
            "--bootstrap-server",
            &stack.bootstrap,
            "--offset-json-file",
            offsets_file.to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_file(&offsets_file);

    let reader = LagReader::new();
    let ours = read_one(
        &reader,
        &stack,
        LagQuery {
            topic: topic.clone(),
            group: group.clone(),
            offset_reset: OffsetReset::Earliest,
        },
    )
    .await;
    let starts = get_offsets(&stack, &topic, "-2");
    let kafka = describe_group(&stack, &group, &topic);
    assert_eq!(starts[&0], 60);
    assert_eq!(ours.partitions[0].offsets.log_start, 60);
    // kafka-consumer-groups counts from the commit (90); 50 of those records no longer exist.
    assert_eq!(kafka[&0].2, Some(90));
    assert_eq!(ours.total(), 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_batch_reads_many_groups_over_one_connection_per_broker() {
    let stack = stack();
    let topic_a = random_name("lag-batch-a");
    let topic_b = random_name("lag-batch-b");
    create_topic(&stack, &topic_a, 2).await;
    create_topic(&stack, &topic_b, 4).await;
    produce(&stack, &topic_a, &[7, 3]).await;
    produce(&stack, &topic_b, &[1, 2, 3, 4]).await;
    let groups: Vec<String> = (0..3).map(|_| random_name("group")).collect();
    commit(&stack, &groups[0], &topic_a, &[(0, 7), (1, 0)]);
    commit(
        &stack,
        &groups[1],
        &topic_b,
        &[(0, 1), (1, 1), (2, 1), (3, 1)],
    );

    let reader = LagReader::new();
    let cluster = ClusterConfig::plaintext(&stack.bootstrap);
    let queries = vec![
        LagQuery {
            topic: topic_a.clone(),
            group: groups[0].clone(),
            offset_reset: OffsetReset::Earliest,
        },
        LagQuery {
            topic: topic_b.clone(),
            group: groups[1].clone(),
            offset_reset: OffsetReset::Earliest,
        },
        LagQuery {
            topic: topic_b.clone(),
            group: groups[2].clone(),
            offset_reset: OffsetReset::Latest,
        },
        LagQuery {
            topic: random_name("no-such-topic"),
            group: groups[2].clone(),
            offset_reset: OffsetReset::Latest,
        },
    ];
    let (results, _) = reader.read_counted(&cluster, queries.clone()).await;
    // Polled again, the same four queries take 8 Kafka calls: metadata for each of the 3
    // topics, 2 ListOffsets rounds, and FindCoordinator, OffsetFetch and DescribeGroups
    // for all groups at once (the first read also checked the broker's API versions).
    let (_, calls) = reader.read_counted(&cluster, queries).await;
    assert_eq!(calls, 8);
    let totals: Vec<Result<i64, String>> = results
        .iter()
        .map(|r| r.as_ref().map(GroupLag::total).map_err(|e| e.to_string()))
        .collect();
    assert_eq!(totals[..3], [Ok(3), Ok(6), Ok(0)], "{totals:?}");
    assert!(
        totals[3]
            .as_ref()
            .is_err_and(|e| e.contains("does not exist")),
        "{totals:?}"
    );
    // One shared client for the cluster and no client per group: the groups' offsets and
    // descriptions came in batched requests, over the bootstrap connection and one to the
    // coordinator (the same broker here, but maybe under its advertised address).
    assert_eq!(reader.client_counts(), (1, 0));
    let opened = reader.group_connections_opened();
    assert!((1..=2).contains(&opened), "{opened} connections");

    // Polling again reuses the same clients; dropping every group closes the cluster's.
    let again = reader
        .read(
            &cluster,
            vec![LagQuery {
                topic: topic_a.clone(),
                group: groups[0].clone(),
                offset_reset: OffsetReset::Earliest,
            }],
        )
        .await;
    assert_eq!(again[0].as_ref().map(GroupLag::total).ok(), Some(3));
    // Polling again reuses the connections.
    assert_eq!(reader.group_connections_opened(), opened);
    reader.retain(&BTreeSet::from([(cluster.clone(), groups[0].clone())]));
    assert_eq!(reader.client_counts(), (1, 0));
    reader.retain(&BTreeSet::new());
    assert_eq!(reader.client_counts(), (0, 0));
}

/// TLS clusters (and brokers older than Kafka 3.0) read through one rdkafka client per group:
/// that path must report what the batched one does.
#[tokio::test(flavor = "multi_thread")]
async fn the_per_group_fallback_reads_the_same_lag() {
    let stack = stack();
    let topic = random_name("lag-fallback");
    create_topic(&stack, &topic, 3).await;
    produce(&stack, &topic, &[5, 6, 7]).await;
    let groups: Vec<String> = (0..2).map(|_| random_name("group")).collect();
    commit(&stack, &groups[0], &topic, &[(0, 5), (1, 2)]);
    let queries: Vec<LagQuery> = groups
        .iter()
        .map(|group| LagQuery {
            topic: topic.clone(),
            group: group.clone(),
            offset_reset: OffsetReset::Earliest,
        })
        .collect();

    let batched = LagReader::new();
    let by_wire = batched
        .read(&ClusterConfig::plaintext(&stack.bootstrap), queries.clone())
        .await;
    // Any client property (as TLS sets) selects the fallback.
    let mut fallback_cluster = ClusterConfig::plaintext(&stack.bootstrap);
    fallback_cluster
        .properties
        .insert("security.protocol".into(), "plaintext".into());
    let per_group = LagReader::new();
    let by_clients = per_group.read(&fallback_cluster, queries).await;

    let facts = |results: &[Result<GroupLag, ferry_operator::lag::LagError>]| {
        results
            .iter()
            .map(|r| {
                let lag = r.as_ref().expect("lag read");
                (lag.total(), by_partition(lag))
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(facts(&by_wire), facts(&by_clients));
    assert_eq!(facts(&by_wire)[0].0, 4 + 7);
    assert_eq!(facts(&by_wire)[1].0, 5 + 6 + 7);
    assert_eq!(per_group.client_counts(), (1, 2));
    assert_eq!(per_group.group_connections_opened(), 0);
    assert_eq!(batched.client_counts(), (1, 0));
}
