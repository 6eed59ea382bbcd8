//! Record codecs: what a data source sends, how the worker checks it, and the reasons a
//! record is refused.
//!
//! Three formats exist (see [`RecordFormat`]):
//! - [`dsdata`]: Ferry's compact binary record, the default;
//! - [`json`]: `{"ts": <ms>, "values": [floats], "text": "..."}`;
//! - raw: opaque bytes, timed by the Kafka record timestamp.
//!
//! In every format the Kafka key is the source id, UTF-8 (see [`source_id`]). The receiver
//! stores a record's value bytes exactly as received; decoding only validates them and finds
//! the record's timestamp, so a stored record never differs from what the source sent.

pub mod dsdata;
pub mod json;

use crate::config::RecordFormat;

/// The largest number of floats one record may carry, in every format.
pub const MAX_FLOATS: usize = 4096;
/// The largest text, in bytes of UTF-8, one record may carry, in every format.
pub const MAX_TEXT_BYTES: usize = 4096;
/// The longest source id (Kafka key), in bytes. It becomes part of a Redis key, so a huge
/// key would be stored, and kept, at that size; no real source id comes near this.
pub const MAX_KEY_BYTES: usize = 1024;

/// A decoded record, owned. The receiver does not need it (it stores bytes as received);
/// processors and tests do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataRecord {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub values: Vec<f64>,
    pub text: String,
}

/// Why a record was refused. The label ([`RejectReason::as_str`]) is stable: it is the
/// `ferry-reason` dead-letter header and the `reason` metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    BadMagic,
    UnsupportedVersion,
    ReservedFlags,
    Truncated,
    TrailingBytes,
    InvalidUtf8,
    NonFiniteFloat,
    TooManyFloats,
    TextTooLong,
    InvalidJson,
    MissingKey,
    InvalidKey,
    MissingTimestamp,
    TooOld,
    KeyTooLong,
    FutureTimestamp,
}

impl RejectReason {
    /// Every reason, so metrics can show zeroes for reasons not seen yet.
    pub const ALL: [RejectReason; 16] = [
        Self::BadMagic,
        Self::UnsupportedVersion,
        Self::ReservedFlags,
        Self::Truncated,
        Self::TrailingBytes,
        Self::InvalidUtf8,
        Self::NonFiniteFloat,
        Self::TooManyFloats,
        Self::TextTooLong,
        Self::InvalidJson,
        Self::MissingKey,
        Self::InvalidKey,
        Self::MissingTimestamp,
        Self::TooOld,
        Self::KeyTooLong,
        Self::FutureTimestamp,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadMagic => "bad_magic",
            Self::UnsupportedVersion => "unsupported_version",
            Self::ReservedFlags => "reserved_flags",
            Self::Truncated => "truncated",
            Self::TrailingBytes => "trailing_bytes",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::NonFiniteFloat => "non_finite_float",
            Self::TooManyFloats => "too_many_floats",
            Self::TextTooLong => "text_too_long",
            Self::InvalidJson => "invalid_json",
            Self::MissingKey => "missing_key",
            Self::InvalidKey => "invalid_key",
            Self::MissingTimestamp => "missing_timestamp",
            Self::TooOld => "too_old",
            Self::KeyTooLong => "key_too_long",
            Self::FutureTimestamp => "future_timestamp",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record that cannot be decoded, with enough context to find the fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad magic {found:02x?}, expected \"FD\"")]
    BadMagic { found: [u8; 2] },
    #[error("unsupported version {found}, expected {}", dsdata::VERSION)]
    UnsupportedVersion { found: u8 },
    #[error("reserved flags are {found:#04x}, expected 0")]
    ReservedFlags { found: u8 },
    #[error("truncated in the {section}: needs {needed} bytes, has {available}")]
    Truncated {
        section: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("{extra} trailing bytes after the text")]
    TrailingBytes { extra: usize },
    #[error("text is not UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },
    #[error("value {index} is not finite")]
    NonFiniteFloat { index: usize },
    #[error("{count} floats, more than the {MAX_FLOATS} allowed")]
    TooManyFloats { count: usize },
    #[error("text of {len} bytes, more than the {MAX_TEXT_BYTES} allowed")]
    TextTooLong { len: usize },
    #[error("invalid JSON record: {message}")]
    InvalidJson { message: String },
    #[error("record has no key; the key is the source id")]
    MissingKey,
    #[error("key is not UTF-8 (valid up to byte {valid_up_to})")]
    InvalidKey { valid_up_to: usize },
    #[error("raw record has no Kafka timestamp")]
    MissingTimestamp,
    #[error("key of {len} bytes, more than the {MAX_KEY_BYTES} allowed")]
    KeyTooLong { len: usize },
}

impl DecodeError {
    pub const fn reason(&self) -> RejectReason {
        match self {
            Self::BadMagic { .. } => RejectReason::BadMagic,
            Self::UnsupportedVersion { .. } => RejectReason::UnsupportedVersion,
            Self::ReservedFlags { .. } => RejectReason::ReservedFlags,
            Self::Truncated { .. } => RejectReason::Truncated,
            Self::TrailingBytes { .. } => RejectReason::TrailingBytes,
            Self::InvalidUtf8 { .. } => RejectReason::InvalidUtf8,
            Self::NonFiniteFloat { .. } => RejectReason::NonFiniteFloat,
            Self::TooManyFloats { .. } => RejectReason::TooManyFloats,
            Self::TextTooLong { .. } => RejectReason::TextTooLong,
            Self::InvalidJson { .. } => RejectReason::InvalidJson,
            Self::MissingKey => RejectReason::MissingKey,
            Self::InvalidKey { .. } => RejectReason::InvalidKey,
            Self::MissingTimestamp => RejectReason::MissingTimestamp,
            Self::KeyTooLong { .. } => RejectReason::KeyTooLong,
        }
    }
}

/// A record the encoders refuse to produce, because the decoders would refuse it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("{count} floats, more than the {MAX_FLOATS} allowed")]
    TooManyFloats { count: usize },
    #[error("text of {len} bytes, more than the {MAX_TEXT_BYTES} allowed")]
    TextTooLong { len: usize },
    #[error("value {index} is not finite")]
    NonFiniteFloat { index: usize },
}

/// Checks what the encoders and decoders of every format share.
fn check_encodable(values: &[f64], text: &str) -> Result<(), EncodeError> {
    if values.len() > MAX_FLOATS {
        return Err(EncodeError::TooManyFloats {
            count: values.len(),
        });
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(EncodeError::TextTooLong { len: text.len() });
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(EncodeError::NonFiniteFloat { index });
    }
    Ok(())
}

/// The source id of a record: its Kafka key, which must be present, UTF-8 and at most
/// [`MAX_KEY_BYTES`] long.
pub fn source_id(key: Option<&[u8]>) -> Result<&str, DecodeError> {
    let key = key.ok_or(DecodeError::MissingKey)?;
    if key.is_empty() {
        return Err(DecodeError::MissingKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(DecodeError::KeyTooLong { len: key.len() });
    }
    std::str::from_utf8(key).map_err(|err| DecodeError::InvalidKey {
        valid_up_to: err.valid_up_to(),
    })
}

/// Validates a record value in `format` and returns its timestamp (ms since the epoch),
/// without keeping the decoded values: this is all the receiver needs.
/// `kafka_timestamp_ms` is the Kafka record timestamp, the time of `raw` records.
pub fn validate(
    format: RecordFormat,
    payload: &[u8],
    kafka_timestamp_ms: Option<i64>,
) -> Result<i64, DecodeError> {
    match format {
        RecordFormat::Dsdata => dsdata::DsdataView::parse(payload).map(|view| view.timestamp_ms()),
        RecordFormat::Json => json::decode(payload).map(|record| record.timestamp_ms),
        RecordFormat::Raw => kafka_timestamp_ms.ok_or(DecodeError::MissingTimestamp),
    }
}

/// Decodes a record value in `format` into an owned [`DataRecord`]. A `raw` record has no
/// values and no text; its time is the Kafka record timestamp.
pub fn decode(
    format: RecordFormat,
    payload: &[u8],
    kafka_timestamp_ms: Option<i64>,
) -> Result<DataRecord, DecodeError> {
    match format {
        RecordFormat::Dsdata => dsdata::decode(payload),
        RecordFormat::Json => json::decode(payload),
        RecordFormat::Raw => Ok(DataRecord {
            timestamp_ms: kafka_timestamp_ms.ok_or(DecodeError::MissingTimestamp)?,
            values: Vec::new(),
            text: String::new(),
        }),
    }
}

/// Encodes a record in `format`. `raw` has no encoding of its own: it is refused here as
/// dsdata would be, then written as dsdata bytes, which a raw receiver stores unchanged.
pub fn encode(format: RecordFormat, record: &DataRecord) -> Result<Vec<u8>, EncodeError> {
    match format {
        RecordFormat::Dsdata | RecordFormat::Raw => dsdata::encode(record),
        RecordFormat::Json => json::encode(record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_are_distinct() {
        let mut labels: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RejectReason::ALL.len());
    }

    #[test]
    fn source_id_requires_a_utf8_key() {
        assert_eq!(source_id(Some(b"src-0042")), Ok("src-0042"));
        assert_eq!(source_id(None), Err(DecodeError::MissingKey));
        assert_eq!(source_id(Some(b"")), Err(DecodeError::MissingKey));
        assert_eq!(
            source_id(Some(b"ab\xff")).map_err(|e| e.reason()),
            Err(RejectReason::InvalidKey)
        );
        let longest = "k".repeat(MAX_KEY_BYTES);
        assert_eq!(source_id(Some(longest.as_bytes())), Ok(longest.as_str()));
        let huge = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            source_id(Some(huge.as_bytes())),
            Err(DecodeError::KeyTooLong {
                len: MAX_KEY_BYTES + 1
            })
        );
    }

    #[test]
    fn raw_records_take_the_kafka_timestamp() {
        assert_eq!(validate(RecordFormat::Raw, b"\x00anything", Some(7)), Ok(7));
        assert_eq!(
            validate(RecordFormat::Raw, b"x", None),
            Err(DecodeError::MissingTimestamp)
        );
    }

    #[test]
    fn every_format_round_trips() {
        let record = DataRecord {
            timestamp_ms: 1_700_000_000_123,
            values: vec![1.5, -2.25, 0.0],
            text: "héllo".to_owned(),
        };
        for format in [RecordFormat::Dsdata, RecordFormat::Json] {
            let bytes = encode(format, &record).unwrap();
            assert_eq!(decode(format, &bytes, None).unwrap(), record, "{format:?}");
            assert_eq!(validate(format, &bytes, None).unwrap(), record.timestamp_ms);
        }
    }
}
