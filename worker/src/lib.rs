//! Ferry's worker: the code that runs in every receiver and processor pod. Its config types
//! and record formats are the contract crate's (`ferry-config`, re-exported here as
//! [`config`], [`duration`] and [`record`]); the operator renders the config.

pub use ferry_config::{config, duration, record};

pub mod backoff;
pub mod consume;
pub mod http;
pub mod metrics;
pub mod process;
pub mod simulate;
pub mod sink;
pub mod status;
