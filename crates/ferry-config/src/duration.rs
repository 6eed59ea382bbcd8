//! A duration written the way Kubernetes users write them: `500ms`, `2s`, `1m30s`, `1h`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the CRD schema enforces; the parser below accepts exactly this language.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: expected digits followed by a unit (ms, s, m or h), e.g. 500ms, 2s, 1m30s"
)]
pub struct ParseDurationError {
    pub input: String,
}

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    pub const fn as_duration(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl FromStr for HumanDuration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || ParseDurationError {
            input: input.to_owned(),
        };
        if input.is_empty() {
            return Err(err());
        }
        let mut total = Duration::ZERO;
        let mut rest = input;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
            if digits == 0 {
                return Err(err());
            }
            let amount: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let (unit_millis, unit_len) = if rest.starts_with("ms") {
                (1, 2)
            } else if rest.starts_with('s') {
                (1_000, 1)
            } else if rest.starts_with('m') {
                (60_000, 1)
            } else if rest.starts_with('h') {
                (3_600_000, 1)
            } else {
                return Err(err());
            };
            rest = &rest[unit_len..];
            let millis = amount.checked_mul(unit_millis).ok_or_else(err)?;
            total = total
                .checked_add(Duration::from_millis(millis))
                .ok_or_else(err)?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for HumanDuration {
    /// Compact and round-trippable: `1h2m3s400ms`, `0s` for zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if millis >= size {
                write!(f, "{}{unit}", millis / size)?;
                millis %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration such as 500ms, 2s, 1m30s or 1h."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compound_durations() {
        let cases = [
            ("500ms", 500),
            ("2s", 2_000),
            ("1m30s", 90_000),
            ("1h", 3_600_000),
            ("1h1m1s1ms", 3_661_001),
            ("0s", 0),
        ];
        for (text, millis) in cases {
            let parsed: HumanDuration = text.parse().unwrap();
            assert_eq!(parsed.0, Duration::from_millis(millis), "{text}");
        }
    }

    #[test]
    fn rejects_what_the_schema_pattern_rejects() {
        for text in [
            "",
            "5",
            "s",
            "5x",
            "1.5s",
            "-1s",
            "1 s",
            "1d",
            "99999999999999999999h",
        ] {
            assert!(
                text.parse::<HumanDuration>().is_err(),
                "{text:?} should fail"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for millis in [0u64, 1, 999, 1_000, 61_001, 3_600_000, 3_723_456] {
            let d = HumanDuration::from_millis(millis);
            assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d);
        }
        assert_eq!(HumanDuration::from_millis(90_000).to_string(), "1m30s");
    }
}
