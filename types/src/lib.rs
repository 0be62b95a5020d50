//! Records and job-spec types shared by every fleetflow crate.
//!
//! Plain data and its validation, no runtime machinery (checkpoints and metrics live in
//! `fleetflow-runtime`). Nothing here does I/O: sources, the dataflow, sinks and the
//! query API all speak these types and depend on this crate rather than on each other.
//!
//! - [`time`]: event-time helpers (epoch milliseconds, UTC calendar, human durations).
//! - [`fix`]: the decoded location event ([`fix::Fix`]) and great-circle distance.
//! - [`geofence`]: geofences from GeoJSON, validated, with their membership test.
//! - [`records`]: what the job produces: vehicle state, tier rows, dead letters.
//! - [`config`]: the job spec (`job.toml`) with errors that name the field and line.
//! - [`registry`]: the optional vehicle registry (tenant, tank capacity).
#![deny(missing_docs)]

pub mod config;
pub mod fix;
pub mod geofence;
pub mod records;
pub mod registry;
pub mod time;

pub use compact_str::CompactString;
