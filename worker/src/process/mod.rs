//! `ferry-worker process`: the stats, validate and enrich processors.
//!
//! Each processor consumes the pipeline's topic in its own consumer group, on the same
//! consumption pipeline as the receiver ([`crate::consume::pipeline`]): batches fenced by
//! their partitions' checkpoints under `WATCH`, output and dead-letter records produced
//! and acknowledged before `EXEC`, the processor's Redis effects and the checkpoints in one
//! `MULTI`/`EXEC`, offsets stored only after it, a drain on revoke, and a batch cut at
//! every rebalance. A batch is exactly once in Redis and at least once on the output
//! topics: every produced record carries `ferry-source-topic`, `ferry-source-partition` and
//! `ferry-source-offset`, so a downstream reader can drop the duplicates a crash between
//! produce and `EXEC` makes.
//!
//! What each processor emits:
//! - stats: writes `{prefix}:stats:{processor}:{key}` and its window; input records pass through to
//!   `output.topic` unchanged, so stats can sit in a chain.
//! - validate: valid records pass through unchanged to `output.topic`; invalid ones go to
//!   the dead-letter topic with `ferry-reason` = the first failing rule's name.
//! - enrich: JSON (see [`enrich::EnrichedRecord`]) that the `json` format reads, so a
//!   chain `raw → enriched → validated` is two processors, the second with `format: json`
//!   reading the first's output topic.
//!
//! Undecodable records are dead-lettered with the decoder's reason label (and counted as
//! `undecodable` in the validate totals). Without a dead-letter topic they are counted in
//! metrics and logged (rate-limited), like every refused record.
//!
//! The rule language is the contract crate's ([`ferry_config::rules`]): the operator parses
//! a Pipeline's rules with it at reconcile, as the worker does at start.

pub mod enrich;
pub mod stats;
pub mod validate;

mod runtime;

pub use ferry_config::rules;
pub use runtime::{ProcessError, ProcessorKeys, run};
