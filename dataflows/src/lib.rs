//! The differential dataflows of fleetflow.
//!
//! - [`segments`]: what a pair of consecutive fixes contributes (distance, fuel, time).
//! - [`tiers`]: window accumulators of the downsampled tiers.
//! - [`timeline`]: per-vehicle event-time logic (each vehicle its own clock: dedup,
//!   lateness, jumps, state, windows).
//! - [`clock`]: the job clock, the median of the vehicles' clocks.
//! - [`inputs`]: what the inputs report (the end of a bounded input).
//! - [`operator`]: the timely operator running the timelines on every worker.
//! - [`geofence`]: geofence membership, events and occupancy over final fixes.
//! - [`publish`]: vehicle-state changes, applied to a shared view for the query API.
//! - [`cluster`]: where the workers of a cluster are; mirroring results to every process.
#![deny(missing_docs)]

pub mod clock;
pub mod cluster;
pub mod geofence;
pub mod inputs;
pub mod operator;
#[cfg(test)]
mod operator_tests;
pub mod publish;
pub mod segments;
pub mod tiers;
pub mod timeline;
