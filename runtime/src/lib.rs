//! The machinery every stage of a running job shares: checkpoint collection and metrics.
//!
//! It sits between [`fleetflow_types`] (plain records and the job spec, no machinery) and
//! the crates that run a job (sources, dataflows, sinks, the query API), which depend on it
//! rather than on each other.
//!
//! - [`checkpoint`]: snapshots aligned on epoch boundaries, collected for the lake's
//!   checkpoints (the hub every participant offers its state to).
//! - [`metrics`]: the counters every stage updates and `/metrics` exposes.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod metrics;
