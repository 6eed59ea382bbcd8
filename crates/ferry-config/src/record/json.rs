//! The `json` record format: `{"ts": <ms since the epoch>, "values": [floats], "text": "..."}`.
//!
//! All three fields are required; unknown fields are ignored so sources can add fields
//! without breaking receivers. The limits of [`dsdata`](super::dsdata) apply.
//!
//! A record an `enrich` stage wrote also carries a `ref` object of reference fields;
//! [`decode_enriched`] returns them too, so validate rules downstream can name them.

use serde::{Deserialize, Serialize};

use super::{DataRecord, DecodeError, EncodeError, MAX_FLOATS, MAX_TEXT_BYTES, check_encodable};

#[derive(Deserialize)]
struct WireIn<'a> {
    ts: i64,
    values: Vec<f64>,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
    /// Any JSON, so a source's own `ref` of another shape decodes as before enrich existed.
    #[serde(default, rename = "ref")]
    reference: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct WireOut<'a> {
    ts: i64,
    values: &'a [f64],
    text: &'a str,
}

pub fn decode(bytes: &[u8]) -> Result<DataRecord, DecodeError> {
    checked(parse(bytes)?)
}

/// Decodes like [`decode`], and also returns the record's `ref` object: its string fields as
/// they are, numbers and booleans as their JSON text; anything else in `ref` is left out.
pub fn decode_enriched(bytes: &[u8]) -> Result<(DataRecord, Reference), DecodeError> {
    let mut wire = parse(bytes)?;
    let reference = match wire.reference.take() {
        Some(serde_json::Value::Object(fields)) => fields
            .into_iter()
            .filter_map(|(name, value)| match value {
                serde_json::Value::String(s) => Some((name, s)),
                serde_json::Value::Number(n) => Some((name, n.to_string())),
                serde_json::Value::Bool(b) => Some((name, b.to_string())),
                _ => None,
            })
            .collect(),
        _ => Reference::new(),
    };
    Ok((checked(wire)?, reference))
}

/// Reference fields by name, as enrich wrote them.
pub type Reference = std::collections::BTreeMap<String, String>;

fn parse(bytes: &[u8]) -> Result<WireIn<'_>, DecodeError> {
    serde_json::from_slice(bytes).map_err(|err| DecodeError::InvalidJson {
        message: err.to_string(),
    })
}

fn checked(wire: WireIn<'_>) -> Result<DataRecord, DecodeError> {
    if wire.values.len() > MAX_FLOATS {
        return Err(DecodeError::TooManyFloats {
            count: wire.values.len(),
        });
    }
    if wire.text.len() > MAX_TEXT_BYTES {
        return Err(DecodeError::TextTooLong {
            len: wire.text.len(),
        });
    }
    // serde_json refuses out-of-range numbers, but stay explicit: stored values are finite.
    if let Some(index) = wire.values.iter().position(|v| !v.is_finite()) {
        return Err(DecodeError::NonFiniteFloat { index });
    }
    Ok(DataRecord {
        timestamp_ms: wire.ts,
        values: wire.values,
        text: wire.text.into_owned(),
    })
}

pub fn encode(record: &DataRecord) -> Result<Vec<u8>, EncodeError> {
    check_encodable(&record.values, &record.text)?;
    let wire = WireOut {
        ts: record.timestamp_ms,
        values: &record.values,
        text: &record.text,
    };
    // Serializing plain numbers and strings into a Vec cannot fail.
    Ok(serde_json::to_vec(&wire).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RejectReason;

    fn reason(text: &str) -> RejectReason {
        decode(text.as_bytes()).unwrap_err().reason()
    }

    #[test]
    fn decodes_the_documented_shape() {
        let record =
            decode(br#"{"ts": 5, "values": [1, 2.5], "text": "a\"b", "extra": 1}"#).unwrap();
        assert_eq!(record.timestamp_ms, 5);
        assert_eq!(record.values, vec![1.0, 2.5]);
        assert_eq!(record.text, "a\"b");
    }

    #[test]
    fn an_enriched_record_keeps_its_reference_fields() {
        let bytes = br#"{"key":"s1","ts":1500,"values":[1.5],"text":"hi","ref":{"desk":"fx","limit":5,"nested":{}},"ref_version":"v1","ref_valid_from":1000}"#;
        let (record, reference) = decode_enriched(bytes).unwrap();
        assert_eq!(record, decode(bytes).unwrap());
        assert_eq!(record.values, vec![1.5]);
        assert_eq!(
            reference.into_iter().collect::<Vec<_>>(),
            vec![
                ("desk".to_owned(), "fx".to_owned()),
                ("limit".to_owned(), "5".to_owned())
            ]
        );
        let (_, none) = decode_enriched(br#"{"ts":1,"values":[],"text":"","ref":7}"#).unwrap();
        assert!(none.is_empty());
        assert_eq!(
            decode_enriched(b"{").unwrap_err().reason(),
            RejectReason::InvalidJson
        );
    }

    #[test]
    fn rejects_bad_json_and_oversize_records() {
        assert_eq!(reason("{"), RejectReason::InvalidJson);
        assert_eq!(reason("not json"), RejectReason::InvalidJson);
        assert_eq!(
            reason(r#"{"values": [], "text": ""}"#),
            RejectReason::InvalidJson
        );
        assert_eq!(
            reason(r#"{"ts": 1, "values": [1e999], "text": ""}"#),
            RejectReason::InvalidJson
        );
        assert_eq!(
            reason(r#"{"ts": 1.5, "values": [], "text": ""}"#),
            RejectReason::InvalidJson
        );
        let many = format!(
            r#"{{"ts": 1, "values": [{}0], "text": ""}}"#,
            "0,".repeat(MAX_FLOATS)
        );
        assert_eq!(reason(&many), RejectReason::TooManyFloats);
        let long = format!(
            r#"{{"ts": 1, "values": [], "text": "{}"}}"#,
            "a".repeat(MAX_TEXT_BYTES + 1)
        );
        assert_eq!(reason(&long), RejectReason::TextTooLong);
    }

    /// Found by the json fuzz target: without serde_json's `float_roundtrip`, `2.3e55`
    /// parsed one ULP away from the nearest f64, so a decoded value differed from the one
    /// the source sent and re-encoding it printed `2.3000000000000001e55`.
    #[test]
    fn floats_parse_to_the_nearest_f64_and_round_trip() {
        let bytes = br#"{"ts": 170000, "values": [1, 2.3e55, 0.1, 5e-324, 1.7976931348623157e308], "text": "a\"b"}"#;
        let record = decode(bytes).unwrap();
        for (value, text) in
            record
                .values
                .iter()
                .zip(["1", "2.3e55", "0.1", "5e-324", "1.7976931348623157e308"])
        {
            assert_eq!(*value, text.parse::<f64>().unwrap(), "{text}");
        }
        assert_eq!(decode(&encode(&record).unwrap()).unwrap(), record);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..50_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| b"{}[]\":,0123456789tsvaluetext-.e "[(state >> (i % 60)) as usize % 32])
                .collect();
            let _ = decode(&bytes);
        }
    }
}
