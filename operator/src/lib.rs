//! Ferry's operator: reconciles `Pipeline`s into receiver and processor Deployments.

pub mod autoscale;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod events;
pub mod group_offsets;
pub mod http;
pub mod lag;
pub mod metrics;
pub mod retry;
pub mod scaling;
pub mod telemetry;
pub mod topics;
pub mod worker_status;
