//! Ferry's worker: the code that runs in every receiver and processor pod, and the config
//! contract the operator renders for it.
//!
//! Without the `runtime` feature only the config types build, for the operator.

pub mod backoff;
pub mod config;
pub mod duration;
pub mod record;

#[cfg(feature = "runtime")]
pub mod consume;
#[cfg(feature = "runtime")]
pub mod http;
#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
pub mod process;
#[cfg(feature = "runtime")]
pub mod simulate;
#[cfg(feature = "runtime")]
pub mod sink;
