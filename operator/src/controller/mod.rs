//! The Pipeline controller. Reconcile is a staged pipeline whose module names are the
//! stage names: `dereference` → `validate` → `topics` → `build` → `apply` → `status`. Only
//! `dereference` (reads), `apply` and `status` talk to the API server; `topics`
//! talks to Kafka, and only for chained stages.
//!
//! Around the stages: `error` (the one error type, and user error versus retry),
//! `context` (what every reconcile shares), `reconcile` (one round, and what follows a
//! failed one) and `run` (the watches and the controller loop).

pub mod apply;
pub mod build;
pub mod context;
pub mod dereference;
pub mod error;
pub mod reconcile;
pub mod run;
pub mod status;
pub mod topics;
pub mod triggers;
pub mod validate;

pub use context::Context;
pub use error::{Error, Recovery};
pub use reconcile::{error_policy, reconcile};
pub use run::run;

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod chain_tests;
#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod mock_api;
#[cfg(test)]
mod reconcile_tests;
#[cfg(test)]
mod topics_tests;
