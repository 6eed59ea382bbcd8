//! The lag reader's batched group calls: committed offsets and descriptions of every group
//! of a cluster in a few requests per broker, over [`crate::group_offsets`].

use std::collections::{BTreeMap, HashMap};
use std::sync::PoisonError;

use tracing::info;

use super::arithmetic::live_from_description;
use super::{ClusterClients, GroupFacts, LagError, LagQuery};
use crate::group_offsets::{GroupOffsetsClient, GroupQuery, GroupReport, WireError};

/// How committed offsets and group descriptions are read on one cluster.
pub(super) enum GroupCalls {
    /// Batched over the wire protocol.
    Batched(GroupOffsetsClient),
    /// One rdkafka client per group (TLS, or a broker without the batched calls).
    PerGroup,
}

/// The batched answer per group: its report, or why it failed.
pub(super) type GroupReports = HashMap<String, Result<GroupReport, String>>;

impl ClusterClients {
    /// Every query's group through the batched calls; `None` when this cluster uses the
    /// per-group fallback (decided here for good if the broker is too old).
    pub(super) fn batched_group_reports(
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
    pub(super) fn group_facts_batched(
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
}
