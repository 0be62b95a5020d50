//! Where events come from: intake decoding, the `file` and `generator` sources, and the
//! timely operator that runs any [`source::Source`].
//!
//! - [`intake`]: decoding and validation of location events (the hot path).
//! - [`source`]: the `Source` trait and its timely operator (epochs, input reports).
//! - [`file`]: NDJSON files and directories.
//! - [`generator`]: the deterministic simulated fleet.
#![deny(missing_docs)]

pub mod file;
pub mod generator;
pub mod intake;
pub mod source;
