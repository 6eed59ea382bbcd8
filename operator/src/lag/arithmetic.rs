//! Lag arithmetic, pure: a partition's offsets to the records its group has left, and a
//! group description to the partitions that have a live consumer.

use std::collections::BTreeSet;

use bytes::{Buf, Bytes};
use ferry_config::config::OffsetReset;
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::{Decodable, Message};

use super::LagQuery;
use crate::scaling::{Observation, PartitionLag};

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

/// A member's `ConsumerProtocolAssignment` as `[(topic, [partition])]`, decoded by
/// kafka-protocol; `None` when the bytes don't parse. A version newer than the crate knows
/// is read as the newest it knows: the protocol only appends fields, as Kafka's own
/// consumer reads it.
pub fn decode_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    let mut buf = Bytes::copy_from_slice(bytes);
    if buf.remaining() < 2 {
        return None;
    }
    let version = buf.get_i16();
    if version < 0 {
        return None;
    }
    let version = version.min(ConsumerProtocolAssignment::VERSIONS.max);
    let assignment = ConsumerProtocolAssignment::decode(&mut buf, version).ok()?;
    Some(
        assignment
            .assigned_partitions
            .into_iter()
            .map(|tp| (tp.topic.0.to_string(), tp.partitions))
            .collect(),
    )
}

/// Which partitions have a live consumer, from a group's state and its members' assignments.
pub(super) fn live_from_description(
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
    fn a_newer_assignment_version_reads_as_the_newest_known() {
        let mut bytes = encode_assignment(&[("orders", &[3])]);
        bytes[..2].copy_from_slice(&9_i16.to_be_bytes());
        assert_eq!(
            decode_assignment(&bytes),
            Some(vec![("orders".to_owned(), vec![3])])
        );
        bytes[..2].copy_from_slice(&(-1_i16).to_be_bytes());
        assert_eq!(decode_assignment(&bytes), None, "a negative version");
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
