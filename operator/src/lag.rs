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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_worker::config::OffsetReset;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::groups::GroupList;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info};

use crate::group_offsets::{GroupOffsetsClient, GroupQuery, GroupReport, WireError};
use crate::scaling::{Observation, PartitionLag};

/// How long one Kafka request may take before the poll gives up on it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// ListOffsets' special timestamps −1 (latest) and −2 (earliest), which rdkafka spells as
/// these offsets.
const LATEST: Offset = Offset::End;
const EARLIEST: Offset = Offset::Beginning;

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

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", "ferry-operator-lag")
            .set("enable.auto.commit", "false")
            .set("allow.auto.create.topics", "false");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// One stage's consumer group on one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagQuery {
    pub topic: String,
    pub group: String,
    pub offset_reset: OffsetReset,
}

/// One partition's offsets as read, and the lag they make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub partition: i32,
    pub log_start: i64,
    pub log_end: i64,
    pub committed: Option<i64>,
}

/// A group's lag on a topic, partition by partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    pub query: LagQuery,
    pub partitions: Vec<PartitionLagReport>,
    /// The group's state (`Stable`, `Empty`, …); `None` when the description failed.
    pub group_state: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLagReport {
    pub offsets: PartitionOffsets,
    pub lag: i64,
    pub consumer_alive: bool,
}

impl GroupLag {
    pub fn total(&self) -> i64 {
        self.partitions
            .iter()
            .fold(0_i64, |sum, p| sum.saturating_add(p.lag))
    }

    /// What the scaling policy needs.
    pub fn observation(&self) -> Observation {
        Observation {
            partitions: self
                .partitions
                .iter()
                .map(|p| PartitionLag {
                    partition: p.offsets.partition,
                    lag: p.lag,
                    committed: p.offsets.committed,
                    consumer_alive: p.consumer_alive,
                })
                .collect(),
        }
    }
}

/// Records the group still has to read on one partition.
pub fn partition_lag(offsets: &PartitionOffsets, reset: OffsetReset) -> i64 {
    let log_start = offsets.log_start.max(0);
    let log_end = offsets.log_end.max(log_start);
    match offsets.committed {
        Some(committed) if committed >= 0 => log_end.saturating_sub(committed.max(log_start)),
        // No commit (or a negative sentinel): where the consumer would begin.
        _ => match reset {
            OffsetReset::Earliest => log_end.saturating_sub(log_start),
            OffsetReset::Latest => 0,
        },
    }
    .max(0)
}

/// Partitions of `topic` assigned to the group's members, from the classic consumer
/// protocol's assignment bytes; `None` when some member's bytes can't be read.
pub fn assigned_partitions<'a>(
    assignments: impl IntoIterator<Item = Option<&'a [u8]>>,
    topic: &str,
) -> Option<BTreeSet<i32>> {
    let mut assigned = BTreeSet::new();
    for bytes in assignments {
        for (assigned_topic, partitions) in decode_assignment(bytes?)? {
            if assigned_topic == topic {
                assigned.extend(partitions);
            }
        }
    }
    Some(assigned)
}

/// `ConsumerProtocolAssignment` (versions 0–3): version, then `[topic, [partition]]`, then
/// user data, which is ignored.
pub fn decode_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    let mut reader = Reader { bytes, at: 0 };
    let _version = reader.i16()?;
    let topics = reader.count()?;
    let mut assignment = Vec::with_capacity(topics.min(1024));
    for _ in 0..topics {
        let name_len = usize::try_from(reader.i16()?).ok()?;
        let name = String::from_utf8(reader.take(name_len)?.to_vec()).ok()?;
        let partitions = reader.count()?;
        let mut list = Vec::with_capacity(partitions.min(1024));
        for _ in 0..partitions {
            list.push(reader.i32()?);
        }
        assignment.push((name, list));
    }
    Some(assignment)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, len: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(len)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn i16(&mut self) -> Option<i16> {
        let b = self.take(2)?;
        Some(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Option<i32> {
        let b = self.take(4)?;
        Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An array length; −1 (null) reads as empty.
    fn count(&mut self) -> Option<usize> {
        let n = self.i32()?;
        if n < 0 {
            Some(0)
        } else {
            usize::try_from(n).ok()
        }
    }
}

/// Which partitions have a live consumer, from a group description.
fn live_partitions(groups: &GroupList, group: &str, topic: &str, partitions: &[i32]) -> Vec<bool> {
    let Some(info) = groups.groups().iter().find(|g| g.name() == group) else {
        return vec![false; partitions.len()];
    };
    let members: Vec<Option<&[u8]>> = info.members().iter().map(|m| m.assignment()).collect();
    live_from_description(info.state(), &members, topic, partitions)
}

/// Which partitions have a live consumer, from a group's state and its members' assignments.
fn live_from_description(
    state: &str,
    assignments: &[Option<&[u8]>],
    topic: &str,
    partitions: &[i32],
) -> Vec<bool> {
    // During a rebalance nobody commits; that's not a stuck consumer.
    if state != "Stable" || assignments.is_empty() {
        return vec![false; partitions.len()];
    }
    match assigned_partitions(assignments.iter().copied(), topic) {
        Some(assigned) => partitions.iter().map(|p| assigned.contains(p)).collect(),
        None => vec![true; partitions.len()],
    }
}

/// How committed offsets and group descriptions are read on one cluster.
enum GroupCalls {
    /// Batched over the wire protocol.
    Batched(GroupOffsetsClient),
    /// One rdkafka client per group (TLS, or a broker without the batched calls).
    PerGroup,
}

/// The batched answer per group: its report, or why it failed.
type GroupReports = HashMap<String, Result<GroupReport, String>>;

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

    fn group_client(&self, group: &str) -> Result<Arc<BaseConsumer>, LagError> {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = groups.get(group) {
            return Ok(client.clone());
        }
        let client: BaseConsumer = self
            .config
            .client_config()
            .set("group.id", group)
            .create()
            .map_err(|source| LagError::CreateClient {
                bootstrap: self.bootstrap(),
                source: Box::new(source),
            })?;
        let client = Arc::new(client);
        groups.insert(group.to_owned(), client.clone());
        Ok(client)
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

    /// Every query's group through the batched calls; `None` when this cluster uses the
    /// per-group fallback (decided here for good if the broker is too old).
    fn batched_group_reports(
        &self,
        queries: &[LagQuery],
        partitions: &BTreeMap<&str, Result<Vec<i32>, LagError>>,
    ) -> (Option<GroupReports>, u64) {
        let mut calls = self
            .group_calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let GroupCalls::Batched(client) = &mut *calls else {
            return (None, 0);
        };
        let sent_before = client.requests_sent();
        let wire_queries: Vec<GroupQuery<'_>> = queries
            .iter()
            .filter_map(|query| {
                let Some(Ok(list)) = partitions.get(query.topic.as_str()) else {
                    return None;
                };
                Some(GroupQuery {
                    group: &query.group,
                    topic: &query.topic,
                    partitions: list,
                })
            })
            .collect();
        let outcome = client.fetch(&wire_queries);
        let sent = client.requests_sent() - sent_before;
        let reports = match outcome {
            Ok(reports) => Some(reports),
            Err(error @ WireError::Unsupported { .. }) => {
                info!(bootstrap = %self.bootstrap(), %error, "reading group offsets with one client per group");
                *calls = GroupCalls::PerGroup;
                None
            }
            Err(error) => {
                let message = error.to_string();
                Some(
                    wire_queries
                        .iter()
                        .map(|q| (q.group.to_owned(), Err(message.clone())))
                        .collect(),
                )
            }
        };
        (reports, sent)
    }

    /// Committed offsets, live partitions and state from a batched group report.
    fn group_facts_batched(
        &self,
        query: &LagQuery,
        partitions: &[i32],
        report: Option<&Result<GroupReport, String>>,
    ) -> Result<GroupFacts, LagError> {
        let error = |message: String| LagError::GroupOffsets {
            bootstrap: self.bootstrap(),
            group: query.group.clone(),
            message,
        };
        let report = match report {
            Some(Ok(report)) => report,
            Some(Err(message)) => return Err(error(message.clone())),
            None => return Err(error("not in the batched answer".to_owned())),
        };
        let on_topic = report.committed.get(&query.topic);
        let committed = partitions
            .iter()
            .map(|p| (*p, on_topic.and_then(|c| c.get(p).copied().flatten())))
            .collect();
        let alive = match &report.state {
            Some(state) => {
                let members: Vec<Option<&[u8]>> = report
                    .assignments
                    .iter()
                    .map(|a| Some(a.as_ref()))
                    .collect();
                live_from_description(state, &members, &query.topic, partitions)
            }
            None => vec![false; partitions.len()],
        };
        Ok((committed, alive, report.state.clone()))
    }

    /// The same through the per-group rdkafka client and the shared client.
    fn group_facts_per_group(
        &self,
        query: &LagQuery,
        partitions: &[i32],
    ) -> Result<GroupFacts, LagError> {
        let committed = self.committed(query, partitions)?;
        let description = self
            .shared
            .fetch_group_list(Some(&query.group), REQUEST_TIMEOUT);
        if let Err(err) = &description {
            debug!(group = %query.group, error = %err, "cannot describe the group");
        }
        let alive = match &description {
            Ok(groups) => live_partitions(groups, &query.group, &query.topic, partitions),
            Err(_) => vec![false; partitions.len()],
        };
        let state = description.ok().and_then(|groups| {
            groups
                .groups()
                .iter()
                .find(|g| g.name() == query.group)
                .map(|g| g.state().to_owned())
        });
        Ok((committed, alive, state))
    }

    fn partitions_of(&self, topic: &str) -> Result<Vec<i32>, LagError> {
        let metadata = self
            .shared
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(|source| LagError::FetchMetadata {
                bootstrap: self.bootstrap(),
                topic: topic.to_owned(),
                source: Box::new(source),
            })?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .filter(|t| !t.partitions().is_empty());
        let Some(found) = found else {
            return Err(LagError::TopicNotFound {
                bootstrap: self.bootstrap(),
                topic: topic.to_owned(),
            });
        };
        let mut partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
        partitions.sort_unstable();
        Ok(partitions)
    }

    /// One ListOffsets round for every partition in `tpl`: topic → partition → offset.
    fn list_offsets(
        &self,
        tpl: &TopicPartitionList,
        timestamp: Offset,
        which: &'static str,
    ) -> Result<BTreeMap<String, BTreeMap<i32, i64>>, LagError> {
        let error = |topic: &str, source: KafkaError| LagError::ListOffsets {
            which,
            bootstrap: self.bootstrap(),
            topic: topic.to_owned(),
            source: Box::new(source),
        };
        let mut request = tpl.clone();
        request
            .set_all_offsets(timestamp)
            .map_err(|source| error("*", source))?;
        let answer = self
            .shared
            .offsets_for_times(request, REQUEST_TIMEOUT)
            .map_err(|source| error("*", source))?;
        let mut offsets: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        for elem in answer.elements() {
            elem.error().map_err(|source| error(elem.topic(), source))?;
            let offset = match elem.offset() {
                Offset::Offset(offset) => offset,
                other => {
                    return Err(error(
                        elem.topic(),
                        KafkaError::OffsetFetch(rdkafka::types::RDKafkaErrorCode::Fail),
                    ))
                    .inspect_err(|_| debug!(?other, "unexpected offset in ListOffsets"));
                }
            };
            offsets
                .entry(elem.topic().to_owned())
                .or_default()
                .insert(elem.partition(), offset);
        }
        Ok(offsets)
    }

    /// The group's committed offset per partition, `None` where it never committed.
    fn committed(
        &self,
        query: &LagQuery,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, Option<i64>>, LagError> {
        let error = |source| LagError::FetchCommitted {
            bootstrap: self.bootstrap(),
            group: query.group.clone(),
            source: Box::new(source),
        };
        let client = self.group_client(&query.group)?;
        let mut tpl = TopicPartitionList::new();
        for partition in partitions {
            tpl.add_partition(&query.topic, *partition);
        }
        let answer = client
            .committed_offsets(tpl, REQUEST_TIMEOUT)
            .map_err(error)?;
        let mut committed = BTreeMap::new();
        for elem in answer.elements_for_topic(&query.topic) {
            elem.error().map_err(error)?;
            let offset = match elem.offset() {
                Offset::Offset(offset) if offset >= 0 => Some(offset),
                _ => None,
            };
            committed.insert(elem.partition(), offset);
        }
        Ok(committed)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(log_start: i64, log_end: i64, committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets {
            partition: 0,
            log_start,
            log_end,
            committed,
        }
    }

    #[test]
    fn lag_table() {
        use OffsetReset::{Earliest, Latest};
        let cases = [
            (
                "committed behind the end",
                offsets(0, 100, Some(40)),
                Earliest,
                60,
            ),
            ("caught up", offsets(0, 100, Some(100)), Earliest, 0),
            (
                "reset does not matter once committed",
                offsets(0, 100, Some(40)),
                Latest,
                60,
            ),
            (
                "no commit, earliest: the whole log",
                offsets(10, 100, None),
                Earliest,
                90,
            ),
            (
                "no commit, latest: nothing",
                offsets(10, 100, None),
                Latest,
                0,
            ),
            (
                "retention deleted past the commit",
                offsets(70, 100, Some(40)),
                Earliest,
                30,
            ),
            (
                "commit beyond the end never goes negative",
                offsets(0, 100, Some(120)),
                Earliest,
                0,
            ),
            ("empty partition", offsets(0, 0, None), Earliest, 0),
            (
                "fully deleted partition",
                offsets(50, 50, Some(10)),
                Earliest,
                0,
            ),
            (
                "negative sentinel counts as no commit",
                offsets(0, 5, Some(-1001)),
                Earliest,
                5,
            ),
            (
                "start after end from racing reads",
                offsets(60, 50, None),
                Earliest,
                0,
            ),
        ];
        for (name, offsets, reset, want) in cases {
            assert_eq!(partition_lag(&offsets, reset), want, "{name}");
        }
    }

    fn encode_assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut bytes = vec![0, 1]; // version 1
        bytes.extend(i32::try_from(topics.len()).unwrap().to_be_bytes());
        for (topic, partitions) in topics {
            bytes.extend(i16::try_from(topic.len()).unwrap().to_be_bytes());
            bytes.extend(topic.as_bytes());
            bytes.extend(i32::try_from(partitions.len()).unwrap().to_be_bytes());
            for p in *partitions {
                bytes.extend(p.to_be_bytes());
            }
        }
        bytes.extend((-1_i32).to_be_bytes()); // null user data
        bytes
    }

    #[test]
    fn decodes_consumer_protocol_assignments() {
        let bytes = encode_assignment(&[("orders", &[0, 2]), ("other", &[1])]);
        assert_eq!(
            decode_assignment(&bytes),
            Some(vec![
                ("orders".to_owned(), vec![0, 2]),
                ("other".to_owned(), vec![1])
            ])
        );
        assert_eq!(decode_assignment(&bytes[..7]), None, "truncated");
        assert_eq!(decode_assignment(&[]), None);
    }

    #[test]
    fn assigned_partitions_unions_members_of_one_topic() {
        let a = encode_assignment(&[("orders", &[0, 2])]);
        let b = encode_assignment(&[("orders", &[1]), ("other", &[5])]);
        assert_eq!(
            assigned_partitions([Some(a.as_slice()), Some(b.as_slice())], "orders"),
            Some(BTreeSet::from([0, 1, 2]))
        );
        assert_eq!(
            assigned_partitions([Some(a.as_slice()), None], "orders"),
            None,
            "a member without an assignment makes it unknown"
        );
    }

    #[test]
    fn observation_carries_lag_and_liveness() {
        let lag = GroupLag {
            query: LagQuery {
                topic: "t".into(),
                group: "g".into(),
                offset_reset: OffsetReset::Earliest,
            },
            partitions: vec![
                PartitionLagReport {
                    offsets: offsets(0, 10, Some(4)),
                    lag: 6,
                    consumer_alive: true,
                },
                PartitionLagReport {
                    offsets: PartitionOffsets {
                        partition: 1,
                        ..offsets(0, 3, None)
                    },
                    lag: 3,
                    consumer_alive: false,
                },
            ],
            group_state: Some("Stable".into()),
        };
        assert_eq!(lag.total(), 9);
        let observation = lag.observation();
        assert_eq!(observation.total_lag(), 9);
        assert_eq!(observation.partitions[1].committed, None);
        assert!(observation.partitions[0].consumer_alive);
    }
}
