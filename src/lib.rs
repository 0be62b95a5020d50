//! The fleetflow job runtime: turns a job spec into a running timely cluster of workers.
//!
//! ```text
//!  source ──► "Source" ──fixes──► "VehicleTimeline" ──state──► "Arrange: VehicleState" ══► "Publish: VehicleState" ──► API view
//!              │   │                  │   │   │
//!              │   └──reports (bcast)─┘   │   └──raw / tier rows / dead letters──► "LakeSink" ──► Uploader ──► lake
//!              └──dead letters (malformed, invalid)──────────────────────────────────┘
//! ```
//!
//! [`run_job`] runs a job to completion (file input, or until interrupted) and returns a
//! [`Summary`]; the `fleetflow` binary is a thin CLI over it. The same job runs as one
//! process or as a timely cluster of several ([`cluster`]).

pub mod cluster;
pub mod job;
pub mod restore;
pub mod slow;

pub use cluster::ClusterSpec;
pub use job::{run_job, Capture, RunOptions, RunResult, Summary};
