//! The lag reader's librdkafka side: one shared client per cluster for metadata, both
//! ListOffsets rounds and group descriptions, and the per-group fallback for committed
//! offsets (TLS clusters, brokers older than Kafka 3.0).

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::groups::GroupList;
use rdkafka::{Offset, TopicPartitionList};
use tracing::debug;

use super::arithmetic::live_from_description;
use super::{ClusterClients, ClusterConfig, GroupFacts, LagError, LagQuery, REQUEST_TIMEOUT};

/// ListOffsets' special timestamps −1 (latest) and −2 (earliest), which rdkafka spells as
/// these offsets.
pub(super) const LATEST: Offset = Offset::End;
pub(super) const EARLIEST: Offset = Offset::Beginning;

impl ClusterConfig {
    pub(super) fn client_config(&self) -> ClientConfig {
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

/// Which partitions have a live consumer, from a group description.
fn live_partitions(groups: &GroupList, group: &str, topic: &str, partitions: &[i32]) -> Vec<bool> {
    let Some(info) = groups.groups().iter().find(|g| g.name() == group) else {
        return vec![false; partitions.len()];
    };
    let members: Vec<Option<&[u8]>> = info.members().iter().map(|m| m.assignment()).collect();
    live_from_description(info.state(), &members, topic, partitions)
}

impl ClusterClients {
    pub(super) fn group_client(&self, group: &str) -> Result<Arc<BaseConsumer>, LagError> {
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

    /// The same through the per-group rdkafka client and the shared client.
    pub(super) fn group_facts_per_group(
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

    pub(super) fn partitions_of(&self, topic: &str) -> Result<Vec<i32>, LagError> {
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
    pub(super) fn list_offsets(
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
    pub(super) fn committed(
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
