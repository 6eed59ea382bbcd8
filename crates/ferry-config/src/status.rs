//! What a worker says about itself on `GET /status`, and the operator reads from each pod
//! into the Pipeline's conditions and Events (docs/status-channel.md).
//!
//! The document is `{"ready": bool, "reasons": [{"reason", "message", "partition"?,
//! "offset"?}]}`. A reason is a stable CamelCase name (it becomes a condition's `reason`),
//! the message says what to do in words; neither ever carries a secret. In the contract
//! crate: the operator parses the worker's document with these types, so the channel has
//! one definition.

use serde::{Deserialize, Serialize};

/// Declares [`Reason`]: one line per reason, `Name => unready`.
macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident => $unready:expr,)+) => {
        /// Why a stage is not doing its work, or is doing it with a problem to report.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($(#[$doc])* $name,)+
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)+];

            /// The stable name: the `reason` in `/status`, the Pipeline condition and Event.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)+
                }
            }

            /// Whether the reason makes the stage unready (`/readyz` 503); the others are
            /// reported (Degraded) while the stage keeps working.
            pub const fn unready(self) -> bool {
                match self {
                    $(Reason::$name => $unready,)+
                }
            }

            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|reason| reason.as_str() == text)
            }
        }
    };
}

reasons! {
    /// Consuming keeps failing (a partition librdkafka cannot read).
    ConsumeFailing => true,
    /// A key the batch writes holds another Redis type: the batch waits until it is fixed.
    KeyWrongType => true,
    /// A command failed inside `EXEC`: the stage halted with the offsets unstored.
    CommandFailedInExec => true,
    /// Redis does not answer; batches are retried.
    RedisUnavailable => true,
    /// The Redis user lacks a right Ferry needs (a command, a key or the events channel).
    RedisPermissionDenied => true,
    /// A topic the stage produces to (output, dead letters), or its source topic, does not
    /// exist.
    TopicMissing => false,
    /// A record the stage must produce cannot be delivered: its partition waits.
    RecordUndeliverable => true,
    // Position events (consume/position.rs, docs/exactly-once.md): the stage handled them
    // and goes on; they are noted for a while (`Readiness::note`), so the Pipeline shows
    // them and an Event is published.
    /// The source topic was deleted and created again: the partition is read from its start.
    TopicRecreated => false,
    /// Redis lost a checkpoint the group's commits say was written: the partition is replayed.
    RedisLostCheckpoint => false,
    /// The checkpoint in Redis went back under the running stage: the partition is re-read.
    RedisRewound => false,
    /// Records after the checkpoint are gone from Kafka (retention).
    RetentionGap => false,
    /// The group's committed offset is above the log end (negative lag).
    CommittedAboveLogEnd => false,
    /// Offsets went back without a seek (the log changed under the consumer).
    OffsetsWentBack => false,
}

/// One reason as `/status` lists it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReportedReason {
    /// A [`Reason`] name; kept as text so an operator older than the worker still shows
    /// a reason it does not know.
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
}

/// The `/status` document.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusDocument {
    pub ready: bool,
    #[serde(default)]
    pub reasons: Vec<ReportedReason>,
}

/// The largest `/status` body the operator reads; a worker keeps well under it.
pub const MAX_STATUS_BYTES: usize = 64 * 1024;
/// The longest message a worker puts in one reason (longer ones are cut).
pub const MAX_MESSAGE_CHARS: usize = 400;

/// Cuts `message` to [`MAX_MESSAGE_CHARS`] on a character boundary.
pub fn bounded_message(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_have_stable_names_that_parse_back() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(*reason));
            assert!(reason.as_str().chars().all(|c| c.is_ascii_alphanumeric()));
        }
        assert_eq!(Reason::RecordUndeliverable.as_str(), "RecordUndeliverable");
        assert_eq!(Reason::parse("Nope"), None);
    }

    #[test]
    fn the_document_round_trips_and_omits_absent_positions() {
        let doc = StatusDocument {
            ready: false,
            reasons: vec![ReportedReason {
                reason: "TopicMissing".to_owned(),
                message: "m".to_owned(),
                partition: None,
                offset: None,
            }],
        };
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(
            text,
            r#"{"ready":false,"reasons":[{"reason":"TopicMissing","message":"m"}]}"#
        );
        assert_eq!(serde_json::from_str::<StatusDocument>(&text).unwrap(), doc);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_CHARS + 10);
        let cut = bounded_message(&long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(bounded_message("short"), "short");
    }
}
