//! Geofence membership in event time (semantics §5).
//!
//! ```text
//!   API changes ──► "GeofenceInput" (worker 0) ──Broadcast──► "VehicleTimeline"
//!                                                               │ final fixes in ts order per vehicle,
//!                                                               │ changes interleaved at the watermark
//!                                                               ▼
//!                                                         "Geofences" ─┬─► events     (lake, final)
//!                                                                      └─► view updates (occupancy, events,
//!                                                                          applied changes) for the API
//! ```
//!
//! Every worker holds every geofence in an R-tree of bounding boxes ([`FenceIndex`]), so a
//! fix costs a tree descent plus an exact test of the few fences whose box holds it,
//! however many fences exist elsewhere. Per vehicle the operator keeps the position of its
//! latest final fix and the visits in progress (fence, `entered_at`, dwell emitted): state
//! grows with vehicles times the fences they are in, never with events.
//!
//! Events are computed from final fixes only (the watermark passed them), so they are never
//! revised, and each transition is an event record of its own: an enter and an exit in one
//! input batch are two events (a collection of memberships would consolidate them away).
//!
//! A runtime change is applied by the timeline at the watermark `W` of the epoch it arrives
//! in, after the fixes below `W` were made final and before any later fix: every worker
//! interleaves it at the same place, so results do not depend on timing or worker count.
//! Removing yields `exit` (cause `geofence_removed`) for the occupants; adding yields
//! `enter` (cause `geofence_added`, `entered_at = W`) for vehicles whose latest final fix
//! is inside; replacing is a removal and an addition.

use differential_dataflow::{AsCollection, VecCollection};
use fleetflow_types::fix::Fix;
use fleetflow_types::geofence::Geofence;
use fleetflow_types::records::{
    GeofenceCause, GeofenceChange, GeofenceEvent, GeofenceEventKind, InputReport,
};
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::RTree;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::Stream;

/// The part of a final fix that geofencing needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FixPoint {
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
}

impl FixPoint {
    /// The position of a fix.
    pub fn of(f: &Fix) -> FixPoint {
        FixPoint {
            vehicle_id: f.vehicle_id.clone(),
            tenant: f.tenant.clone(),
            ts: f.ts,
            lat: f.lat,
            lon: f.lon,
        }
    }
}

/// What the timeline hands to geofencing, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Finalized {
    /// A fix became final.
    Fix(FixPoint),
    /// A geofence change took effect at this watermark (`None`: before the first one).
    Change(GeofenceChange, Option<Millis>),
}

/// One change to the API's geofence view.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ViewUpdate {
    /// `vehicle` is inside `geofence` since `entered_at` (diff +1) or no longer (-1).
    Occupant {
        /// Geofence id.
        geofence: CompactString,
        /// Vehicle id.
        vehicle: CompactString,
        /// `ts` of its `enter`.
        entered_at: Millis,
    },
    /// An event (diff +1).
    Event(GeofenceEvent),
    /// Worker `worker` applied change `seq` at watermark `at`.
    Applied {
        /// Change sequence number.
        seq: u64,
        /// The watermark it took effect at.
        at: Option<Millis>,
        /// The worker.
        worker: usize,
    },
}

type Out<D> = OutputBuilder<u64, CapacityContainerBuilder<Vec<D>>>;

type Entry = GeomWithData<Rectangle<[f64; 2]>, u32>;

/// Every geofence of the job with an R-tree over their bounding boxes.
#[derive(Default)]
pub struct FenceIndex {
    slots: Vec<Option<(Arc<Geofence>, Entry)>>,
    by_id: HashMap<CompactString, u32>,
    free: Vec<u32>,
    tree: RTree<Entry>,
}

fn entry(g: &Geofence, slot: u32) -> Entry {
    let b = g.bbox();
    GeomWithData::new(Rectangle::from_corners([b[0], b[1]], [b[2], b[3]]), slot)
}

impl FenceIndex {
    /// An index over `fences` (bulk loaded).
    pub fn new(fences: impl IntoIterator<Item = Arc<Geofence>>) -> FenceIndex {
        let mut idx = FenceIndex::default();
        let mut entries = Vec::new();
        for g in fences {
            if let Some(old) = idx.by_id.get(&g.id).copied() {
                idx.slots[old as usize] = None;
                idx.free.push(old);
            }
            let slot = idx.slots.len() as u32;
            let e = entry(&g, slot);
            idx.by_id.insert(g.id.clone(), slot);
            idx.slots.push(Some((g, e)));
        }
        for s in idx.slots.iter().flatten() {
            entries.push(s.1);
        }
        idx.tree = RTree::bulk_load(entries);
        idx
    }

    /// Number of geofences.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The geofence in `slot`.
    pub fn get(&self, slot: u32) -> Option<&Arc<Geofence>> {
        self.slots
            .get(slot as usize)
            .and_then(|s| s.as_ref().map(|s| &s.0))
    }

    /// The slot of geofence `id`.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// Adds a geofence (its id must not be present) and returns its slot.
    pub fn insert(&mut self, g: Arc<Geofence>) -> u32 {
        debug_assert!(!self.by_id.contains_key(&g.id));
        let slot = self.free.pop().unwrap_or(self.slots.len() as u32);
        let e = entry(&g, slot);
        self.tree.insert(e);
        self.by_id.insert(g.id.clone(), slot);
        if slot as usize == self.slots.len() {
            self.slots.push(Some((g, e)));
        } else {
            self.slots[slot as usize] = Some((g, e));
        }
        slot
    }

    /// Removes geofence `id`, returning its former slot.
    pub fn remove(&mut self, id: &str) -> Option<u32> {
        let slot = self.by_id.remove(id)?;
        if let Some((_, e)) = self.slots[slot as usize].take() {
            self.tree.remove(&e);
        }
        self.free.push(slot);
        Some(slot)
    }

    /// The slots of the geofences containing the point that apply to `tenant`, ascending.
    pub fn containing(&self, lat: f64, lon: f64, tenant: &str, out: &mut Vec<u32>) {
        out.clear();
        for e in self.tree.locate_all_at_point(&[lon, lat]) {
            let g = &self.slots[e.data as usize].as_ref().expect("indexed").0;
            if g.applies_to(tenant) && g.contains(lat, lon) {
                out.push(e.data);
            }
        }
        out.sort_unstable();
    }
}

#[derive(Clone, Copy, Debug)]
struct Visit {
    slot: u32,
    entered_at: Millis,
    dwelled: bool,
}

struct VehicleFences {
    tenant: CompactString,
    lat: f64,
    lon: f64,
    /// Visits in progress, sorted by slot: exactly the applicable fences containing
    /// `(lat, lon)`.
    inside: Vec<Visit>,
}

/// What geofencing produced; drained by the caller.
#[derive(Default, Debug)]
pub struct GeoOutputs {
    /// Events, for the lake.
    pub events: Vec<GeofenceEvent>,
    /// Changes for the API view.
    pub view: Vec<(ViewUpdate, isize)>,
}

/// Membership of the vehicles of one worker (independent of timely).
pub struct Geofencing {
    index: FenceIndex,
    vehicles: HashMap<CompactString, VehicleFences, ahash::RandomState>,
    dwell_after: Millis,
    worker: usize,
    buf: Vec<u32>,
}

impl Geofencing {
    /// Starts with `fences` in force and no vehicles.
    pub fn new(fences: &[Arc<Geofence>], dwell_after: Millis, worker: usize) -> Geofencing {
        Geofencing {
            index: FenceIndex::new(fences.iter().cloned()),
            vehicles: HashMap::default(),
            dwell_after,
            worker,
            buf: Vec::new(),
        }
    }

    /// Number of geofences in force.
    pub fn geofences(&self) -> usize {
        self.index.len()
    }

    /// Number of vehicles seen.
    pub fn vehicles(&self) -> usize {
        self.vehicles.len()
    }

    fn event(
        &self,
        slot: u32,
        v: &CompactString,
        tenant: &CompactString,
        (kind, cause): (GeofenceEventKind, GeofenceCause),
        ts: Millis,
        out: &mut GeoOutputs,
    ) {
        let g = self.index.get(slot).expect("live slot");
        let e = GeofenceEvent {
            geofence_id: g.id.clone(),
            vehicle_id: v.clone(),
            tenant: tenant.clone(),
            kind,
            ts,
            cause,
        };
        out.view.push((ViewUpdate::Event(e.clone()), 1));
        out.events.push(e);
    }

    fn occupant(
        &self,
        slot: u32,
        v: &CompactString,
        entered_at: Millis,
        diff: isize,
        out: &mut GeoOutputs,
    ) {
        let g = self.index.get(slot).expect("live slot");
        out.view.push((
            ViewUpdate::Occupant {
                geofence: g.id.clone(),
                vehicle: v.clone(),
                entered_at,
            },
            diff,
        ));
    }

    /// A final fix, in `ts` order for its vehicle.
    pub fn on_fix(&mut self, p: FixPoint, out: &mut GeoOutputs) {
        let mut state = match self.vehicles.remove(&p.vehicle_id) {
            Some(s) => s,
            None => VehicleFences {
                tenant: p.tenant.clone(),
                lat: f64::NAN,
                lon: f64::NAN,
                inside: Vec::new(),
            },
        };
        // `inside` is exactly the fences containing the last position, so an unmoved
        // vehicle needs no lookup.
        let moved = state.lat != p.lat || state.lon != p.lon || state.tenant != p.tenant;
        if moved {
            let mut now = std::mem::take(&mut self.buf);
            self.index.containing(p.lat, p.lon, &p.tenant, &mut now);
            let old = std::mem::take(&mut state.inside);
            let mut next = Vec::with_capacity(now.len());
            let (mut i, mut j) = (0, 0);
            while i < old.len() || j < now.len() {
                let o = old.get(i).map(|v| v.slot);
                let n = now.get(j).copied();
                match (o, n) {
                    (Some(a), Some(b)) if a == b => {
                        next.push(old[i]);
                        i += 1;
                        j += 1;
                    }
                    (Some(a), b) if b.is_none_or(|b| a < b) => {
                        let visit = old[i];
                        self.occupant(visit.slot, &p.vehicle_id, visit.entered_at, -1, out);
                        self.event(
                            visit.slot,
                            &p.vehicle_id,
                            &p.tenant,
                            (GeofenceEventKind::Exit, GeofenceCause::Fix),
                            p.ts,
                            out,
                        );
                        i += 1;
                    }
                    (_, Some(b)) => {
                        self.occupant(b, &p.vehicle_id, p.ts, 1, out);
                        self.event(
                            b,
                            &p.vehicle_id,
                            &p.tenant,
                            (GeofenceEventKind::Enter, GeofenceCause::Fix),
                            p.ts,
                            out,
                        );
                        next.push(Visit {
                            slot: b,
                            entered_at: p.ts,
                            dwelled: false,
                        });
                        j += 1;
                    }
                    (_, None) => unreachable!("loop condition"),
                }
            }
            state.inside = next;
            self.buf = now;
            state.lat = p.lat;
            state.lon = p.lon;
            state.tenant = p.tenant.clone();
        }
        for k in 0..state.inside.len() {
            let visit = state.inside[k];
            if !visit.dwelled && p.ts.saturating_sub(visit.entered_at) >= self.dwell_after {
                state.inside[k].dwelled = true;
                self.event(
                    visit.slot,
                    &p.vehicle_id,
                    &p.tenant,
                    (GeofenceEventKind::Dwell, GeofenceCause::Fix),
                    p.ts,
                    out,
                );
            }
        }
        self.vehicles.insert(p.vehicle_id, state);
    }

    /// A geofence change taking effect at watermark `at`.
    pub fn on_change(&mut self, change: &GeofenceChange, at: Option<Millis>, out: &mut GeoOutputs) {
        let ts = at.unwrap_or(0);
        if let Some(slot) = self.index.slot_of(&change.id) {
            let mut events = Vec::new();
            for (vid, state) in self.vehicles.iter_mut() {
                if let Ok(k) = state.inside.binary_search_by_key(&slot, |v| v.slot) {
                    let visit = state.inside.remove(k);
                    events.push((vid.clone(), state.tenant.clone(), visit.entered_at));
                }
            }
            events.sort();
            for (vid, tenant, entered_at) in events {
                self.occupant(slot, &vid, entered_at, -1, out);
                self.event(
                    slot,
                    &vid,
                    &tenant,
                    (GeofenceEventKind::Exit, GeofenceCause::GeofenceRemoved),
                    ts,
                    out,
                );
            }
            self.index.remove(&change.id);
        }
        if let Some(g) = &change.geofence {
            let slot = self.index.insert(g.clone());
            let mut events = Vec::new();
            for (vid, state) in self.vehicles.iter_mut() {
                if g.applies_to(&state.tenant) && g.contains(state.lat, state.lon) {
                    let k = state.inside.partition_point(|v| v.slot < slot);
                    state.inside.insert(
                        k,
                        Visit {
                            slot,
                            entered_at: ts,
                            dwelled: false,
                        },
                    );
                    events.push((vid.clone(), state.tenant.clone()));
                }
            }
            events.sort();
            for (vid, tenant) in events {
                self.occupant(slot, &vid, ts, 1, out);
                self.event(
                    slot,
                    &vid,
                    &tenant,
                    (GeofenceEventKind::Enter, GeofenceCause::GeofenceAdded),
                    ts,
                    out,
                );
            }
        }
        out.view.push((
            ViewUpdate::Applied {
                seq: change.seq,
                at,
                worker: self.worker,
            },
            1,
        ));
    }
}

/// The streams of the geofence operator.
pub struct GeofenceStreams<'scope> {
    /// Events, final, for the lake.
    pub events: Stream<'scope, u64, Vec<GeofenceEvent>>,
    /// Occupancy, events and applied changes, for the API view.
    pub view: VecCollection<'scope, u64, ViewUpdate, isize>,
}

/// Renders geofencing over the timeline's final fixes and changes (same worker, in order).
pub fn render_geofences<'scope>(
    finals: Stream<'scope, u64, Vec<Finalized>>,
    initial: Arc<Vec<Arc<Geofence>>>,
    dwell_after: Millis,
) -> GeofenceStreams<'scope> {
    let scope = finals.scope();
    let worker = scope.index();
    let mut builder = OperatorBuilder::new("Geofences".to_owned(), scope);
    let mut input = builder.new_input(finals, Pipeline);
    let (events_out, events) = builder.new_output::<Vec<GeofenceEvent>>();
    let (view_out, view) = builder.new_output::<Vec<(ViewUpdate, u64, isize)>>();
    let mut events_out: Out<GeofenceEvent> = OutputBuilder::from(events_out);
    let mut view_out: Out<(ViewUpdate, u64, isize)> = OutputBuilder::from(view_out);
    builder.build(move |_caps| {
        let mut geo = Geofencing::new(&initial, dwell_after, worker);
        let mut out = GeoOutputs::default();
        move |_frontiers| {
            // A pipeline channel delivers one producer's batches in the order they were sent,
            // which is the order the timeline made fixes final and applied changes.
            input.for_each(|cap, data| {
                for item in data.drain(..) {
                    match item {
                        Finalized::Fix(p) => geo.on_fix(p, &mut out),
                        Finalized::Change(c, at) => geo.on_change(&c, at, &mut out),
                    }
                }
                let Some(t) = cap.least().copied() else {
                    return;
                };
                if !out.events.is_empty() {
                    events_out
                        .activate()
                        .session(&cap.delayed(&t, 0))
                        .give_container(&mut out.events);
                }
                if !out.view.is_empty() {
                    let at = cap.delayed(&t, 1);
                    let mut o = view_out.activate();
                    let mut s = o.session(&at);
                    for (d, r) in out.view.drain(..) {
                        s.give((d, t, r));
                    }
                }
            });
        }
    });
    GeofenceStreams {
        events,
        view: view.as_collection(),
    }
}

/// Where runtime geofence changes come from: the API sends, the dataflow receives.
pub type ChangeReceiver = Arc<Mutex<std::sync::mpsc::Receiver<GeofenceChange>>>;

/// Renders the runtime geofence input: worker 0 reads `changes` and emits them at the
/// frontier of `watch` (the sources' reports), broadcast to every worker; it closes when
/// that frontier closes (the sources ended or were interrupted).
pub fn render_geofence_input<'scope>(
    watch: Stream<'scope, u64, Vec<InputReport>>,
    changes: Option<ChangeReceiver>,
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
                let received: Vec<GeofenceChange> = match rx.lock() {
                    Ok(rx) => rx.try_iter().collect(),
                    Err(_) => Vec::new(),
                };
                if !received.is_empty() {
                    out.activate()
                        .session(&*held)
                        .give_iterator(received.into_iter());
                }
            }
            match frontier {
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
    stream.broadcast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetflow_types::geofence::Geofence;
    use serde_json::json;

    fn circle(id: &str, lat: f64, lon: f64, r: f64, tenant: Option<&str>) -> Arc<Geofence> {
        let mut props = json!({"radius_m": r});
        if let Some(t) = tenant {
            props["tenant"] = json!(t);
        }
        Arc::new(
            Geofence::from_feature(
                &json!({"type": "Feature", "id": id, "properties": props,
                    "geometry": {"type": "Point", "coordinates": [lon, lat]}}),
                None,
                None,
                "#0",
            )
            .unwrap(),
        )
    }

    fn fix(v: &str, ts: Millis, lat: f64, lon: f64) -> FixPoint {
        FixPoint {
            vehicle_id: v.into(),
            tenant: "acme".into(),
            ts,
            lat,
            lon,
        }
    }

    fn kinds(out: &GeoOutputs) -> Vec<(String, &'static str, Millis, &'static str)> {
        out.events
            .iter()
            .map(|e| {
                (
                    e.geofence_id.to_string(),
                    e.kind.as_str(),
                    e.ts,
                    e.cause.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn the_index_finds_only_containing_fences() {
        let fences: Vec<_> = (0..1000)
            .map(|i| circle(&format!("c{i}"), 41.0 + i as f64 * 0.01, -8.6, 100.0, None))
            .collect();
        let mut idx = FenceIndex::new(fences);
        let mut out = Vec::new();
        idx.containing(41.5, -8.6, "acme", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(idx.get(out[0]).unwrap().id, "c50");
        idx.remove("c50");
        idx.containing(41.5, -8.6, "acme", &mut out);
        assert!(out.is_empty());
        idx.insert(circle("again", 41.5, -8.6, 10.0, Some("globex")));
        idx.containing(41.5, -8.6, "acme", &mut out);
        assert!(out.is_empty(), "tenant fence");
        idx.containing(41.5, -8.6, "globex", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(idx.len(), 1000);
    }

    #[test]
    fn transitions_dwell_and_changes() {
        let a = circle("a", 0.0, 0.0, 1000.0, None);
        let mut g = Geofencing::new(std::slice::from_ref(&a), 60_000, 0);
        let mut out = GeoOutputs::default();
        g.on_fix(fix("v", 0, 0.0, 0.0), &mut out);
        g.on_fix(fix("v", 30_000, 0.0, 0.001), &mut out);
        g.on_fix(fix("v", 60_000, 0.0, 0.002), &mut out);
        g.on_fix(fix("v", 70_000, 0.0, 0.002), &mut out); // unmoved: no second dwell
        g.on_fix(fix("v", 80_000, 1.0, 0.0), &mut out);
        g.on_fix(fix("v", 90_000, 0.0, 0.0), &mut out);
        assert_eq!(
            kinds(&out),
            [
                ("a".into(), "enter", 0, "fix"),
                ("a".into(), "dwell", 60_000, "fix"),
                ("a".into(), "exit", 80_000, "fix"),
                ("a".into(), "enter", 90_000, "fix"),
            ]
        );
        out.events.clear();
        // Replace `a` by a fence that still holds the vehicle, add `b` elsewhere, remove `a`.
        let change = |seq, id: &str, g: Option<Arc<Geofence>>| GeofenceChange {
            seq,
            id: id.into(),
            geofence: g,
        };
        g.on_change(
            &change(1, "a", Some(circle("a", 0.0, 0.0, 500.0, None))),
            Some(100_000),
            &mut out,
        );
        g.on_change(
            &change(2, "b", Some(circle("b", 5.0, 5.0, 10.0, None))),
            Some(100_000),
            &mut out,
        );
        g.on_change(&change(3, "a", None), Some(110_000), &mut out);
        g.on_change(&change(4, "nope", None), Some(110_000), &mut out);
        assert_eq!(
            kinds(&out),
            [
                ("a".into(), "exit", 100_000, "geofence_removed"),
                ("a".into(), "enter", 100_000, "geofence_added"),
                ("a".into(), "exit", 110_000, "geofence_removed"),
            ]
        );
        // Occupancy nets out to nothing; every change is acknowledged.
        let mut occ: HashMap<(CompactString, Millis), isize> = HashMap::new();
        let mut applied = Vec::new();
        for (u, r) in &out.view {
            match u {
                ViewUpdate::Occupant {
                    geofence,
                    entered_at,
                    ..
                } => *occ.entry((geofence.clone(), *entered_at)).or_default() += r,
                ViewUpdate::Applied { seq, .. } => applied.push(*seq),
                ViewUpdate::Event(_) => {}
            }
        }
        assert!(occ.values().all(|r| *r == 0), "{occ:?}");
        assert_eq!(applied, [1, 2, 3, 4]);
        assert_eq!(g.geofences(), 1);
    }
}
