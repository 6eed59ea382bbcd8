//! The operator–worker contract, in one definition: the worker's config (which the operator
//! renders into a ConfigMap and the worker loads at start), human durations, the rule
//! language of the validate processor (the operator parses rules at reconcile with the same
//! parser the worker uses), the record formats a Pipeline's `format` names, and the status
//! document a worker serves on `/status` and the operator reads (docs/status-channel.md).
//!
//! It has no Kafka, Redis or Kubernetes runtime dependency, so what the operator can check
//! never depends on which worker features a build turned on.

pub mod config;
pub mod duration;
pub mod record;
pub mod rules;
pub mod status;
