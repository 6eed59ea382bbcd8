//! Validation: every record is checked against the configured rules, in order. A record is
//! valid when all rules hold; otherwise the first rule that fails names the dead-letter
//! reason. Counters `{prefix}:counters:{processor}:{key}` and `{prefix}:counters:{processor}:_total` (fields
//! `valid`, `invalid`) are incremented in the checkpoint's transaction, so they count
//! every record exactly once.

use crate::config::ValidationRule;

use super::rules::{self, Expr, LookupSource, ParseError, RecordView};

/// The counters hash of all keys together.
pub const TOTAL_COUNTERS: &str = "_total";

#[derive(Debug, thiserror::Error)]
#[error("validation rule `{name}` does not parse {source}: {expression}")]
pub struct RuleError {
    pub name: String,
    pub expression: String,
    pub source: ParseError,
}

/// The rules, parsed once at start.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<(String, Expr)>,
}

impl RuleSet {
    /// Fails on the first rule that does not parse, naming it.
    pub fn compile(rules: &[ValidationRule]) -> Result<Self, RuleError> {
        let rules = rules
            .iter()
            .map(|rule| {
                rules::parse(&rule.expression)
                    .map(|expr| (rule.name.clone(), expr))
                    .map_err(|source| RuleError {
                        name: rule.name.clone(),
                        expression: rule.expression.clone(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// The name of the first rule the record fails, or `None` when it is valid.
    pub fn first_failure(
        &self,
        record: &dyn RecordView,
        lookups: &dyn LookupSource,
    ) -> Option<&str> {
        self.rules
            .iter()
            .find(|(_, expr)| !expr.evaluate(record, lookups))
            .map(|(name, _)| name.as_str())
    }

    /// Every (redis key, member) any rule would look up for this record.
    pub fn for_each_lookup(&self, record: &dyn RecordView, visit: &mut dyn FnMut(&str, String)) {
        for (_, expr) in &self.rules {
            expr.for_each_lookup(record, visit);
        }
    }
}

/// The counters hash of one key.
pub fn counters_key(key_prefix: &str, processor: &str, record_key: &str) -> String {
    super::runtime::ProcessorKeys::new(key_prefix, processor).counters(record_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reading(Vec<f64>);

    impl RecordView for Reading {
        fn key(&self) -> &str {
            "k"
        }
        fn timestamp_ms(&self) -> i64 {
            0
        }
        fn values(&self) -> &[f64] {
            &self.0
        }
        fn text(&self) -> Option<&str> {
            None
        }
    }

    struct NoLookups;

    impl LookupSource for NoLookups {
        fn contains(&self, _: &str, _: &str) -> bool {
            false
        }
    }

    fn rule(name: &str, expression: &str) -> ValidationRule {
        ValidationRule {
            name: name.to_owned(),
            expression: expression.to_owned(),
        }
    }

    #[test]
    fn names_the_first_failing_rule() {
        let rules = RuleSet::compile(&[
            rule("has-value", "values[0] NOT NULL"),
            rule("in-range", "values[0] IN RANGE 0 100"),
        ])
        .unwrap();
        assert_eq!(rules.first_failure(&Reading(vec![5.0]), &NoLookups), None);
        assert_eq!(
            rules.first_failure(&Reading(vec![500.0]), &NoLookups),
            Some("in-range")
        );
        assert_eq!(
            rules.first_failure(&Reading(vec![]), &NoLookups),
            Some("has-value")
        );
    }

    #[test]
    fn a_broken_rule_fails_with_one_line_naming_it() {
        let err = RuleSet::compile(&[
            rule("fine", "text NULL"),
            rule("broken", "values[0] IN RANGE 1"),
        ])
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "validation rule `broken` does not parse at column 21: expected an operand (values[i], text, ts, key, a number or a string), found the end of the rule: values[0] IN RANGE 1"
        );
        assert_eq!(err.lines().count(), 1);
    }
}
