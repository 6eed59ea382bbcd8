//! The receive stage: Kafka records into Redis, exactly once in effect.
//!
//! It runs on the one consumption pipeline ([`super::pipeline`]) and supplies only what
//! is the receiver's own: the checks a record must pass to be stored ([`Validator`],
//! on the consumer task) and the storage commands a batch adds to its transaction
//! ([`crate::sink::storage_commands`]), plus the batch event. Refused records (undecodable,
//! too old) travel in the same batches and are dead-lettered (or counted and logged)
//! before the batch commits, so their offsets advance with the checkpoint and they never
//! stop the worker.

use std::collections::HashSet;

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;

use super::pipeline::{
    self, Decode, Decoded, Effects, Fresh, KindError, Positioned, ProducedTopics, Refusal,
    Rejected, StageKind, StageOptions, StageSpec,
};
use super::{ConsumeError, Shutdown};
use crate::config::{RecordFormat, StageConfig, StorageEncoding, WorkerConfig};
use crate::record::{self, RejectReason};
use crate::sink::{self, FastHash, StorageCommands, StorageLayout, StoredRecord};

/// With `max_age` set, how far ahead of the receiver's clock a record's timestamp may be:
/// clock skew between sources and workers. A record further ahead is refused as
/// `future_timestamp`; it would otherwise count as fresh for as long as it likes (a year
/// ahead passes any `max_age`) and sort above every real record in a `zset`.
pub const MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;

/// Decides per record: store it, or refuse it with a reason.
#[derive(Debug, Clone)]
pub struct Validator {
    pub format: RecordFormat,
    pub max_age_ms: Option<i64>,
    /// `json`: the stored value is the record re-encoded as JSON, not the bytes received.
    pub encoding: StorageEncoding,
}

impl Validator {
    pub fn check(
        &self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        kafka_timestamp_ms: Option<i64>,
        now_ms: i64,
    ) -> Decoded<StoredRecord> {
        let reject = |reason: RejectReason, detail: String| {
            Box::new(Rejected {
                partition,
                offset,
                timestamp_ms: kafka_timestamp_ms,
                reason: Refusal::Record(reason),
                detail,
                key: key.map(<[u8]>::to_vec),
                payload: payload.map(<[u8]>::to_vec),
            })
        };
        let source = match record::source_id(key) {
            Ok(source) => source,
            Err(err) => return Err(reject(err.reason(), err.to_string())),
        };
        let value = payload.unwrap_or_default();
        let timestamp_ms = match record::validate(self.format, value, kafka_timestamp_ms) {
            Ok(timestamp_ms) => timestamp_ms,
            Err(err) => return Err(reject(err.reason(), err.to_string())),
        };
        if let Some(max_age_ms) = self.max_age_ms {
            let age_ms = now_ms.saturating_sub(timestamp_ms);
            if age_ms > max_age_ms {
                return Err(reject(
                    RejectReason::TooOld,
                    format!("record is {age_ms} ms old, max_age is {max_age_ms} ms"),
                ));
            }
            if age_ms < -MAX_FUTURE_SKEW_MS {
                return Err(reject(
                    RejectReason::FutureTimestamp,
                    format!(
                        "record is {} ms ahead of the receiver's clock, more than the {MAX_FUTURE_SKEW_MS} ms allowed",
                        age_ms.saturating_neg()
                    ),
                ));
            }
        }
        if self.encoding == StorageEncoding::Json {
            // Decoded again in full only for `json`: `bytes` stays a validate-only pass.
            let json = record::decode(self.format, value, kafka_timestamp_ms)
                .map_err(|err| reject(err.reason(), err.to_string()))
                .and_then(|decoded| {
                    record::json::encode(&decoded)
                        .map_err(|err| reject(encode_reason(&err), err.to_string()))
                })?;
            return Ok(StoredRecord::new(
                partition,
                offset,
                source,
                timestamp_ms,
                &json,
            ));
        }
        Ok(StoredRecord::new(
            partition,
            offset,
            source,
            timestamp_ms,
            value,
        ))
    }
}

/// A decoded record always encodes (the limits are the same); named for completeness.
const fn encode_reason(err: &record::EncodeError) -> RejectReason {
    match err {
        record::EncodeError::TooManyFloats { .. } => RejectReason::TooManyFloats,
        record::EncodeError::TextTooLong { .. } => RejectReason::TextTooLong,
        record::EncodeError::NonFiniteFloat { .. } => RejectReason::NonFiniteFloat,
    }
}

impl Decode for Validator {
    type Record = StoredRecord;

    fn decode(&self, message: &BorrowedMessage<'_>, now_ms: i64) -> Decoded<StoredRecord> {
        self.check(
            message.partition(),
            message.offset(),
            message.key(),
            message.payload(),
            message.timestamp().to_millis(),
            now_ms,
        )
    }

    /// The clock is read only when `max_age` is set: it costs a syscall-sized slice of
    /// every chunk otherwise.
    fn needs_clock(&self) -> bool {
        self.max_age_ms.is_some()
    }
}

impl Positioned for StoredRecord {
    fn partition(&self) -> i32 {
        self.partition
    }
    fn offset(&self) -> i64 {
        self.offset
    }
    fn bytes(&self) -> usize {
        self.source().len() + self.value().len()
    }
}

/// What a receiver batch writes: each source's records under its key, in the storage type
/// the Pipeline chose.
struct Storage {
    layout: StorageLayout,
}

impl StageKind for Storage {
    type Record = StoredRecord;

    fn written_keys(&self, records: &[StoredRecord]) -> Vec<(String, &'static str)> {
        let expected = sink::redis_type(self.layout.kind);
        let mut sources: HashSet<&[u8], FastHash> = HashSet::default();
        records
            .iter()
            .filter(|r| sources.insert(r.source()))
            .map(|r| {
                let source = String::from_utf8_lossy(r.source());
                (self.layout.data_key(&source), expected)
            })
            .collect()
    }

    async fn effects<'a>(
        &'a mut self,
        fresh: Fresh<'a, StoredRecord>,
    ) -> Result<Effects, KindError> {
        let StorageCommands {
            commands,
            keys_touched,
        } = sink::storage_commands(&self.layout, fresh.records);
        // The batch event names the sources; one pass, first appearance, up to the limit.
        let mut seen: HashSet<&[u8], FastHash> = HashSet::default();
        let sources = fresh
            .records
            .iter()
            .filter(|r| seen.insert(r.source()))
            .take(sink::EVENT_SOURCES_LIMIT)
            .map(|r| String::from_utf8_lossy(r.source()).into_owned())
            .collect();
        Ok(Effects {
            commands,
            written: fresh.records.len() as u64,
            keys_touched,
            sources,
            ..Effects::default()
        })
    }

    fn events_channel(&self) -> Option<String> {
        Some(self.layout.events_channel())
    }

    /// A batch's storage commands for one record of source `ferry-probe`, and the key's
    /// type check.
    fn probe_commands(&self) -> Vec<redis::Cmd> {
        let probe = StoredRecord::new(0, 0, PROBE_SOURCE, 0, b"probe");
        let mut commands = sink::storage_commands(&self.layout, &[&probe]).commands;
        let mut type_ = redis::cmd("TYPE");
        type_.arg(self.layout.data_key(PROBE_SOURCE));
        commands.push(type_);
        commands
    }
}

/// The source id the rights probe queues commands for (never run).
pub const PROBE_SOURCE: &str = "ferry-probe";

/// Runs the receive stage until `shutdown`, then drains, commits and leaves the group.
pub async fn run(
    config: WorkerConfig,
    options: StageOptions,
    shutdown: Shutdown,
) -> Result<(), ConsumeError> {
    let StageConfig::Receiver(receiver) = &config.stage else {
        return Err(ConsumeError::WriterTask(
            "the config's stage is not `receiver`".to_owned(),
        ));
    };
    tracing::info!(
        storage = sink::storage_name(receiver.storage.kind),
        "receiver"
    );
    let validator = Validator {
        format: config.format,
        max_age_ms: receiver
            .max_age
            .map(|age| i64::try_from(age.as_duration().as_millis()).unwrap_or(i64::MAX)),
        encoding: receiver.storage.encoding,
    };
    let storage = Storage {
        layout: StorageLayout::new(&config.redis.key_prefix, &receiver.storage),
    };
    let spec = StageSpec {
        name: "receiver",
        batch: receiver.batch.clone(),
        topics: ProducedTopics {
            output: None,
            dead_letter: receiver.dead_letter.as_ref().map(|d| d.topic.clone()),
        },
    };
    pipeline::run(&config, spec, &options, shutdown, validator, storage).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::DataRecord;

    fn validator(max_age_ms: Option<i64>) -> Validator {
        Validator {
            format: RecordFormat::Dsdata,
            max_age_ms,
            encoding: StorageEncoding::Bytes,
        }
    }

    fn dsdata(timestamp_ms: i64) -> Vec<u8> {
        record::dsdata::encode(&DataRecord {
            timestamp_ms,
            values: vec![1.0],
            text: "t".to_owned(),
        })
        .unwrap()
    }

    fn reason(record: Decoded<StoredRecord>) -> Option<RejectReason> {
        match record {
            Ok(_) => None,
            Err(rejected) => match rejected.reason {
                Refusal::Record(reason) => Some(reason),
                other => panic!("not a record refusal: {other:?}"),
            },
        }
    }

    #[test]
    fn stores_valid_records_as_received() {
        let bytes = dsdata(1_000);
        let Ok(stored) = validator(None).check(2, 7, Some(b"src-1"), Some(&bytes), None, 5_000)
        else {
            panic!("expected a stored record");
        };
        assert_eq!(stored.value(), bytes);
        assert_eq!(
            (stored.partition, stored.offset, stored.timestamp_ms),
            (2, 7, 1_000)
        );
        assert_eq!(stored.source(), b"src-1");
    }

    #[test]
    fn json_encoding_stores_the_record_as_json() {
        let bytes = dsdata(1_000);
        let validator = Validator {
            encoding: StorageEncoding::Json,
            ..validator(None)
        };
        let Ok(stored) = validator.check(0, 1, Some(b"k"), Some(&bytes), None, 5_000) else {
            panic!("expected a stored record");
        };
        assert_eq!(stored.value(), br#"{"ts":1000,"values":[1.0],"text":"t"}"#);
    }

    #[test]
    fn refuses_old_keyless_and_broken_records() {
        let bytes = dsdata(1_000);
        let check = |max_age, key: Option<&[u8]>, payload: Option<&[u8]>| {
            reason(validator(max_age).check(0, 0, key, payload, None, 10_000))
        };
        assert_eq!(check(Some(9_000), Some(b"k"), Some(&bytes)), None);
        assert_eq!(
            check(Some(8_999), Some(b"k"), Some(&bytes)),
            Some(RejectReason::TooOld)
        );
        assert_eq!(
            check(None, None, Some(&bytes)),
            Some(RejectReason::MissingKey)
        );
        assert_eq!(
            check(None, Some(b"k"), Some(&bytes[..20])),
            Some(RejectReason::Truncated)
        );
        assert_eq!(check(None, Some(b"k"), None), Some(RejectReason::Truncated));
    }

    #[test]
    fn refuses_timestamps_too_far_ahead_only_with_max_age() {
        let now = 1_700_000_000_000;
        let at = |max_age, timestamp_ms| {
            let bytes = dsdata(timestamp_ms);
            reason(validator(max_age).check(0, 0, Some(b"k"), Some(&bytes), None, now))
        };
        assert_eq!(at(Some(60_000), now + MAX_FUTURE_SKEW_MS), None);
        assert_eq!(
            at(Some(60_000), now + MAX_FUTURE_SKEW_MS + 1),
            Some(RejectReason::FutureTimestamp)
        );
        assert_eq!(
            at(Some(60_000), i64::MAX),
            Some(RejectReason::FutureTimestamp)
        );
        assert_eq!(at(Some(60_000), i64::MIN), Some(RejectReason::TooOld));
        // Without max_age the receiver does not judge time at all.
        assert_eq!(at(None, i64::MAX), None);
        assert_eq!(at(None, i64::MIN), None);
    }
}
