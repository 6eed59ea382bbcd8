//! `ferry-worker process`: the stats, validate and enrich processors.
//!
//! Each processor consumes the pipeline's topic in its own consumer group, in batches.
//! A batch is exactly-once in Redis and at-least-once on the output topics:
//!
//! 1. `WATCH` the batch's partition checkpoints (`config.checkpoint_key`) and read them;
//!    records at or below a partition's checkpoint are already in Redis and are skipped.
//!    Reading under `WATCH` on every batch (not only on assignment) also fences a consumer
//!    that lost its partitions in a rebalance without noticing yet.
//! 2. Decode, compute, and produce output and dead-letter records, awaiting delivery.
//!    Each carries `ferry-source-partition` and `ferry-source-offset` headers, so a
//!    downstream reader can drop the duplicates a crash between steps 2 and 3 makes.
//! 3. `MULTI`, the processor's Redis effects, the new checkpoints, `EXEC`. If a watched
//!    checkpoint moved, `EXEC` aborts and the batch starts again from step 1.
//! 4. Only then store the offsets in Kafka (auto-committed), so Kafka never runs ahead of
//!    Redis.
//!
//! Transient Redis and Kafka failures retry the whole batch with backoff; the steps above
//! make a retry safe.
//!
//! What each processor emits:
//! - stats: writes `{prefix}:stats:{key}` and its window; input records pass through to
//!   `output.topic` unchanged, so stats can sit in a chain.
//! - validate: valid records pass through unchanged to `output.topic`; invalid ones go to
//!   the dead-letter topic with `ferry-reason` = the first failing rule's name.
//! - enrich: JSON (see [`enrich::EnrichedRecord`]) that the `json` format reads, so a
//!   chain `raw → enriched → validated` is two processors, the second with `format: json`
//!   reading the first's output topic.
//!
//! Undecodable records are dead-lettered with the decoder's reason label (and counted as
//! `undecodable` in the validate totals). Without a dead-letter topic they are dropped
//! and only counted in metrics.
//!
//! Without the `runtime` feature only [`rules`] builds: `WorkerConfig::validate` parses the
//! rules with it, in the operator's build as in the worker's.

#[cfg(feature = "runtime")]
pub mod enrich;
pub mod rules;
#[cfg(feature = "runtime")]
pub mod stats;
#[cfg(feature = "runtime")]
pub mod validate;

#[cfg(feature = "runtime")]
mod runtime;

#[cfg(feature = "runtime")]
pub use runtime::{ProcessError, run};
