//! Reads consumer-group lag from Kafka.
//!
//! Per partition: `lag = logEnd − max(committed, logStart)`, never negative, so records that
//! retention already deleted never count. A partition the group never committed on counts
//! `logEnd − logStart` under `auto.offset.reset=earliest` and 0 under `latest`: that's where
//! a consumer would start.
//!
//! How the calls are batched, per cluster (one bootstrap address and client settings):
//! - ONE shared client per cluster serves metadata, both ListOffsets rounds and group
//!   descriptions. librdkafka's `offsets_for_times` with the special timestamps −1 (latest)
//!   and −2 (earliest) sends ListOffsets grouped by partition leader: two round trips per
//!   leader for every partition of every topic polled, instead of two per partition as
//!   `fetch_watermarks` does.
//! - Committed offsets and group descriptions: rdkafka 0.39 does not expose the admin
//!   ListConsumerGroupOffsets call, and the workspace forbids `unsafe` FFI. So
//!   [`crate::group_offsets`] speaks the wire protocol for them: one FindCoordinator for
//!   every group, then one OffsetFetch and one DescribeGroups per coordinator, over one
//!   connection per broker. A thousand Pipelines cost the same three requests as one.
//! - Fallback, for TLS clusters (that client is plaintext only) and brokers older than
//!   Kafka 3.0 (no batched OffsetFetch): each group gets one cached rdkafka consumer with its
//!   `group.id` that never subscribes (so never joins the group), fetching the group's
//!   committed offsets in one OffsetFetch, and its description through the shared client.
//! - Every call blocks, so a whole cluster's batch runs in one `spawn_blocking`.
//!
//! The module is split by what each part talks to: [`arithmetic`] (pure: offsets to lag,
//! assignments to live partitions), `rdkafka_client` (librdkafka: metadata, ListOffsets,
//! the per-group fallback) and `wire_client` (the batched group calls over
//! [`crate::group_offsets`]). This file holds the cache of clients per cluster and the
//! batch that puts the three together.

pub mod arithmetic;
mod rdkafka_client;
mod wire_client;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_config::config::OffsetReset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;

use crate::group_offsets::GroupOffsetsClient;
pub use arithmetic::{
    GroupLag, PartitionLagReport, PartitionOffsets, assigned_partitions, decode_assignment,
    partition_lag,
};
use rdkafka_client::{EARLIEST, LATEST};
use wire_client::GroupCalls;

/// How long one Kafka request may take before the poll gives up on it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, thiserror::Error)]
pub enum LagError {
    #[error("cannot create a Kafka client for {bootstrap}: {source}")]
    CreateClient {
        bootstrap: String,
        source: Box<KafkaError>,
    },
    #[error("cannot read the metadata of topic {topic} from {bootstrap}: {source}")]
    FetchMetadata {
        bootstrap: String,
        topic: String,
        source: Box<KafkaError>,
    },
    #[error("topic {topic} does not exist on {bootstrap}")]
    TopicNotFound { bootstrap: String, topic: String },
    #[error("cannot list the {which} offsets of topic {topic} on {bootstrap}: {source}")]
    ListOffsets {
        which: &'static str,
        bootstrap: String,
        topic: String,
        source: Box<KafkaError>,
    },
    #[error("cannot read the committed offsets of group {group} on {bootstrap}: {source}")]
    FetchCommitted {
        bootstrap: String,
        group: String,
        source: Box<KafkaError>,
    },
    #[error("cannot read group {group} on {bootstrap}: {message}")]
    GroupOffsets {
        bootstrap: String,
        group: String,
        message: String,
    },
    #[error("the lag reader for {bootstrap} stopped: {message}")]
    Task { bootstrap: String, message: String },
}

/// One Kafka cluster as a client sees it: the key under which clients are shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterConfig {
    pub bootstrap_servers: String,
    /// Extra librdkafka properties, e.g. `security.protocol`.
    pub properties: BTreeMap<String, String>,
}

impl ClusterConfig {
    pub fn plaintext(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
        }
    }
}

/// One stage's consumer group on one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagQuery {
    pub topic: String,
    pub group: String,
    pub offset_reset: OffsetReset,
}

/// A group's committed offset per partition, which partitions have a live consumer, and
/// the group's state.
type GroupFacts = (BTreeMap<i32, Option<i64>>, Vec<bool>, Option<String>);

/// Clients of one cluster: one shared rdkafka client, and the batched group calls (or, as
/// the fallback, one rdkafka client per consumer group).
struct ClusterClients {
    config: ClusterConfig,
    shared: BaseConsumer,
    group_calls: Mutex<GroupCalls>,
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl ClusterClients {
    fn new(config: ClusterConfig) -> Result<Self, LagError> {
        let shared = config
            .client_config()
            .create()
            .map_err(|source| LagError::CreateClient {
                bootstrap: config.bootstrap_servers.clone(),
                source: Box::new(source),
            })?;
        // The wire client speaks plaintext only: any security setting means the fallback.
        let group_calls = if config.properties.is_empty() {
            GroupCalls::Batched(GroupOffsetsClient::new(
                &config.bootstrap_servers,
                REQUEST_TIMEOUT,
            ))
        } else {
            GroupCalls::PerGroup
        };
        Ok(Self {
            config,
            shared,
            group_calls: Mutex::new(group_calls),
            groups: Mutex::new(HashMap::new()),
        })
    }

    fn bootstrap(&self) -> String {
        self.config.bootstrap_servers.clone()
    }

    /// Every query against this cluster, with the shared calls made once per topic; and
    /// how many Kafka calls that took (metadata per topic, two ListOffsets rounds, the group
    /// calls; librdkafka fans a ListOffsets round out per partition leader).
    fn read_batch(&self, queries: &[LagQuery]) -> (Vec<Result<GroupLag, LagError>>, u64) {
        let topics: BTreeSet<&str> = queries.iter().map(|q| q.topic.as_str()).collect();
        let mut calls = topics.len() as u64 + 2;
        let mut partitions: BTreeMap<&str, Result<Vec<i32>, LagError>> = BTreeMap::new();
        for topic in topics {
            partitions.insert(topic, self.partitions_of(topic));
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, result) in &partitions {
            if let Ok(list) = result {
                for partition in list {
                    tpl.add_partition(topic, *partition);
                }
            }
        }
        let ends = self.list_offsets(&tpl, LATEST, "log-end");
        let starts = self.list_offsets(&tpl, EARLIEST, "log-start");
        let (batched, group_calls) = self.batched_group_reports(queries, &partitions);
        calls += group_calls;

        let results = queries
            .iter()
            .map(|query| {
                let partitions = partitions
                    .get(query.topic.as_str())
                    .cloned()
                    .unwrap_or_else(|| {
                        Err(LagError::TopicNotFound {
                            bootstrap: self.bootstrap(),
                            topic: query.topic.clone(),
                        })
                    })?;
                let ends = pick(&ends, &query.topic)?;
                let starts = pick(&starts, &query.topic)?;
                let (committed, alive, group_state) = match &batched {
                    Some(reports) => {
                        self.group_facts_batched(query, &partitions, reports.get(&query.group))?
                    }
                    None => self.group_facts_per_group(query, &partitions)?,
                };
                let reports = partitions
                    .iter()
                    .zip(alive)
                    .map(|(partition, consumer_alive)| {
                        let offsets = PartitionOffsets {
                            partition: *partition,
                            log_start: starts.get(partition).copied().unwrap_or(0),
                            log_end: ends.get(partition).copied().unwrap_or(0),
                            committed: committed.get(partition).copied().flatten(),
                        };
                        PartitionLagReport {
                            lag: partition_lag(&offsets, query.offset_reset),
                            offsets,
                            consumer_alive,
                        }
                    })
                    .collect();
                Ok(GroupLag {
                    query: query.clone(),
                    partitions: reports,
                    group_state,
                })
            })
            .collect();
        // Per-group fallback: an OffsetFetch and a group description per query.
        if batched.is_none() {
            calls += 2 * queries.len() as u64;
        }
        (results, calls)
    }
}

fn pick(
    offsets: &Result<BTreeMap<String, BTreeMap<i32, i64>>, LagError>,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, LagError> {
    match offsets {
        Ok(by_topic) => Ok(by_topic.get(topic).cloned().unwrap_or_default()),
        Err(err) => Err(err.clone()),
    }
}

/// Reads lag, reusing one set of clients per cluster across every Pipeline.
#[derive(Default)]
pub struct LagReader {
    clusters: Mutex<HashMap<ClusterConfig, Arc<ClusterClients>>>,
}

impl std::fmt::Debug for LagReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("LagReader")
            .field("clusters", &clusters.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LagReader {
    pub fn new() -> Self {
        Self::default()
    }

    fn clients(&self, cluster: &ClusterConfig) -> Result<Arc<ClusterClients>, LagError> {
        let mut clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(clients) = clusters.get(cluster) {
            return Ok(clients.clone());
        }
        let clients = Arc::new(ClusterClients::new(cluster.clone())?);
        clusters.insert(cluster.clone(), clients.clone());
        Ok(clients)
    }

    /// Reads every query against one cluster in one blocking batch; results in query order.
    pub async fn read(
        &self,
        cluster: &ClusterConfig,
        queries: Vec<LagQuery>,
    ) -> Vec<Result<GroupLag, LagError>> {
        self.read_counted(cluster, queries).await.0
    }

    /// [`Self::read`], and how many Kafka calls the batch took.
    pub async fn read_counted(
        &self,
        cluster: &ClusterConfig,
        queries: Vec<LagQuery>,
    ) -> (Vec<Result<GroupLag, LagError>>, u64) {
        let clients = match self.clients(cluster) {
            Ok(clients) => clients,
            Err(err) => return (queries.iter().map(|_| Err(err.clone())).collect(), 0),
        };
        let count = queries.len();
        let bootstrap = cluster.bootstrap_servers.clone();
        match tokio::task::spawn_blocking(move || clients.read_batch(&queries)).await {
            Ok(read) => read,
            Err(err) => {
                let err = LagError::Task {
                    bootstrap,
                    message: err.to_string(),
                };
                ((0..count).map(|_| Err(err.clone())).collect(), 0)
            }
        }
    }

    /// Drops clients no longer needed: whole clusters, and groups no stage reads any more.
    pub fn retain(&self, wanted: &BTreeSet<(ClusterConfig, String)>) {
        let mut clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        clusters.retain(|cluster, clients| {
            clients
                .groups
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|group, _| wanted.contains(&(cluster.clone(), group.clone())));
            wanted.iter().any(|(c, _)| c == cluster)
        });
    }

    /// Connections the batched group calls opened, over all clusters: for tests and the
    /// benchmark (one per broker when nothing failed).
    pub fn group_connections_opened(&self) -> u64 {
        let clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        clusters
            .values()
            .map(
                |c| match &*c.group_calls.lock().unwrap_or_else(PoisonError::into_inner) {
                    GroupCalls::Batched(client) => client.connections_opened(),
                    GroupCalls::PerGroup => 0,
                },
            )
            .sum()
    }

    /// Clients held, as (clusters, group clients): for tests and debugging.
    pub fn client_counts(&self) -> (usize, usize) {
        let clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        let groups = clusters
            .values()
            .map(|c| {
                c.groups
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len()
            })
            .sum();
        (clusters.len(), groups)
    }
}
