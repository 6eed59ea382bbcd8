//! Where a partition starts and what its checkpoint is worth: Redis is the source of truth
//! for position (the rules in full: docs/exactly-once.md).
//!
//! - **At assignment** each partition is placed at an explicit offset ([`plan`]), decided
//!   from its checkpoint in Redis and what Kafka says (log start and end, the group's
//!   committed offset and the epoch in its metadata). Kafka's committed offset only decides
//!   for a data set Redis has never seen.
//! - **A checkpoint of another incarnation of the topic counts as none.** The incarnation
//!   signal: a checkpoint at or above the log end, or a record at the checkpoint's offset
//!   with another Kafka timestamp than the checkpoint remembers (the partition is placed at
//!   the checkpoint itself, so its first record is the one the checkpoint names).
//! - **While running**, a checkpoint read under `WATCH` below what this writer knows Redis
//!   held means Redis lost acknowledged writes (a replica promoted, a restart without
//!   persistence): the partition is sought back to it ([`Partition::on_checkpoint_read`]).
//!   Offsets going back without a seek mean librdkafka reset the position because the log
//!   changed under it: treated as a new incarnation.

use crate::config::OffsetReset;
use crate::sink::Checkpoint;

/// The offset commit metadata stored offsets carry: the data set's epoch.
const COMMIT_METADATA_PREFIX: &str = "ferry/1 epoch=";

pub fn commit_metadata(epoch: &str) -> String {
    format!("{COMMIT_METADATA_PREFIX}{epoch}")
}

/// The epoch a commit's metadata names, if Ferry wrote it.
pub fn epoch_of(metadata: &str) -> Option<&str> {
    metadata.strip_prefix(COMMIT_METADATA_PREFIX)
}

/// What Kafka says about a partition when it is assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaFacts {
    pub partition: i32,
    /// The log start offset (the first record retention kept).
    pub low: i64,
    /// The log end offset (the next record's offset).
    pub high: i64,
    /// The group's committed offset (the next record to read), if any.
    pub committed: Option<i64>,
    /// The epoch the committed offset's metadata names, if Ferry committed it.
    pub committed_epoch: Option<String>,
    /// With `latest` and a start time: the first offset at or after it (the log end if
    /// no record is that recent).
    pub latest_from: Option<i64>,
}

/// Something about a partition's position that the stage reports (metrics, log, status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PositionEvent {
    /// The checkpoint is at or above the log end, or the record at its offset has another
    /// timestamp: the topic was deleted and created again (or its log truncated). The
    /// partition is read from its beginning.
    TopicRecreated,
    /// The group's commits name this data set's epoch but Redis holds no checkpoint: Redis
    /// lost the data. The partition is replayed from its beginning.
    RedisLostCheckpoint,
    /// While running, the checkpoint in Redis went back: the partition is re-read from it.
    RedisRewound,
    /// Records after the checkpoint are gone from Kafka (retention); counted, not waited for.
    RetentionGap,
    /// The group's committed offset is above the log end (negative lag).
    CommittedAboveLogEnd,
    /// Offsets went back within an assignment without a seek: librdkafka reset the position
    /// because the log changed under it. Read on as a new incarnation.
    OffsetsWentBack,
}

impl PositionEvent {
    /// The `reason` label of `ferry_position_events_total`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TopicRecreated => "topic_recreated",
            Self::RedisLostCheckpoint => "redis_lost_checkpoint",
            Self::RedisRewound => "redis_rewound",
            Self::RetentionGap => "retention_gap",
            Self::CommittedAboveLogEnd => "committed_above_log_end",
            Self::OffsetsWentBack => "offsets_went_back",
        }
    }

    /// What happened and what the stage does about it, for the log.
    pub const fn explain(self) -> &'static str {
        match self {
            Self::TopicRecreated => {
                "the checkpoint belongs to another incarnation of the topic (deleted and \
                 created again, or its log truncated): it counts as none, and the partition \
                 is read from its beginning"
            }
            Self::RedisLostCheckpoint => {
                "the group's commits name this data set's epoch but Redis holds no \
                 checkpoint: Redis lost data, and the partition is replayed from its beginning"
            }
            Self::RedisRewound => {
                "Redis holds an older checkpoint than this stage committed (a replica \
                 promoted, a restart without persistence): the partition is re-read from it"
            }
            Self::RetentionGap => {
                "records after the checkpoint are gone from Kafka (retention); reading on from \
                 the log start"
            }
            Self::CommittedAboveLogEnd => {
                "the group's committed offset is above the log end (negative lag): the topic \
                 was probably created again"
            }
            Self::OffsetsWentBack => {
                "offsets went back without a seek: librdkafka reset the position because the \
                 log changed under it; reading on as a new incarnation"
            }
        }
    }
}

/// What the stage knows when it places a partition.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// The partition's checkpoint in Redis.
    pub checkpoint: Option<Checkpoint>,
    pub facts: &'a KafkaFacts,
    /// Whether the data set's marker is in Redis (some stage of it has started before).
    pub data_set_exists: bool,
    pub epoch: &'a str,
    pub reset: OffsetReset,
}

/// Where a partition starts, and how its checkpoint is read from then on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The offset the consumer is placed at.
    pub start: i64,
    /// Records at or below this offset are replays.
    pub floor: i64,
    /// The checkpoint whose record is read first, to check the incarnation.
    pub verify: Option<Checkpoint>,
    /// A checkpoint in Redis that belongs to another incarnation: it counts as none.
    pub void: Option<Checkpoint>,
    /// A checkpoint to write if none is there (a new data set that starts past offset 0).
    pub initial: Option<Checkpoint>,
    pub events: Vec<PositionEvent>,
    /// Records between the checkpoint and the log start, gone from Kafka.
    pub gap: u64,
}

impl Plan {
    fn at(start: i64, floor: i64) -> Self {
        Self {
            start,
            floor,
            verify: None,
            void: None,
            initial: None,
            events: Vec::new(),
            gap: 0,
        }
    }

    fn from_beginning(facts: &KafkaFacts) -> Self {
        Self::at(facts.low, facts.low - 1)
    }
}

/// Where a partition starts (the rules of docs/exactly-once.md, in order).
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let facts = input.facts;
    let committed_above_end = facts.committed.is_some_and(|c| c > facts.high);
    let mut plan = match input.checkpoint {
        Some(checkpoint) if checkpoint.offset >= facts.high => {
            let mut plan = Plan::from_beginning(facts);
            plan.void = Some(checkpoint);
            plan.events.push(PositionEvent::TopicRecreated);
            plan
        }
        Some(checkpoint) if checkpoint.offset < facts.low => {
            let mut plan = Plan::at(facts.low, checkpoint.offset);
            plan.gap = u64::try_from(facts.low - checkpoint.offset - 1).unwrap_or(0);
            if plan.gap > 0 {
                plan.events.push(PositionEvent::RetentionGap);
            }
            plan
        }
        Some(checkpoint) => match checkpoint.timestamp_ms {
            Some(_) => {
                let mut plan = Plan::at(checkpoint.offset, checkpoint.offset);
                plan.verify = Some(checkpoint);
                plan
            }
            None => Plan::at(checkpoint.offset + 1, checkpoint.offset),
        },
        None if facts.committed_epoch.as_deref() == Some(input.epoch) => {
            let mut plan = Plan::from_beginning(facts);
            plan.events.push(PositionEvent::RedisLostCheckpoint);
            plan
        }
        // A partition added later, or one that never had a record: all of it is new.
        None if input.data_set_exists => Plan::from_beginning(facts),
        None => match facts.committed {
            // A new data set on a group that has read this topic: Kafka's position, unless
            // it is past the log end (the topic was created again) or before its start.
            Some(committed) if committed >= facts.low && committed <= facts.high => {
                let mut plan = Plan::at(committed, committed - 1);
                plan.initial = start_checkpoint(committed, facts);
                plan
            }
            Some(_) => Plan::from_beginning(facts),
            None => match input.reset {
                OffsetReset::Earliest => Plan::from_beginning(facts),
                OffsetReset::Latest => {
                    let start = facts
                        .latest_from
                        .map_or(facts.high, |from| from.clamp(facts.low, facts.high));
                    let mut plan = Plan::at(start, start - 1);
                    plan.initial = start_checkpoint(start, facts);
                    plan
                }
            },
        },
    };
    if committed_above_end {
        plan.events.push(PositionEvent::CommittedAboveLogEnd);
    }
    plan
}

/// The checkpoint that pins a new data set's start at `start`: without it, a rebalance
/// before the first record would find neither a checkpoint nor a commit of this epoch and
/// decide again (with `latest`, later than the records produced meanwhile).
fn start_checkpoint(start: i64, facts: &KafkaFacts) -> Option<Checkpoint> {
    (start > facts.low).then_some(Checkpoint {
        offset: start - 1,
        timestamp_ms: None,
    })
}

/// What a writer does about one owned partition's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// A record to take into the batch.
    Take,
    /// A record to take, after something the stage reports.
    TakeReporting(PositionEvent),
    /// Already applied: skip it.
    Skip,
    /// Consumed before a seek in flight: dropped, it comes again from the new position.
    Stale,
    /// Seek the partition to `offset` (`None`: its beginning) and skip its records until
    /// the seek is done; the event says why.
    Seek {
        offset: Option<i64>,
        event: PositionEvent,
    },
}

/// A writer's view of one owned partition: the replay floor, what it knows Redis holds,
/// and the seek or incarnation check in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The highest offset taken or known applied: a record at or below it is a replay.
    highest: i64,
    /// The checkpoint this writer last read or wrote, if any.
    known: Option<Checkpoint>,
    /// A checkpoint of another incarnation: read from Redis, it counts as none.
    void: Option<Checkpoint>,
    /// The first record must be this checkpoint's (same offset and timestamp).
    verify: Option<Checkpoint>,
    /// A seek is in flight: skip every record until it is done.
    seeking: bool,
}

impl Partition {
    pub fn new(plan: &Plan, checkpoint: Option<Checkpoint>) -> Self {
        Self {
            highest: plan.floor,
            known: checkpoint.or(plan.initial),
            void: plan.void,
            verify: plan.verify,
            seeking: false,
        }
    }

    /// Whether a record at `offset` (with this Kafka timestamp) is taken.
    pub fn admit(&mut self, offset: i64, timestamp_ms: Option<i64>) -> Admit {
        if self.seeking {
            return Admit::Stale;
        }
        if let Some(verify) = self.verify.take() {
            if offset == verify.offset && timestamp_ms != verify.timestamp_ms {
                return self.seek_to_beginning(PositionEvent::TopicRecreated);
            }
            if offset < verify.offset {
                return self.seek_to_beginning(PositionEvent::OffsetsWentBack);
            }
            // The checkpoint's own record (a replay), or it is gone (compacted): go on.
        } else if offset <= self.highest {
            // Placed exactly, a partition never goes back unless librdkafka reset it: the
            // log changed under it, and what follows is the new log, in order.
            self.void = self.known;
            self.known = None;
            self.highest = offset;
            return Admit::TakeReporting(PositionEvent::OffsetsWentBack);
        }
        if offset <= self.highest {
            return Admit::Skip;
        }
        self.highest = offset;
        Admit::Take
    }

    fn seek_to_beginning(&mut self, event: PositionEvent) -> Admit {
        self.void = self.known;
        self.known = None;
        self.highest = -1;
        self.seeking = true;
        Admit::Seek {
            offset: None,
            event,
        }
    }

    /// The checkpoint's offset as this partition reads it: none, or one of another
    /// incarnation, is -1.
    pub fn effective(&self, checkpoint: Option<Checkpoint>) -> i64 {
        match checkpoint {
            Some(checkpoint) if Some(checkpoint) != self.void => checkpoint.offset,
            _ => -1,
        }
    }

    /// A checkpoint read under `WATCH`: `Some(offset)` (the offset to seek to, `None`: the
    /// beginning) if Redis went back from what this writer knew it held.
    pub fn on_checkpoint_read(&mut self, checkpoint: Option<Checkpoint>) -> Option<Option<i64>> {
        let known = self.effective(self.known);
        let read = self.effective(checkpoint);
        if read >= known {
            return None;
        }
        self.known = checkpoint.filter(|c| Some(*c) != self.void);
        self.highest = read;
        self.seeking = true;
        Some((read >= 0).then_some(read + 1))
    }

    /// The seek asked for is done: records from here on are the re-read ones.
    pub fn sought(&mut self) {
        self.seeking = false;
    }

    /// Its records from `offset` on were given up for now (one could not go out): they are
    /// read again from there, after a seek; until it is done, every record is skipped.
    pub fn rewind(&mut self, offset: i64) {
        self.highest = offset - 1;
        self.seeking = true;
    }

    /// Whether records are skipped until a seek in flight is done.
    #[cfg(test)]
    fn is_seeking(&self) -> bool {
        self.seeking
    }

    /// A batch committed this checkpoint.
    pub fn committed(&mut self, checkpoint: Checkpoint) {
        self.known = Some(checkpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(low: i64, high: i64) -> KafkaFacts {
        KafkaFacts {
            partition: 0,
            low,
            high,
            committed: None,
            committed_epoch: None,
            latest_from: None,
        }
    }

    fn checkpoint(offset: i64, timestamp_ms: i64) -> Checkpoint {
        Checkpoint {
            offset,
            timestamp_ms: Some(timestamp_ms),
        }
    }

    fn input<'a>(checkpoint: Option<Checkpoint>, facts: &'a KafkaFacts) -> PlanInput<'a> {
        PlanInput {
            checkpoint,
            facts,
            data_set_exists: checkpoint.is_some(),
            epoch: "uid-1",
            reset: OffsetReset::Earliest,
        }
    }

    #[test]
    fn a_checkpoint_places_the_partition_at_its_own_record_to_check_it() {
        let log = facts(0, 100);
        let plan = plan(&input(Some(checkpoint(41, 5)), &log));
        assert_eq!((plan.start, plan.floor), (41, 41));
        assert_eq!(plan.verify, Some(checkpoint(41, 5)));
        assert!(plan.events.is_empty());
    }

    #[test]
    fn a_checkpoint_at_or_past_the_log_end_is_of_another_incarnation() {
        // The reproduction: checkpoint 124888, the recreated log ends near 3500.
        let log = facts(0, 3500);
        let plan = plan(&input(Some(checkpoint(124_888, 5)), &log));
        assert_eq!((plan.start, plan.floor), (0, -1));
        assert_eq!(plan.void, Some(checkpoint(124_888, 5)));
        assert_eq!(plan.events, [PositionEvent::TopicRecreated]);
    }

    #[test]
    fn a_checkpoint_before_the_log_start_counts_the_gap() {
        let log = facts(50, 100);
        let plan = plan(&input(Some(checkpoint(19, 5)), &log));
        assert_eq!((plan.start, plan.floor, plan.gap), (50, 19, 30));
        assert_eq!(plan.events, [PositionEvent::RetentionGap]);
    }

    #[test]
    fn no_checkpoint_and_a_commit_of_this_epoch_means_redis_lost_it() {
        let mut log = facts(0, 100);
        log.committed = Some(80);
        log.committed_epoch = Some("uid-1".to_owned());
        let plan = plan(&input(None, &log));
        assert_eq!((plan.start, plan.floor), (0, -1));
        assert_eq!(plan.events, [PositionEvent::RedisLostCheckpoint]);
    }

    #[test]
    fn a_commit_of_another_epoch_is_a_new_data_set_reusing_the_group() {
        let mut log = facts(0, 100);
        log.committed = Some(80);
        log.committed_epoch = Some("uid-0".to_owned());
        let plan = plan(&input(None, &log));
        assert_eq!((plan.start, plan.floor), (80, 79));
        assert_eq!(
            plan.initial,
            Some(Checkpoint {
                offset: 79,
                timestamp_ms: None
            })
        );
    }

    #[test]
    fn a_commit_past_the_log_end_reads_the_new_log_from_its_start() {
        let mut log = facts(0, 3500);
        log.committed = Some(120_000);
        let plan = plan(&input(None, &log));
        assert_eq!(plan.start, 0);
        assert_eq!(plan.events, [PositionEvent::CommittedAboveLogEnd]);
    }

    #[test]
    fn latest_pins_a_new_data_set_at_the_log_end_and_a_new_partition_starts_at_zero() {
        let log = facts(0, 100);
        let mut latest = input(None, &log);
        latest.reset = OffsetReset::Latest;
        let plan_new = plan(&latest);
        assert_eq!(plan_new.start, 100);
        assert_eq!(plan_new.initial.map(|c| c.offset), Some(99));
        // The same partition once the data set exists (another partition started it).
        latest.data_set_exists = true;
        assert_eq!(plan(&latest).start, 0);
        // With a start time (the Pipeline's creation): from the first record since.
        let mut since = log.clone();
        since.latest_from = Some(60);
        let mut from_creation = input(None, &since);
        from_creation.reset = OffsetReset::Latest;
        let plan_since = plan(&from_creation);
        assert_eq!((plan_since.start, plan_since.floor), (60, 59));
    }

    #[test]
    fn the_first_record_checks_the_incarnation() {
        let log = facts(0, 100);
        let same = plan(&input(Some(checkpoint(41, 5)), &log));
        let mut partition = Partition::new(&same, Some(checkpoint(41, 5)));
        assert_eq!(partition.admit(41, Some(5)), Admit::Skip);
        assert_eq!(partition.admit(42, Some(6)), Admit::Take);

        let mut recreated = Partition::new(&same, Some(checkpoint(41, 5)));
        assert_eq!(
            recreated.admit(41, Some(9)),
            Admit::Seek {
                offset: None,
                event: PositionEvent::TopicRecreated
            }
        );
        assert_eq!(recreated.admit(42, Some(6)), Admit::Stale);
        recreated.sought();
        assert_eq!(recreated.admit(0, Some(1)), Admit::Take);
        // Redis still holds the old incarnation's checkpoint: it counts as none.
        assert_eq!(recreated.effective(Some(checkpoint(41, 5))), -1);
    }

    #[test]
    fn a_checkpoint_that_went_back_seeks_to_it() {
        let log = facts(0, 100);
        let start = plan(&input(Some(checkpoint(9, 1)), &log));
        let mut partition = Partition::new(&start, Some(checkpoint(9, 1)));
        partition.committed(checkpoint(60, 2));
        assert_eq!(partition.on_checkpoint_read(Some(checkpoint(60, 2))), None);
        // A replica promoted with checkpoint 30: re-read from 31.
        assert_eq!(
            partition.on_checkpoint_read(Some(checkpoint(30, 3))),
            Some(Some(31))
        );
        assert!(partition.is_seeking());
        partition.sought();
        assert_eq!(partition.admit(31, Some(4)), Admit::Take);
        // Redis emptied: from the beginning.
        partition.committed(checkpoint(60, 2));
        assert_eq!(partition.on_checkpoint_read(None), Some(None));
    }

    #[test]
    fn a_held_partition_is_read_again_from_where_it_was_held_as_new_records() {
        let log = facts(0, 100);
        let start = plan(&input(Some(checkpoint(9, 1)), &log));
        let mut partition = Partition::new(&start, Some(checkpoint(9, 1)));
        for offset in 10..20 {
            assert_eq!(partition.admit(offset, Some(offset)), Admit::Take);
        }
        // Records 10..20 were given up for now: skipped until the seek back to 10 is done,
        // then taken again, not read as offsets that went back.
        partition.rewind(10);
        assert_eq!(partition.admit(19, Some(19)), Admit::Stale);
        partition.sought();
        for offset in 10..20 {
            assert_eq!(partition.admit(offset, Some(offset)), Admit::Take);
        }
        assert_eq!(partition.effective(partition.known), 9);
    }

    #[test]
    fn offsets_going_back_without_a_seek_read_on_as_a_new_incarnation() {
        let log = facts(0, 100);
        let start = plan(&input(None, &log));
        let mut partition = Partition::new(&start, None);
        for offset in 0..10 {
            assert_eq!(partition.admit(offset, Some(offset)), Admit::Take);
        }
        partition.committed(checkpoint(9, 9));
        assert_eq!(
            partition.admit(3, Some(100)),
            Admit::TakeReporting(PositionEvent::OffsetsWentBack)
        );
        assert_eq!(partition.admit(4, Some(101)), Admit::Take);
        assert_eq!(partition.effective(Some(checkpoint(9, 9))), -1);
    }
}
