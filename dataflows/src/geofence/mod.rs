//! Geofence membership in event time (semantics §5).
//!
//! ```text
//!   API changes ──► "GeofenceInput" (worker 0, one change an epoch) ──Broadcast──┐
//!                                                                                ▼
//!   initial set (time 0) ──► "Upsert: Fences" ──Broadcast──► "Arrange: FenceChanges" (every worker)
//!                                                            │ batches: versions by cell, change marks
//!                                   ┌─ change marks ─────────┤
//!                                   ▼                        │
//!                           "VehicleTimeline"                │
//!                                   │ final fixes in ts order per vehicle, and
//!                                   │ marks: where each vehicle takes a change
//!                                   ▼                        ▼
//!                              "Geofences" ◄─────────────────┘ (its versions of the index)
//!                                   ├─► events (lake, final)
//!                                   └─► view: occupancy ±1, events, applied changes, as_of (API)
//! ```
//!
//! The fence set is a differential collection ([`fences`]): the initial set and every
//! runtime change, by upsert, its changes since the start arranged by grid cell on every
//! worker. The timeline takes
//! from its batches only the marks of the changes, since only it knows where each
//! vehicle's time reaches a change's `T`, and passes on marks (`Finalized::Change { seq,
//! at }`, `Finalized::Apply`); geofencing reads the same batches and makes each version of
//! its index from the version a change retracted and the cells of the one it inserted.
//!
//! - [`fences`]: the fence set as a collection, its changes arranged by cell.
//! - [`index`]: the geofences indexed by a cell covering (small ones) and an R-tree (large
//!   ones), so a fix costs one cell scan plus an exact test of the few geofences whose box
//!   holds it, however many geofences exist elsewhere.
//! - [`layers`]: a version of the fence set as a shared base index and the changes since
//!   it, so that a runtime change copies a few geofences, not the whole index.
//! - [`membership`]: per vehicle, the position of its latest final fix and the visits in
//!   progress (geofence, `entered_at`, dwell emitted): state grows with vehicles times the
//!   geofences they are in, never with events.
//!
//! Occupancy is maintained incrementally: each enter is a +1 and each exit a -1 of
//! `(geofence, vehicle, entered_at)`, handed in order to the worker's shard of the API's
//! shared view after every batch (so no consolidation is needed), together with the job
//! clock of the results (`as_of`).
//!
//! Events are computed from final fixes only (their vehicle's clock passed them), so they
//! are never revised, and each transition is an event record of its own: an enter and an
//! exit in one input batch are two events (a collection of memberships would consolidate
//! them away).
//!
//! A runtime change takes effect at the job clock `T` of the epoch it reaches the workers
//! in (the same on every worker). Each vehicle takes it at `T` in its own time: its fixes
//! before `T` are checked against the old geofences, later ones against the new, and the
//! change's own events (`exit`, cause `geofence_removed`, for occupants of a removed
//! geofence; `enter`, cause `geofence_added`, for vehicles whose latest final fix is inside
//! an added one; both for a replacement) carry `T`. A vehicle whose own clock is already
//! past `T` (a tracker ahead of the fleet), or that is silent on a live input, takes it at
//! once. Results therefore do not depend on timing or worker count.

mod blocks;
pub mod fences;
pub mod index;
pub mod layers;
pub mod membership;

pub use index::FenceIndex;
pub use membership::{
    GeoOutputs, GeoRestore, GeoSnapshot, GeoVehicleSnapshot, Geofencing, LoggedChange,
};

use crate::sliced::{SnapshotWriter, SNAPSHOT_SLICE};
use fences::{FenceChange, FenceSpan};
use fleetflow_runtime::checkpoint::Hub;
use fleetflow_types::fix::Fix;
use fleetflow_types::records::{GeofenceChange, GeofenceEvent, InputReport, OccupancyChange};
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;

/// The part of a final fix that geofencing needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FixPoint {
    /// The vehicle's slot on this worker (dense, stable for the run; assigned by the
    /// timeline), so that per-vehicle state is an index rather than a hash lookup.
    pub slot: u32,
    /// Vehicle.
    pub vehicle_id: CompactString,
    /// Its tenant.
    pub tenant: CompactString,
    /// Event time.
    pub ts: Millis,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// The version of the fence set the fix is checked against: the last geofence change
    /// its vehicle took (0: none).
    pub version: u64,
}

impl FixPoint {
    /// The position of a fix of the vehicle in `slot`, on fence-set `version`.
    pub fn of(f: &Fix, slot: u32, version: u64) -> FixPoint {
        FixPoint {
            slot,
            vehicle_id: f.vehicle_id.clone(),
            tenant: f.tenant.clone(),
            ts: f.ts,
            lat: f.lat,
            lon: f.lon,
            version,
        }
    }
}

/// What the timeline hands to geofencing, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Finalized {
    /// A fix became final.
    Fix(FixPoint),
    /// Geofence change `seq` reached the worker's vehicles, taking effect at job clock `at`
    /// (`None`: before the clock began). Only the mark: geofencing has the change itself
    /// from the change stream (see [`render_geofences`]).
    Change {
        /// The change's sequence number.
        seq: u64,
        /// The job clock it takes effect at.
        at: Option<Millis>,
    },
    /// The vehicle in `slot` takes change `seq` (changes are taken in order).
    Apply {
        /// The vehicle's slot.
        slot: u32,
        /// The change.
        seq: u64,
    },
    /// Every vehicle of the worker has taken every change up to this one.
    Taken(u64),
    /// The job clock the results so far reflect (their `as_of`).
    Clock(Millis),
}

/// One change to the API's geofence view, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ViewUpdate {
    /// A vehicle entered or left a geofence.
    Occupant(OccupancyChange),
    /// Results reflect the job clock through this time.
    AsOf(Millis),
    /// This worker registered change `seq`, taking effect at job clock `at`.
    Applied {
        /// Change sequence number.
        seq: u64,
        /// The job clock it took effect at.
        at: Option<Millis>,
    },
}

type Out<D> = OutputBuilder<u64, CapacityContainerBuilder<Vec<D>>>;

/// Checkpoint participant name of the geofencing operator.
pub const SNAPSHOT_OP: &str = "geofences";

/// One batch of a worker's geofence view changes: its occupancy updates and applied
/// changes in the order they happened, and the events of the batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ViewBatch {
    /// Occupancy, applied changes and watermarks.
    pub updates: Vec<(ViewUpdate, isize)>,
    /// The batch's events.
    pub events: Vec<GeofenceEvent>,
}

/// Where a worker's geofence view changes go.
pub enum ViewSink<F> {
    /// Applied on the worker thread by `F(updates, events)`, which must only update a
    /// shared structure.
    Local(F),
    /// Emitted as a stream of [`ViewBatch`]es (to be mirrored to other processes).
    Stream,
}

/// Renders geofencing over the timeline's final fixes and change marks (same worker, in
/// order) and the batches of the fence set's arrangement ([`fences::arrange_fences`]), and
/// returns the events, for the lake, and the view batches (empty unless `view` is
/// [`ViewSink::Stream`]).
///
/// `fences` is the stream of the arrangement whose marks the timeline reads
/// ([`fences::change_marks`]), on the same worker: the timeline marks a change on `finals`
/// only once a batch delivered it, and one output hands its data to all of its readers at
/// once, so reading `fences` first in every invocation has each change's batch here before
/// its mark. The geometry thus never passes through the timeline, which only decides where
/// each vehicle takes a change.
///
/// The view receives this worker's occupancy and applied changes after each batch, in the
/// order they happened (an enter followed by an exit of the same visit arrives in that
/// order, so applying them in turn needs no consolidation), and the batch's events.
pub fn render_geofences<'scope, F>(
    finals: Stream<'scope, u64, Vec<Finalized>>,
    fences: Stream<'scope, u64, Vec<FenceSpan>>,
    (index, latest): (Arc<FenceIndex>, u64),
    dwell_after: Millis,
    checkpoints: Option<(Arc<Hub>, Option<GeoRestore>)>,
    view: ViewSink<F>,
) -> (
    Stream<'scope, u64, Vec<GeofenceEvent>>,
    Stream<'scope, u64, Vec<ViewBatch>>,
)
where
    F: FnMut(&mut Vec<(ViewUpdate, isize)>, &[GeofenceEvent]) + 'static,
{
    let scope = finals.scope();
    let mut builder = OperatorBuilder::new("Geofences".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address);
    let mut input = builder.new_input(finals, Pipeline);
    let mut fence_in = builder.new_input(fences, Pipeline);
    let (events_out, events) = builder.new_output::<Vec<GeofenceEvent>>();
    let mut events_out: Out<GeofenceEvent> = OutputBuilder::from(events_out);
    let (batches_out, batches) = builder.new_output::<Vec<ViewBatch>>();
    let mut batches_out: Out<ViewBatch> = OutputBuilder::from(batches_out);
    let worker = scope.index();
    builder.build(move |caps| {
        let mut out = GeoOutputs::default();
        let (hub, restored) = checkpoints.unzip();
        let restored = restored.flatten();
        let mut cuts = hub.as_ref().map(|h| h.cuts());
        let mut view = match view {
            ViewSink::Local(f) => Some(f),
            ViewSink::Stream => None,
        };
        // The restored occupancy, emitted at the first activation (at the initial time).
        let mut initial: Option<(timely::dataflow::operators::Capability<u64>, ViewBatch)> = None;
        let mut geo = match restored {
            Some(r) => Geofencing::restore(index, r, dwell_after, &mut out),
            None => Geofencing::new(index, latest, dwell_after),
        };
        if !out.view.is_empty() {
            match view.as_mut() {
                Some(f) => f(&mut out.view, &[]),
                None => {
                    let batch = ViewBatch {
                        updates: std::mem::take(&mut out.view),
                        events: Vec::new(),
                    };
                    initial = caps.into_iter().nth(1).map(|c| (c, batch));
                }
            }
            out.view.clear();
        }
        // Worker 0's snapshot also holds the geofences in force (every worker has them).
        let mut snapshots = SnapshotWriter::new(hub, SNAPSHOT_OP, worker);
        let begin = move |w: &mut SnapshotWriter, geo: &mut Geofencing, range| {
            if let Some(range) = range {
                w.begin(geo, range, |g| g.begin_snapshot(worker == 0));
            }
        };
        // Changes received and not yet marked, by sequence number.
        let mut received: std::collections::BTreeMap<u64, FenceChange> = Default::default();
        move |frontiers| {
            if let Some((cap, batch)) = initial.take() {
                batches_out.activate().session(&cap).give(batch);
            }
            fence_in.for_each(|_, spans| fences::changes_in(spans, &mut received));
            // A pipeline channel delivers one producer's batches in the order they were sent,
            // which is the order the timeline made fixes final and applied changes (and
            // their times never decrease), so checkpoint cuts fall between batches.
            input.for_each(|cap, data| {
                if let Some(t) = cap.least() {
                    begin(
                        &mut snapshots,
                        &mut geo,
                        cuts.as_mut().and_then(|c| c.before(*t)),
                    );
                }
                // The vehicles' records and visits are fetched a few fixes ahead, as the
                // timelines do theirs (`timeline::ahead`).
                let slots: Vec<Option<u32>> = data
                    .iter()
                    .map(|i| match i {
                        Finalized::Fix(p) => Some(p.slot),
                        _ => None,
                    })
                    .collect();
                crate::prefetch::in_order(
                    &mut geo,
                    &slots,
                    data.drain(..),
                    |g, s| s.into_iter().for_each(|s| g.fetch_record(s)),
                    |g, s| s.into_iter().for_each(|s| g.fetch_visits(s)),
                    |g, _, item| match item {
                        Finalized::Fix(p) => g.on_fix(p, &mut out),
                        Finalized::Change { seq, at } => {
                            let c = received.remove(&seq).expect("a change precedes its mark");
                            g.register(c, at, &mut out)
                        }
                        Finalized::Apply { slot, seq } => g.apply(slot, seq, &mut out),
                        Finalized::Taken(seq) => g.taken(seq),
                        Finalized::Clock(c) => out.view.push((ViewUpdate::AsOf(c), 1)),
                    },
                );
                let Some(t) = cap.least().copied() else {
                    return;
                };
                if !out.view.is_empty() || !out.events.is_empty() {
                    match view.as_mut() {
                        Some(f) => {
                            f(&mut out.view, &out.events);
                            out.view.clear();
                        }
                        None => {
                            let batch = ViewBatch {
                                updates: std::mem::take(&mut out.view),
                                events: out.events.clone(),
                            };
                            batches_out
                                .activate()
                                .session(&cap.delayed(&t, 1))
                                .give(batch);
                        }
                    }
                }
                if !out.events.is_empty() {
                    events_out
                        .activate()
                        .session(&cap.delayed(&t, 0))
                        .give_container(&mut out.events);
                    // The container was handed over; start the next one at a useful size
                    // rather than regrowing it from nothing.
                    out.events.reserve(1024);
                }
            });
            let f = frontiers[0].frontier().first().copied();
            begin(
                &mut snapshots,
                &mut geo,
                cuts.as_mut().and_then(|c| c.frontier(f)),
            );
            // Written a slice at a time while fixes flow (all of it once they ended).
            let budget = f.map(|_| SNAPSHOT_SLICE);
            if let Some(wait) = snapshots.step(&mut geo, budget, std::time::Instant::now()) {
                activator.activate_after(wait);
            }
        }
    });
    (events, batches)
}

/// Where runtime geofence changes come from: the API sends, the dataflow receives.
pub type ChangeReceiver = Arc<Mutex<std::sync::mpsc::Receiver<GeofenceChange>>>;

/// Renders the runtime geofence input: worker 0 reads `changes`, stamps each with the job
/// clock it takes effect at (`clock`, this process's), and emits them from the frontier of
/// `watch` (the sources' reports) on, one an epoch and never at epoch 0 (see
/// [`fences`]), broadcast to every worker; it closes when that frontier closes (the
/// sources ended or were interrupted).
///
/// With `serve_until`, it outlives the sources: once they ended it goes on taking changes
/// at processing time (so the dataflow, its checkpoints and the API stay alive) until the
/// flag is set.
pub fn render_geofence_input<'scope>(
    watch: Stream<'scope, u64, Vec<InputReport>>,
    changes: Option<ChangeReceiver>,
    clock: impl Fn() -> Option<Millis> + 'static,
    serve_until: Option<Arc<AtomicBool>>,
) -> Stream<'scope, u64, Vec<GeofenceChange>> {
    let scope = watch.scope();
    let worker = scope.index();
    let mut builder = OperatorBuilder::new("GeofenceInput".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address);
    let mut input = builder.new_input(watch, Pipeline);
    let (out, stream) = builder.new_output::<Vec<GeofenceChange>>();
    let mut out: Out<GeofenceChange> = OutputBuilder::from(out);
    let changes = if worker == 0 { changes } else { None };
    builder.build(move |caps| {
        let mut cap = changes.as_ref().and(caps.into_iter().next());
        move |frontiers| {
            input.for_each(|_, data| data.clear());
            let Some(held) = cap.as_mut() else { return };
            let frontier = frontiers[0].frontier().first().copied();
            if let Some(rx) = &changes {
                let at = clock();
                let received: Vec<GeofenceChange> = match rx.lock() {
                    Ok(rx) => rx.try_iter().map(|c| GeofenceChange { at, ..c }).collect(),
                    Err(_) => Vec::new(),
                };
                if !received.is_empty() {
                    // One change an epoch, from epoch 1 on (epoch 0 is the initial fence
                    // set's), so that the fence set's collection holds every change.
                    let mut t = (*held.time()).max(1);
                    let mut out = out.activate();
                    for c in received {
                        out.session(&held.delayed(&t)).give(c);
                        t += 1;
                    }
                    held.downgrade(&t);
                }
            }
            // After the sources, processing time moves the frontier (serving the API).
            let serving = serve_until
                .as_ref()
                .is_some_and(|stop| !stop.load(Ordering::Relaxed));
            let next = match frontier {
                Some(f) => Some(f),
                None if serving => Some(fleetflow_types::time::now_ms().max(0) as u64),
                None => None,
            };
            match next {
                None => cap = None,
                Some(f) => {
                    if *held.time() < f {
                        held.downgrade(&f);
                    }
                    activator.activate_after(std::time::Duration::from_millis(20));
                }
            }
        }
    });
    crate::cluster::broadcast_in_order(stream)
}

#[cfg(test)]
mod tests;

/// A circular geofence of every tenant, for tests.
#[cfg(test)]
pub(crate) fn test_circle(
    id: &str,
    lat: f64,
    lon: f64,
    radius_m: f64,
) -> Arc<fleetflow_types::geofence::Geofence> {
    let f = serde_json::json!({"type": "Feature", "id": id, "properties": {"radius_m": radius_m},
        "geometry": {"type": "Point", "coordinates": [lon, lat]}});
    Arc::new(
        fleetflow_types::geofence::Geofence::from_feature(&f, None, None, "#0").expect("a circle"),
    )
}
