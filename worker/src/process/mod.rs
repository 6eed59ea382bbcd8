//! `ferry-worker process`: the stats, validate and enrich processors.

pub mod enrich;
pub mod rules;
pub mod stats;
pub mod validate;
