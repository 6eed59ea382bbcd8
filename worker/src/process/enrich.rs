//! Enrichment: joins each record with the version of its reference data that was valid at
//! the record's timestamp.
//!
//! `{reference_key}:{record key}` is a sorted set: members name hashes of reference
//! fields, scores are the versions' valid-from timestamps in ms. A record at `ts` takes the
//! newest version with score ≤ ts (on equal scores the greatest member, as
//! ZREVRANGEBYSCORE orders them). Per batch and key, the runtime fetches only the versions
//! the batch can need: those valid from inside the batch's time span, plus the newest one
//! before it, then chooses per record with [`choose_version`].

use std::collections::BTreeMap;

use serde::Serialize;

/// One version of a key's reference data.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub hash_key: String,
    pub valid_from_ms: f64,
}

/// The newest version valid at `ts_ms`, if any.
pub fn choose_version(versions: &[Version], ts_ms: i64) -> Option<&Version> {
    let ts = ts_ms as f64;
    versions
        .iter()
        .filter(|version| version.valid_from_ms <= ts)
        .max_by(|a, b| {
            a.valid_from_ms
                .total_cmp(&b.valid_from_ms)
                .then_with(|| a.hash_key.cmp(&b.hash_key))
        })
}

/// The sorted set that versions `record_key`'s reference data.
pub fn versions_key(reference_key: &str, record_key: &str) -> String {
    format!("{reference_key}:{record_key}")
}

/// Why an enriched record could not be built; the dead-letter reason.
pub const NO_REFERENCE: &str = "no-reference";

/// The record written to the output topic.
#[derive(Debug, Serialize, PartialEq)]
pub struct EnrichedRecord<'a> {
    pub key: &'a str,
    pub ts: i64,
    /// NaN values serialise as `null`: JSON has no NaN.
    pub values: &'a [f64],
    /// Always a string, empty when the record has none, so a `json` stage can read it.
    pub text: &'a str,
    #[serde(rename = "ref")]
    pub reference: &'a BTreeMap<String, String>,
    /// The hash key of the version used.
    pub ref_version: &'a str,
    /// That version's valid-from timestamp in ms.
    pub ref_valid_from: i64,
}

/// Keeps only the configured fields; all of them when `fields` is empty.
pub fn select_fields(all: BTreeMap<String, String>, fields: &[String]) -> BTreeMap<String, String> {
    if fields.is_empty() {
        return all;
    }
    all.into_iter()
        .filter(|(name, _)| fields.iter().any(|wanted| wanted == name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(hash_key: &str, valid_from_ms: f64) -> Version {
        Version {
            hash_key: hash_key.to_owned(),
            valid_from_ms,
        }
    }

    #[test]
    fn picks_the_newest_version_valid_at_the_timestamp() {
        let versions = [
            version("v2", 2000.0),
            version("v1", 1000.0),
            version("v3", 3000.0),
        ];
        assert_eq!(choose_version(&versions, 999), None);
        assert_eq!(
            choose_version(&versions, 1000).map(|v| v.hash_key.as_str()),
            Some("v1")
        );
        assert_eq!(
            choose_version(&versions, 2999).map(|v| v.hash_key.as_str()),
            Some("v2")
        );
        assert_eq!(
            choose_version(&versions, 3000).map(|v| v.hash_key.as_str()),
            Some("v3")
        );
        assert_eq!(
            choose_version(&versions, i64::MAX).map(|v| v.hash_key.as_str()),
            Some("v3")
        );
        assert_eq!(choose_version(&[], 5), None);
    }

    #[test]
    fn equal_scores_break_ties_like_zrevrangebyscore() {
        let versions = [version("a", 10.0), version("c", 10.0), version("b", 10.0)];
        assert_eq!(
            choose_version(&versions, 10).map(|v| v.hash_key.as_str()),
            Some("c")
        );
    }

    #[test]
    fn selects_configured_fields() {
        let all: BTreeMap<String, String> = [("site", "north"), ("unit", "C"), ("owner", "ops")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(select_fields(all.clone(), &[]), all);
        let picked = select_fields(all, &["unit".to_owned(), "missing".to_owned()]);
        assert_eq!(picked.len(), 1);
        assert_eq!(picked.get("unit").map(String::as_str), Some("C"));
    }

    #[test]
    fn serialises_the_enriched_record() {
        let reference: BTreeMap<String, String> = [("site".to_owned(), "north".to_owned())]
            .into_iter()
            .collect();
        let record = EnrichedRecord {
            key: "s1",
            ts: 1500,
            values: &[1.5, f64::NAN],
            text: "hi",
            reference: &reference,
            ref_version: "ref:s1:v1",
            ref_valid_from: 1000,
        };
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"key":"s1","ts":1500,"values":[1.5,null],"text":"hi","ref":{"site":"north"},"ref_version":"ref:s1:v1","ref_valid_from":1000}"#
        );
    }
}
