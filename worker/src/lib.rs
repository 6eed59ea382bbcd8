//! Ferry's worker: the code that runs in every receiver and processor pod. Its config types
//! and record formats are the contract crate's (`ferry-config`, re-exported here as
//! [`config`], [`duration`], [`record`] and [`status`]); the operator renders the config.

pub use ferry_config::{config, duration, record, status};

pub mod api;
pub mod backoff;
pub mod cli;
pub mod consume;
pub mod http;
pub mod metrics;
pub mod process;
pub mod simulate;
pub mod sink;
