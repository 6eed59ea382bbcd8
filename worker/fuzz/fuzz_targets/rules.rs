//! The rule language on arbitrary text, evaluated against arbitrary records: parsing never
//! panics, errors point inside the rule, and evaluation is total and consistent.
//!
//! Input: `rule text` `\0` `record bytes`. The record bytes give the timestamp (first 8),
//! then the values (8 bytes each, any bit pattern: NaN and infinities included); the key
//! and text come from the rule's own words so comparisons sometimes match.
#![no_main]

use ferry_config::rules::{self, Expr, LookupSource, PlainRecord};
use libfuzzer_sys::fuzz_target;

/// Deterministic answers: a member is "in" a key when their lengths share parity.
struct Lookups;

impl LookupSource for Lookups {
    fn contains(&self, redis_key: &str, member: &str) -> bool {
        redis_key.len() % 2 == member.len() % 2
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let rule = String::from_utf8_lossy(&data[..split]);
    let tail = data.get(split + 1..).unwrap_or_default();
    let mut words = rule.split_whitespace();
    let chunk = |c: &[u8]| {
        let mut bytes = [0u8; 8];
        bytes[..c.len()].copy_from_slice(c);
        bytes
    };
    let mut chunks = tail.chunks(8);
    let record = PlainRecord {
        key: words.next().unwrap_or("sensor-1").to_owned(),
        timestamp_ms: chunks.next().map_or(0, |c| i64::from_le_bytes(chunk(c))),
        values: chunks.map(|c| f64::from_le_bytes(chunk(c))).collect(),
        text: words.last().map(str::to_owned),
    };

    match rules::parse(&rule) {
        Ok(expr) => {
            let verdict = expr.evaluate(&record, &Lookups);
            // Evaluation is a pure function of the record.
            assert_eq!(verdict, expr.evaluate(&record, &Lookups));
            // NOT is the plain negation, NULLs included.
            let negated = Expr::Not(Box::new(expr.clone()));
            assert_eq!(negated.evaluate(&record, &Lookups), !verdict);
            let mut lookups = 0usize;
            expr.for_each_lookup(&record, &mut |key, _member| {
                assert!(!key.is_empty(), "a LOOKUP with an empty Redis key");
                lookups += 1;
            });
            let _ = lookups;
        }
        Err(err) => {
            let chars = rule.chars().count();
            assert!(
                err.column >= 1 && err.column <= chars + 1,
                "column {} outside a rule of {chars} characters: {err}",
                err.column
            );
            assert!(!err.message.is_empty());
        }
    }
});
