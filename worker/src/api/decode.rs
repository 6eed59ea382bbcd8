//! The pure half of the read API: stored values into JSON records, query parameters into
//! typed values (each failure naming its parameter), the opaque cursor, history slices.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;

use crate::config::{RecordFormat, StorageEncoding};
use crate::record;

/// One stored record as the API returns it. `values` and `text` are absent for `raw`
/// records, whose bytes come as base64 in `raw`; `ts` is null where the storage keeps no
/// time (a `raw` record in a list). `id` is a stream entry's id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiRecord {
    pub ts: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Set when a stored value does not decode (written by something else than Ferry):
    /// the bytes are in `raw`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How stored values read back: the Pipeline's record format and the storage encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueCodec {
    pub format: RecordFormat,
    pub encoding: StorageEncoding,
}

impl ValueCodec {
    /// Decodes `bytes`; `stored_ts` is the time the storage keeps beside the value (a
    /// stream's or hash's `ts` field, a zset's score), used where the value has none.
    pub fn decode(&self, bytes: &[u8], stored_ts: Option<i64>) -> ApiRecord {
        let format = match self.encoding {
            StorageEncoding::Json => RecordFormat::Json,
            StorageEncoding::Bytes => self.format,
        };
        if format == RecordFormat::Raw {
            return ApiRecord {
                ts: stored_ts,
                values: None,
                text: None,
                raw: Some(STANDARD.encode(bytes)),
                id: None,
                error: None,
            };
        }
        match record::decode(format, bytes, stored_ts) {
            Ok(decoded) => ApiRecord {
                ts: Some(decoded.timestamp_ms),
                values: Some(decoded.values),
                text: Some(decoded.text),
                raw: None,
                id: None,
                error: None,
            },
            Err(err) => ApiRecord {
                ts: stored_ts,
                values: None,
                text: None,
                raw: Some(STANDARD.encode(bytes)),
                id: None,
                error: Some(err.to_string()),
            },
        }
    }
}

/// One value as Redis returned it, with what the storage keeps beside it; it becomes its
/// [`ApiRecord`] only as the answer is written ([`Records`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredRecord {
    pub bytes: Vec<u8>,
    /// A stream's or hash's `ts` field, a zset's score.
    pub stored_ts: Option<i64>,
    /// A stream entry's id.
    pub id: Option<String>,
}

impl ValueCodec {
    const fn stored_format(&self) -> RecordFormat {
        match self.encoding {
            StorageEncoding::Json => RecordFormat::Json,
            StorageEncoding::Bytes => self.format,
        }
    }

    /// The `ts` the record's [`ApiRecord`] carries, for `since`, without building it.
    pub fn timestamp(&self, record: &StoredRecord) -> Option<i64> {
        let decoded = match self.stored_format() {
            RecordFormat::Raw => return record.stored_ts,
            RecordFormat::Dsdata => {
                record::dsdata::DsdataView::parse(&record.bytes).map(|view| view.timestamp_ms())
            }
            RecordFormat::Json => {
                record::json::decode(&record.bytes).map(|decoded| decoded.timestamp_ms)
            }
        };
        decoded.map_or(record.stored_ts, Some)
    }
}

/// Records as the JSON array of their [`ApiRecord`]s, each written straight from the
/// stored bytes: a dsdata value is read in place, its floats and text never copied into
/// an owned record, so the answer is one buffer written once (the read API's benchmark
/// measured the intermediate records as a fifth of its CPU, most of it `malloc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    pub codec: ValueCodec,
    pub records: Vec<StoredRecord>,
}

impl Records {
    /// About the JSON's size, so its buffer is allocated once: a float's 8 bytes take at
    /// most 24 characters, and text is mostly written as is.
    pub fn json_len_estimate(&self) -> usize {
        self.records
            .iter()
            .map(|record| 3 * record.bytes.len() + 48 + record.id.as_ref().map_or(0, String::len))
            .sum::<usize>()
            + 16
    }
}

impl Serialize for Records {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.records.iter().map(|record| Encoded {
            codec: self.codec,
            record,
        }))
    }
}

struct Encoded<'a> {
    codec: ValueCodec,
    record: &'a StoredRecord,
}

impl Serialize for Encoded<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let record = self.record;
        if self.codec.stored_format() == RecordFormat::Dsdata
            && let Ok(view) = record::dsdata::DsdataView::parse(&record.bytes)
        {
            // The fields and their order of `ApiRecord` for a decoded record.
            let mut out = serializer.serialize_struct("ApiRecord", 4)?;
            out.serialize_field("ts", &view.timestamp_ms())?;
            out.serialize_field("values", &Floats(view))?;
            out.serialize_field("text", view.text())?;
            if let Some(id) = &record.id {
                out.serialize_field("id", id)?;
            }
            return out.end();
        }
        let mut decoded = self.codec.decode(&record.bytes, record.stored_ts);
        decoded.id.clone_from(&record.id);
        decoded.serialize(serializer)
    }
}

struct Floats<'a>(record::dsdata::DsdataView<'a>);

impl Serialize for Floats<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.values())
    }
}

/// A query parameter that does not parse: the 400 names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query parameter `{parameter}`: {message}")]
pub struct BadParameter {
    pub parameter: String,
    pub message: String,
}

impl BadParameter {
    pub fn new(parameter: &str, message: impl Into<String>) -> Self {
        Self {
            parameter: parameter.to_owned(),
            message: message.into(),
        }
    }
}

/// The query string as (name, value) pairs, percent-decoded, repeats kept.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The one value of `name`, if given; given twice is a bad parameter.
pub fn single<'a>(
    pairs: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, BadParameter> {
    let mut found = pairs.iter().filter(|(key, _)| key == name);
    let first = found.next().map(|(_, value)| value.as_str());
    if found.next().is_some() {
        return Err(BadParameter::new(name, "given more than once"));
    }
    Ok(first)
}

/// An integer parameter within `min..=max`, `default` when absent.
pub fn integer(
    pairs: &[(String, String)],
    name: &str,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, BadParameter> {
    let Some(text) = single(pairs, name)? else {
        return Ok(default);
    };
    let value: i64 = text
        .parse()
        .map_err(|_| BadParameter::new(name, format!("{text:?} is not an integer")))?;
    if !(min..=max).contains(&value) {
        return Err(BadParameter::new(
            name,
            format!("{value} is outside {min}..={max}"),
        ));
    }
    Ok(value)
}

/// Refuses parameters the endpoint does not know, so a typo (`?limt=5`) is a 400, not a
/// silently ignored filter.
pub fn only_known(pairs: &[(String, String)], known: &[&str]) -> Result<(), BadParameter> {
    match pairs.iter().find(|(key, _)| !known.contains(&key.as_str())) {
        Some((key, _)) => Err(BadParameter::new(
            key,
            format!(
                "unknown parameter; this endpoint takes {}",
                known.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// The cursor of the sources listing: opaque to clients (so it can later carry one
/// position per Redis Cluster master), a versioned SCAN cursor inside.
pub fn encode_cursor(scan_cursor: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{scan_cursor}"))
}

pub fn decode_cursor(cursor: &str) -> Result<u64, BadParameter> {
    let bad = || BadParameter::new("cursor", "not a cursor this API returned");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    text.strip_prefix("v1:")
        .and_then(|number| number.parse().ok())
        .ok_or_else(bad)
}

/// `text` with Redis glob characters escaped, for a `SCAN MATCH` of a literal prefix.
pub fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The indexes `start..=stop` (as `LRANGE` takes them: 0 the newest, negatives from the
/// oldest end) over a history of `len` records, as a forward range; empty when they cross.
pub fn slice_range(start: i64, stop: i64, len: usize) -> std::ops::Range<usize> {
    let len_i = i64::try_from(len).unwrap_or(i64::MAX);
    let normalize = |index: i64| if index < 0 { len_i + index } else { index };
    let first = normalize(start).max(0);
    let last = normalize(stop).min(len_i - 1);
    if first > last {
        return 0..0;
    }
    usize::try_from(first).unwrap_or(0)..usize::try_from(last + 1).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DataRecord, dsdata};

    fn pairs(query: &str) -> Vec<(String, String)> {
        query_pairs(Some(query))
    }

    #[test]
    fn stored_values_decode_per_format_and_encoding() {
        let record = DataRecord {
            timestamp_ms: 7,
            values: vec![1.5, -2.0],
            text: "a b".to_owned(),
        };
        let bytes = dsdata::encode(&record).unwrap();
        let dsdata = ValueCodec {
            format: RecordFormat::Dsdata,
            encoding: StorageEncoding::Bytes,
        };
        let decoded = dsdata.decode(&bytes, None);
        assert_eq!(
            (decoded.ts, decoded.values, decoded.text, decoded.error),
            (Some(7), Some(vec![1.5, -2.0]), Some("a b".to_owned()), None)
        );
        let json = ValueCodec {
            format: RecordFormat::Dsdata,
            encoding: StorageEncoding::Json,
        };
        let from_json = json.decode(br#"{"ts":7,"values":[1.5,-2.0],"text":"a b"}"#, None);
        assert_eq!(from_json.values, Some(vec![1.5, -2.0]));
        let raw = ValueCodec {
            format: RecordFormat::Raw,
            encoding: StorageEncoding::Bytes,
        };
        let opaque = raw.decode(b"\x00\xff", Some(3));
        assert_eq!((opaque.ts, opaque.raw.as_deref()), (Some(3), Some("AP8=")));
        let broken = dsdata.decode(b"nope", Some(1));
        assert!(broken.error.is_some() && broken.raw.is_some());
    }

    #[test]
    fn records_are_written_as_their_api_records() {
        let record = DataRecord {
            timestamp_ms: 1_700_000_000_123,
            values: vec![1.5, -2.0, 1e-300, 0.1],
            text: "a \"quoted\" \u{1} é".to_owned(),
        };
        let dsdata_bytes = dsdata::encode(&record).unwrap();
        let json_bytes = crate::record::json::encode(&record).unwrap();
        let cases = [
            (
                RecordFormat::Dsdata,
                StorageEncoding::Bytes,
                dsdata_bytes.clone(),
            ),
            (
                RecordFormat::Dsdata,
                StorageEncoding::Bytes,
                b"not dsdata".to_vec(),
            ),
            (
                RecordFormat::Dsdata,
                StorageEncoding::Json,
                json_bytes.clone(),
            ),
            (RecordFormat::Json, StorageEncoding::Bytes, json_bytes),
            (RecordFormat::Json, StorageEncoding::Bytes, b"{".to_vec()),
            (RecordFormat::Raw, StorageEncoding::Bytes, dsdata_bytes),
        ];
        for (format, encoding, bytes) in cases {
            let codec = ValueCodec { format, encoding };
            for (stored_ts, id) in [(None, None), (Some(5), Some("1-0".to_owned()))] {
                let stored = StoredRecord {
                    bytes: bytes.clone(),
                    stored_ts,
                    id: id.clone(),
                };
                let mut want = codec.decode(&bytes, stored_ts);
                want.id = id;
                let records = Records {
                    codec,
                    records: vec![stored.clone(), stored.clone()],
                };
                assert_eq!(
                    serde_json::to_string(&records).unwrap(),
                    serde_json::to_string(&[&want, &want]).unwrap(),
                    "{format:?} {encoding:?}"
                );
                assert_eq!(codec.timestamp(&stored), want.ts, "{format:?} {encoding:?}");
            }
        }
    }

    #[test]
    fn parameters_name_themselves_when_wrong() {
        assert_eq!(integer(&pairs("limit=5"), "limit", 100, 1, 10), Ok(5));
        assert_eq!(integer(&pairs(""), "limit", 100, 1, 1000), Ok(100));
        let err = integer(&pairs("limit=x"), "limit", 1, 1, 10).unwrap_err();
        assert_eq!(err.parameter, "limit");
        let err = integer(&pairs("limit=0"), "limit", 1, 1, 10).unwrap_err();
        assert_eq!(err.parameter, "limit");
        let err = integer(&pairs("limit=1&limit=2"), "limit", 1, 1, 10).unwrap_err();
        assert_eq!(err.message, "given more than once");
        let err = only_known(&pairs("limt=3"), &["limit", "since"]).unwrap_err();
        assert_eq!(err.parameter, "limt");
    }

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        for scan in [0, 1, 17, u64::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(scan)), Ok(scan));
        }
        assert_eq!(decode_cursor("!!").unwrap_err().parameter, "cursor");
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("v2:1")).is_err());
    }

    #[test]
    fn slices_follow_lrange() {
        assert_eq!(slice_range(0, 9, 100), 0..10);
        assert_eq!(slice_range(0, -1, 5), 0..5);
        assert_eq!(slice_range(-2, -1, 5), 3..5);
        assert_eq!(slice_range(3, 1, 5), 0..0);
        assert_eq!(slice_range(0, 100, 3), 0..3);
        assert_eq!(slice_range(-100, 0, 3), 0..1);
        assert_eq!(slice_range(5, 9, 3), 0..0);
        assert_eq!(slice_range(0, 0, 0), 0..0);
    }

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
