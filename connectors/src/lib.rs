//! Where events come from: intake decoding, the `file` and `generator` sources, and the
//! timely operator that runs any [`source::Source`].
//!
//! - [`intake`]: decoding and validation of location events (the hot path).
//! - [`source`]: the `Source` trait and its timely operator (epochs, input reports).
//! - [`file`](mod@file): NDJSON files and directories.
//! - [`generator`]: the deterministic simulated fleet.
//! - [`kafka`]: the Kafka source, dead-letter topic, offset commits and event producer.
//! - [`registry`]: every kind of source a job spec can name, opened once per job.
#![deny(missing_docs)]

pub mod file;
pub mod generator;
pub mod intake;
pub mod kafka;
pub mod registry;
pub mod source;
