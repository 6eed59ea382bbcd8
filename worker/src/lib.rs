//! Ferry's worker: the code that runs in every receiver and processor pod, and the config
//! contract the operator renders for it.
//!
//! Without the `runtime` feature only the config types and the rule language build, for the
//! operator: it checks a Pipeline's rules with the same parser the processors use.

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
pub mod process;
#[cfg(feature = "runtime")]
pub mod simulate;
#[cfg(feature = "runtime")]
pub mod sink;
pub mod status;
