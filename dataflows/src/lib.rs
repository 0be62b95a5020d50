//! The differential dataflows of fleetflow.
//!
//! - [`segments`]: what a pair of consecutive fixes contributes (distance, fuel, time).
//! - [`tiers`]: window accumulators of the downsampled tiers.
//! - [`timeline`]: per-vehicle event-time logic (each vehicle its own clock: dedup,
//!   lateness, jumps, state, windows).
//! - [`clock`]: the job clock, the median of the vehicles' clocks.
//! - [`inputs`]: what the inputs report (the end of a bounded input).
//! - [`pace`]: how often vehicle state is published (longer while catching up).
//! - [`operator`]: the timely operator running the timelines on every worker.
//! - [`geofence`]: geofence membership, events and occupancy over final fixes.
//! - [`sliced`]: snapshots of large operator state written a slice at a time, compressed.
//! - [`state`]: vehicle state arranged by vehicle, its batches published to the query API.
//! - [`cluster`]: where the workers of a cluster are; mirroring results to every process.
//!
//! # Collections and arrangements
//!
//! The timeline operator ([`operator::render_timeline`]) is the one sequential
//! per-vehicle operator. Its vehicle-state output is a differential collection of exact
//! retract/insert pairs ([`operator::CoreStreams::state`]), never an upsert stream. Its
//! fixes arrive in batches of one worker each, exchanged by [`operator::route`].
//!
//! | arrangement | built by | key -> value | who reads it |
//! |---|---|---|---|
//! | `Arrange: VehicleState` | [`state::arrange_state`] | hash of vehicle id -> [`state::HeldState`]; worker -> its [`Progress`](operator::Progress) at the epoch (so a batch carries the progress its states are complete through) | "Publish: VehicleState" ([`state::publish_state`]): its batches feed the live streams' change log and become the API's vehicle view (per producing worker, each batch one sorted run, merged like a spine: `fleetflow_query_api::view`); the trace itself is not imported |
//!
//! | `Upsert: Fences` | [`geofence::fences::arrange_fences`] (differential's `arrange_from_upsert`) | geofence id -> [`FenceVersion`](geofence::fences::FenceVersion) (the version change `seq` made; 0: the initial set): the fence set, sharded by id | the upsert itself (it reads the version a change replaces); its exact retract/insert pairs from time 1 on are broadcast and listed by cell |
//! | `Arrange: FenceChanges` | [`geofence::fences::arrange_fences`] | [`FenceKey`](geofence::fences::FenceKey) (grid cell, the R-tree's `Wide`, or `Changes`) -> [`FenceHeld`](geofence::fences::FenceHeld) (a version covering the cell, or the change of the epoch): the fence set's difference from its initial set, on every worker | "Fence change marks" ([`geofence::fences::change_marks`]) for the timeline, and "Geofences" ([`geofence::render_geofences`]), which makes each version of its index ([`geofence::FenceIndex`]) from the batch of the change; the trace itself is not imported |
//!
//! The fence set is thus a collection: the initial set at time 0 and each runtime change
//! at an epoch of its own (one change an epoch, so none consolidates another away). The
//! batches of its changes carry a change's mark exactly when they carry the cells it
//! moved. The lookups read geofencing's versions of the index (a grid of cells and an
//! R-tree): the initial set indexed once and shared by the workers, and each later version
//! made from the batch of its change as that base plus a small top layer of the changes
//! since it ([`geofence::layers`]), folded into a new base every few hundred geofences. Geofence membership follows each
//! vehicle's final fixes on the vehicle's worker.
#![deny(missing_docs)]

pub mod clock;
pub mod cluster;
pub mod geofence;
pub mod inputs;
pub mod operator;
#[cfg(test)]
mod operator_tests;
pub mod pace;
mod prefetch;
pub mod segments;
pub mod sliced;
pub mod state;
pub mod tiers;
pub mod timeline;
