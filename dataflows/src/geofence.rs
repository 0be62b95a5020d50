//! Geofence membership in event time (semantics §5).
//!
//! ```text
//!   API changes ──► "GeofenceInput" (worker 0) ──Broadcast──► "VehicleTimeline"
//!                                                               │ final fixes in ts order per vehicle,
//!                                                               │ changes interleaved at the watermark
//!                                                               ▼
//!                                                         "Geofences" ─┬─► events (lake, final)
//!                                                                      └─► view: occupancy ±1, events,
//!                                                                          applied changes, as_of (API)
//! ```
//!
//! Every geofence is in one [`FenceIndex`] (a cell covering for small geofences, an R-tree
//! for large ones), shared by the workers until a runtime change, so a fix costs one cell
//! scan plus an exact test of the few geofences whose box holds it, however many geofences
//! exist elsewhere. Per vehicle the operator keeps the position of its latest final fix
//! and the visits in progress (geofence, `entered_at`, dwell emitted): state grows with
//! vehicles times the geofences they are in, never with events.
//!
//! Occupancy is maintained incrementally: each enter is a +1 and each exit a -1 of
//! `(geofence, vehicle, entered_at)`, handed in order to the worker's shard of the API's
//! shared view after every batch (so no consolidation is needed), together with a mark of
//! the watermark through which the worker's fixes have been processed (`as_of`).
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

use fleetflow_types::checkpoint::Hub;
use fleetflow_types::fix::Fix;
use fleetflow_types::geofence::{circle_contains_near, polygons_contain, Geofence, Shape};
use fleetflow_types::records::{
    GeofenceCause, GeofenceChange, GeofenceEvent, GeofenceEventKind, InputReport, OccupancyChange,
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
}

impl FixPoint {
    /// The position of a fix of the vehicle in `slot`.
    pub fn of(f: &Fix, slot: u32) -> FixPoint {
        FixPoint {
            slot,
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
    /// Every fix below this watermark has been handed over (the `as_of` of the results).
    Watermark(Millis),
}

/// One change to the API's geofence view, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ViewUpdate {
    /// A vehicle entered or left a geofence.
    Occupant(OccupancyChange),
    /// Results are complete through this watermark.
    AsOf(Millis),
    /// This worker applied change `seq` at watermark `at`.
    Applied {
        /// Change sequence number.
        seq: u64,
        /// The watermark it took effect at.
        at: Option<Millis>,
    },
}

type Out<D> = OutputBuilder<u64, CapacityContainerBuilder<Vec<D>>>;

type Entry = GeomWithData<Rectangle<[f64; 2]>, u32>;

/// Grid cell size in degrees (about 220 m of latitude).
const CELL_DEG: f64 = 0.002;
/// Geofences whose box spans more grid cells than this live in the R-tree instead.
const MAX_CELLS: i64 = 256;

/// The geofences listed in one grid cell, as two parallel arrays: the boxes alone (16
/// bytes each, scanned in order for every lookup) and what a lookup needs for the few
/// whose box holds the point (tenant, a circle's parameters, id), so that a scan touches
/// little memory and only polygons that pass the box test are followed to their rings.
#[derive(Clone, Debug, Default)]
struct CellList {
    /// Boxes relative to the cell's corner, in single precision, widened by [`BOX_SLACK`]
    /// so that rounding never excludes a point (a pre-test only: the exact test follows).
    boxes: Vec<[f32; 4]>,
    entries: Vec<CellEntry>,
}

/// The exact test of a cell entry, with what it needs at hand.
#[derive(Clone, Debug)]
enum Exact {
    /// `[lat, lon, radius_m]`.
    Circle([f64; 3]),
    /// One polygon without holes (the usual case): its ring, one pointer away.
    Ring(Arc<[geo::Coord<f64>]>),
    /// Several polygons or holes: the slot's entry in `FenceIndex::polygons`.
    Polygons,
}

/// Whether the closed, simple `ring` (first position = last) holds `c`, its boundary
/// included: an even-odd crossing count along the ray to the east, with every orientation
/// decided by `geo`'s robust kernel, so that points on an edge are found exactly. For a
/// valid (simple) ring this is the same answer as `geo`'s coordinate position, which the
/// tests check; it exists so that the ring can live in a flat slice next to the index
/// entry instead of behind a `Polygon`.
fn ring_holds(ring: &[geo::Coord<f64>], c: geo::Coord<f64>) -> bool {
    use geo::{GeoNum, Kernel, Orientation};
    let orient = <f64 as GeoNum>::Ker::orient2d;
    let mut inside = false;
    for w in ring.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (lo_y, hi_y) = if a.y <= b.y { (a.y, b.y) } else { (b.y, a.y) };
        if c.y < lo_y || c.y > hi_y {
            continue;
        }
        let (lo_x, hi_x) = if a.x <= b.x { (a.x, b.x) } else { (b.x, a.x) };
        if c.x > hi_x {
            // Entirely west of the point: no crossing to the east, not on the edge.
            continue;
        }
        let o = orient(a, b, c);
        if o == Orientation::Collinear && c.x >= lo_x && c.x <= hi_x {
            return true;
        }
        // The edge crosses the ray when it straddles the point's latitude (half-open, so a
        // vertex on the ray counts once) and the point is on its west side.
        if (a.y > c.y) != (b.y > c.y) {
            let west = if b.y > a.y {
                o == Orientation::CounterClockwise
            } else {
                o == Orientation::Clockwise
            };
            if west {
                inside = !inside;
            }
        }
    }
    inside
}

/// One geofence of a [`CellList`].
#[derive(Clone, Debug)]
struct CellEntry {
    /// How to test a point whose box test passed.
    exact: Exact,
    /// Interned tenant, 0 for geofences of every tenant.
    tenant: u32,
    slot: u32,
    /// The id, at hand when a vehicle enters (72 bytes in all).
    id: CompactString,
}

type Cell = (i32, i32);

/// A geofence's polygons, the usual single one held inline (one pointer less to follow).
#[derive(Clone, Debug)]
enum Rings {
    None,
    One(geo::Polygon<f64>),
    Many(Vec<geo::Polygon<f64>>),
}

impl Rings {
    fn of(polygons: &[geo::Polygon<f64>]) -> Rings {
        match polygons {
            [] => Rings::None,
            [one] => Rings::One(one.clone()),
            many => Rings::Many(many.to_vec()),
        }
    }

    fn as_slice(&self) -> &[geo::Polygon<f64>] {
        match self {
            Rings::None => &[],
            Rings::One(p) => std::slice::from_ref(p),
            Rings::Many(v) => v,
        }
    }
}

/// Widening of the single-precision cell boxes, degrees (about 1 cm; far above the rounding
/// error of offsets below a degree).
const BOX_SLACK: f32 = 1e-7;

/// The south-west corner of a cell.
fn cell_origin((x, y): Cell) -> (f64, f64) {
    (x as f64 * CELL_DEG, y as f64 * CELL_DEG)
}

/// `b` relative to the corner of `cell`, widened.
fn relative_box(b: &fleetflow_types::geofence::BBox, cell: Cell) -> [f32; 4] {
    let (ox, oy) = cell_origin(cell);
    [
        (b[0] - ox) as f32 - BOX_SLACK,
        (b[1] - oy) as f32 - BOX_SLACK,
        (b[2] - ox) as f32 + BOX_SLACK,
        (b[3] - oy) as f32 + BOX_SLACK,
    ]
}

fn cell_of(lon: f64, lat: f64) -> Cell {
    (
        (lon / CELL_DEG).floor() as i32,
        (lat / CELL_DEG).floor() as i32,
    )
}

/// Where a geofence is indexed.
#[derive(Clone, Copy, Debug)]
enum Placement {
    /// In every grid cell its box touches (`min` to `max` inclusive).
    Grid { min: Cell, max: Cell },
    /// In the R-tree of large geofences.
    Tree(Entry),
}

#[derive(Clone)]
struct Slot {
    fence: Arc<Geofence>,
    bbox: fleetflow_types::geofence::BBox,
    placement: Placement,
}

/// Every geofence of the job, indexed by a cell covering and an R-tree.
///
/// Cloning copies the whole index (a runtime change on a shared index does that once per
/// worker).
///
/// Small geofences (the usual case: depots, stops, sites) are listed in each cell of a
/// fixed lon/lat grid that their bounding box touches, so a lookup is one hash probe and a
/// scan of the few geofences near the point. Geofences whose box spans more than
/// `MAX_CELLS` cells (districts, regions) go into an R-tree of bounding boxes instead, so
/// that no geofence costs more than a bounded number of cells. Either way, a fix costs
/// nothing for geofences that are not near it.
#[derive(Default, Clone)]
pub struct FenceIndex {
    slots: Vec<Option<Slot>>,
    by_id: HashMap<CompactString, u32>,
    free: Vec<u32>,
    grid: HashMap<Cell, CellList, ahash::RandomState>,
    tree: RTree<Entry>,
    /// Ids by slot, apart from the geofences for locality.
    ids: Vec<CompactString>,
    /// Polygons by slot (empty for circles), apart from the geofences for locality.
    polygons: Vec<Rings>,
    /// Tenant -> code (from 1).
    tenants: HashMap<CompactString, u32, ahash::RandomState>,
}

impl FenceIndex {
    /// The geofences in force, by slot.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Geofence>> {
        self.slots.iter().flatten().map(|s| &s.fence)
    }

    /// An index over `fences` (the R-tree bulk loaded).
    pub fn new(fences: impl IntoIterator<Item = Arc<Geofence>>) -> FenceIndex {
        let mut idx = FenceIndex::default();
        let mut large = Vec::new();
        for g in fences {
            if idx.by_id.contains_key(&g.id) {
                continue; // ids are unique once loaded; keep the first
            }
            if let (_, Placement::Tree(e)) = idx.place(g) {
                large.push(e);
            }
        }
        idx.tree = RTree::bulk_load(large);
        idx
    }

    /// Puts `g` in a slot and in the grid (not in the tree: the caller does).
    fn place(&mut self, g: Arc<Geofence>) -> (u32, Placement) {
        let slot = self.free.pop().unwrap_or(self.slots.len() as u32);
        let b = g.bbox();
        let next_code = self.tenants.len() as u32 + 1;
        let tenant = match &g.tenant {
            None => 0,
            Some(t) => *self.tenants.entry(t.clone()).or_insert(next_code),
        };
        let (exact, polygons) = match &g.shape {
            Shape::Circle { lat, lon, radius_m } => {
                (Exact::Circle([*lat, *lon, *radius_m]), Rings::None)
            }
            Shape::Polygons(mp) => match mp.0.as_slice() {
                [one] if one.interiors().is_empty() => {
                    (Exact::Ring(one.exterior().0.as_slice().into()), Rings::None)
                }
                many => (Exact::Polygons, Rings::of(many)),
            },
        };
        if self.polygons.len() <= slot as usize {
            self.polygons.resize_with(slot as usize + 1, || Rings::None);
            self.ids
                .resize_with(slot as usize + 1, CompactString::default);
        }
        self.polygons[slot as usize] = polygons;
        self.ids[slot as usize] = g.id.clone();
        let (min, max) = (cell_of(b[0], b[1]), cell_of(b[2], b[3]));
        let cells = (max.0 as i64 - min.0 as i64 + 1) * (max.1 as i64 - min.1 as i64 + 1);
        let placement = if cells <= MAX_CELLS {
            for x in min.0..=max.0 {
                for y in min.1..=max.1 {
                    let list = self.grid.entry((x, y)).or_default();
                    list.boxes.push(relative_box(&b, (x, y)));
                    list.entries.push(CellEntry {
                        exact: exact.clone(),
                        tenant,
                        slot,
                        id: g.id.clone(),
                    });
                }
            }
            Placement::Grid { min, max }
        } else {
            Placement::Tree(GeomWithData::new(
                Rectangle::from_corners([b[0], b[1]], [b[2], b[3]]),
                slot,
            ))
        };
        self.by_id.insert(g.id.clone(), slot);
        let s = Some(Slot {
            fence: g,
            bbox: b,
            placement,
        });
        if slot as usize == self.slots.len() {
            self.slots.push(s);
        } else {
            self.slots[slot as usize] = s;
        }
        (slot, placement)
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
            .and_then(|s| s.as_ref().map(|s| &s.fence))
    }

    /// The slot of geofence `id`.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// Adds a geofence (its id must not be present) and returns its slot.
    pub fn insert(&mut self, g: Arc<Geofence>) -> u32 {
        debug_assert!(!self.by_id.contains_key(&g.id));
        let (slot, placement) = self.place(g);
        if let Placement::Tree(e) = placement {
            self.tree.insert(e);
        }
        slot
    }

    /// Removes geofence `id`, returning its former slot.
    pub fn remove(&mut self, id: &str) -> Option<u32> {
        let slot = self.by_id.remove(id)?;
        if let Some(s) = self.slots[slot as usize].take() {
            match s.placement {
                Placement::Tree(e) => {
                    self.tree.remove(&e);
                }
                Placement::Grid { min, max } => {
                    for x in min.0..=max.0 {
                        for y in min.1..=max.1 {
                            if let Some(list) = self.grid.get_mut(&(x, y)) {
                                if let Some(k) = list.entries.iter().position(|e| e.slot == slot) {
                                    list.entries.swap_remove(k);
                                    list.boxes.swap_remove(k);
                                }
                                if list.entries.is_empty() {
                                    self.grid.remove(&(x, y));
                                }
                            }
                        }
                    }
                }
            }
        }
        self.polygons[slot as usize] = Rings::None;
        self.free.push(slot);
        Some(slot)
    }

    /// The slots and ids of the geofences containing the point that apply to `tenant`, by
    /// slot.
    pub fn containing(
        &self,
        lat: f64,
        lon: f64,
        tenant: &str,
        out: &mut Vec<(u32, CompactString)>,
    ) {
        out.clear();
        let in_box = |b: &fleetflow_types::geofence::BBox| {
            lon >= b[0] && lon <= b[2] && lat >= b[1] && lat <= b[3]
        };
        let test = |slot: u32, out: &mut Vec<(u32, CompactString)>| {
            let s = self.slots[slot as usize].as_ref().expect("indexed");
            if in_box(&s.bbox) && s.fence.applies_to(tenant) && s.fence.contains(lat, lon) {
                out.push((slot, self.ids[slot as usize].clone()));
            }
        };
        let cell = cell_of(lon, lat);
        if let Some(cands) = self.grid.get(&cell) {
            // Tenants no geofence names match only geofences of every tenant.
            let code = self.tenants.get(tenant).copied().unwrap_or(u32::MAX);
            let cos_lat = lat.to_radians().cos();
            let (ox, oy) = cell_origin(cell);
            let (x, y) = ((lon - ox) as f32, (lat - oy) as f32);
            for (k, b) in cands.boxes.iter().enumerate() {
                if x < b[0] || x > b[2] || y < b[1] || y > b[3] {
                    continue;
                }
                let e = &cands.entries[k];
                if e.tenant != 0 && e.tenant != code {
                    continue;
                }
                let inside = match &e.exact {
                    Exact::Circle([clat, clon, r]) => {
                        circle_contains_near(*clat, *clon, *r, lat, lon, cos_lat)
                    }
                    Exact::Ring(ring) => ring_holds(ring, geo::Coord { x: lon, y: lat }),
                    Exact::Polygons => {
                        polygons_contain(self.polygons[e.slot as usize].as_slice(), lat, lon)
                    }
                };
                if inside {
                    out.push((e.slot, e.id.clone()));
                }
            }
        }
        if self.tree.size() > 0 {
            for e in self.tree.locate_all_at_point(&[lon, lat]) {
                test(e.data, out);
            }
        }
        out.sort_unstable_by_key(|m| m.0);
    }
}

#[derive(Clone, Debug)]
struct Visit {
    slot: u32,
    /// The geofence's id, kept here so that exits and dwells need not look it up.
    id: CompactString,
    entered_at: Millis,
    dwelled: bool,
}

struct VehicleFences {
    id: CompactString,
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
    /// Events, for the lake and the API's recent events.
    pub events: Vec<GeofenceEvent>,
    /// Occupancy and applied changes for the API view.
    pub view: Vec<(ViewUpdate, isize)>,
}

/// Membership of the vehicles of one worker (independent of timely).
pub struct Geofencing {
    /// Shared by the workers until one applies a change (then copied on write), so that
    /// a large set of geofences is built and cached once.
    index: Arc<FenceIndex>,
    /// By the timeline's vehicle slot.
    vehicles: Vec<Option<VehicleFences>>,
    dwell_after: Millis,
    buf: Vec<(u32, CompactString)>,
    spare: Vec<Visit>,
    /// The geofences in force as checkpoints record them, kept until a change (encoding
    /// many geofences at every checkpoint would repeat the same work).
    fences_json: Option<Vec<String>>,
}

/// One vehicle's geofencing state in a checkpoint.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GeoVehicleSnapshot {
    /// The vehicle.
    pub id: CompactString,
    tenant: CompactString,
    lat: f64,
    lon: f64,
    /// Visits in progress: geofence id, `entered_at`, whether dwell fired.
    inside: Vec<(CompactString, Millis, bool)>,
}

/// The geofencing operator's state at a checkpoint boundary.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct GeoSnapshot {
    /// The geofences in force, as JSON (on worker 0 only: every worker has the same).
    /// JSON because their properties are free-form.
    pub fences: Vec<String>,
    /// The worker's vehicles.
    pub vehicles: Vec<GeoVehicleSnapshot>,
}

impl GeoSnapshot {
    /// The geofences in force.
    pub fn geofences(&self) -> Result<Vec<Arc<Geofence>>, serde_json::Error> {
        self.fences
            .iter()
            .map(|f| serde_json::from_str(f).map(Arc::new))
            .collect()
    }
}

/// Restored vehicles at their timeline slots.
pub type GeoRestore = Vec<(u32, GeoVehicleSnapshot)>;

/// Checkpoint participant name of the geofencing operator.
pub const SNAPSHOT_OP: &str = "geofences";

impl Geofencing {
    /// The state for a checkpoint; `fences` includes the geofences in force.
    pub fn snapshot(&mut self, fences: bool) -> GeoSnapshot {
        let index = &self.index;
        GeoSnapshot {
            fences: if fences {
                self.fences_json
                    .get_or_insert_with(|| {
                        index
                            .iter()
                            .map(|g| serde_json::to_string(g).expect("geofences serialize"))
                            .collect()
                    })
                    .clone()
            } else {
                Vec::new()
            },
            vehicles: self
                .vehicles
                .iter()
                .flatten()
                .map(|v| GeoVehicleSnapshot {
                    id: v.id.clone(),
                    tenant: v.tenant.clone(),
                    lat: v.lat,
                    lon: v.lon,
                    inside: v
                        .inside
                        .iter()
                        .map(|i| (i.id.clone(), i.entered_at, i.dwelled))
                        .collect(),
                })
                .collect(),
        }
    }

    /// Restores vehicles at the timeline's slots (into a fresh instance whose index holds
    /// the restored geofences) and reports every visit to the view as an occupant.
    pub fn restore(&mut self, vehicles: Vec<(u32, GeoVehicleSnapshot)>, out: &mut GeoOutputs) {
        for (slot, snap) in vehicles {
            let s = slot as usize;
            if self.vehicles.len() <= s {
                self.vehicles.resize_with(s + 1, || None);
            }
            let mut inside: Vec<Visit> = snap
                .inside
                .into_iter()
                .filter_map(|(id, entered_at, dwelled)| {
                    let fence = self.index.slot_of(&id)?;
                    Some(Visit {
                        slot: fence,
                        id,
                        entered_at,
                        dwelled,
                    })
                })
                .collect();
            inside.sort_unstable_by_key(|v| v.slot);
            for v in &inside {
                self.occupant((v.slot, &v.id), (slot, &snap.id), v.entered_at, 1, out);
            }
            self.vehicles[s] = Some(VehicleFences {
                id: snap.id,
                tenant: snap.tenant,
                lat: snap.lat,
                lon: snap.lon,
                inside,
            });
        }
    }

    /// Starts with `fences` in force and no vehicles.
    pub fn new(index: Arc<FenceIndex>, dwell_after: Millis) -> Geofencing {
        Geofencing {
            index,
            vehicles: Vec::new(),
            dwell_after,
            buf: Vec::new(),
            spare: Vec::new(),
            fences_json: None,
        }
    }

    /// Number of geofences in force.
    pub fn geofences(&self) -> usize {
        self.index.len()
    }

    /// Number of vehicles seen.
    pub fn vehicles(&self) -> usize {
        self.vehicles.iter().flatten().count()
    }

    fn event(
        &self,
        id: &CompactString,
        v: &CompactString,
        tenant: &CompactString,
        (kind, cause): (GeofenceEventKind, GeofenceCause),
        ts: Millis,
        out: &mut GeoOutputs,
    ) {
        let e = GeofenceEvent {
            geofence_id: id.clone(),
            vehicle_id: v.clone(),
            tenant: tenant.clone(),
            kind,
            ts,
            cause,
        };
        out.events.push(e);
    }

    fn occupant(
        &self,
        (fence_slot, id): (u32, &CompactString),
        (vehicle_slot, v): (u32, &CompactString),
        entered_at: Millis,
        diff: i8,
        out: &mut GeoOutputs,
    ) {
        out.view.push((
            ViewUpdate::Occupant(OccupancyChange {
                fence_slot,
                geofence: id.clone(),
                vehicle_slot,
                vehicle: v.clone(),
                entered_at,
                diff,
            }),
            diff as isize,
        ));
    }

    /// A final fix, in `ts` order for its vehicle.
    pub fn on_fix(&mut self, p: FixPoint, out: &mut GeoOutputs) {
        // The states are taken out for the call so that one of them and `self` can be
        // borrowed together.
        let mut vehicles = std::mem::take(&mut self.vehicles);
        let slot = p.slot as usize;
        if vehicles.len() <= slot {
            vehicles.resize_with(slot + 1, || None);
        }
        let state = vehicles[slot].get_or_insert_with(|| VehicleFences {
            id: p.vehicle_id.clone(),
            tenant: p.tenant.clone(),
            lat: f64::NAN,
            lon: f64::NAN,
            inside: Vec::new(),
        });
        debug_assert_eq!(state.id, p.vehicle_id, "slots are stable");
        if self.index.is_empty() && state.inside.is_empty() {
            // No geofence anywhere: only the position matters (for later additions).
            state.lat = p.lat;
            state.lon = p.lon;
            state.tenant = p.tenant;
            self.vehicles = vehicles;
            return;
        }
        // `inside` is exactly the fences containing the last position, so an unmoved
        // vehicle needs no lookup.
        let moved = state.lat != p.lat || state.lon != p.lon || state.tenant != p.tenant;
        if moved {
            let mut now = std::mem::take(&mut self.buf);
            self.index.containing(p.lat, p.lon, &p.tenant, &mut now);
            // The visits are rebuilt into a spare buffer that swaps with the old one, so a
            // moving vehicle costs no allocation.
            let mut next = std::mem::take(&mut self.spare);
            next.clear();
            let old = std::mem::take(&mut state.inside);
            let (mut i, mut j) = (0, 0);
            while i < old.len() || j < now.len() {
                let o = old.get(i).map(|v| v.slot);
                let n = now.get(j).map(|m| m.0);
                match (o, n) {
                    (Some(a), Some(b)) if a == b => {
                        next.push(old[i].clone());
                        i += 1;
                        j += 1;
                    }
                    (Some(a), b) if b.is_none_or(|b| a < b) => {
                        let visit = &old[i];
                        self.occupant(
                            (visit.slot, &visit.id),
                            (p.slot, &p.vehicle_id),
                            visit.entered_at,
                            -1,
                            out,
                        );
                        self.event(
                            &visit.id,
                            &p.vehicle_id,
                            &p.tenant,
                            (GeofenceEventKind::Exit, GeofenceCause::Fix),
                            p.ts,
                            out,
                        );
                        i += 1;
                    }
                    (_, Some(b)) => {
                        let id = now[j].1.clone();
                        self.occupant((b, &id), (p.slot, &p.vehicle_id), p.ts, 1, out);
                        self.event(
                            &id,
                            &p.vehicle_id,
                            &p.tenant,
                            (GeofenceEventKind::Enter, GeofenceCause::Fix),
                            p.ts,
                            out,
                        );
                        next.push(Visit {
                            slot: b,
                            id,
                            entered_at: p.ts,
                            dwelled: false,
                        });
                        j += 1;
                    }
                    (_, None) => unreachable!("loop condition"),
                }
            }
            state.inside = next;
            self.spare = old;
            self.buf = now;
            state.lat = p.lat;
            state.lon = p.lon;
            state.tenant = p.tenant.clone();
        }
        for visit in state.inside.iter_mut() {
            if !visit.dwelled && p.ts.saturating_sub(visit.entered_at) >= self.dwell_after {
                visit.dwelled = true;
                self.event(
                    &visit.id,
                    &p.vehicle_id,
                    &p.tenant,
                    (GeofenceEventKind::Dwell, GeofenceCause::Fix),
                    p.ts,
                    out,
                );
            }
        }
        self.vehicles = vehicles;
    }

    /// A geofence change taking effect at watermark `at`.
    pub fn on_change(&mut self, change: &GeofenceChange, at: Option<Millis>, out: &mut GeoOutputs) {
        let ts = at.unwrap_or(0);
        if let Some(slot) = self.index.slot_of(&change.id) {
            let mut events = Vec::new();
            for (vslot, state) in self.vehicles.iter_mut().enumerate() {
                let Some(state) = state else { continue };
                if let Ok(k) = state.inside.binary_search_by_key(&slot, |v| v.slot) {
                    let visit = state.inside.remove(k);
                    events.push((
                        state.id.clone(),
                        vslot as u32,
                        state.tenant.clone(),
                        visit.entered_at,
                    ));
                }
            }
            events.sort();
            for (vid, vslot, tenant, entered_at) in events {
                self.occupant((slot, &change.id), (vslot, &vid), entered_at, -1, out);
                self.event(
                    &change.id,
                    &vid,
                    &tenant,
                    (GeofenceEventKind::Exit, GeofenceCause::GeofenceRemoved),
                    ts,
                    out,
                );
            }
            Arc::make_mut(&mut self.index).remove(&change.id);
            self.fences_json = None;
        }
        if let Some(g) = &change.geofence {
            let slot = Arc::make_mut(&mut self.index).insert(g.clone());
            self.fences_json = None;
            let mut events = Vec::new();
            for (vslot, state) in self.vehicles.iter_mut().enumerate() {
                let Some(state) = state else { continue };
                if g.applies_to(&state.tenant) && g.contains(state.lat, state.lon) {
                    let k = state.inside.partition_point(|v| v.slot < slot);
                    state.inside.insert(
                        k,
                        Visit {
                            slot,
                            id: g.id.clone(),
                            entered_at: ts,
                            dwelled: false,
                        },
                    );
                    events.push((state.id.clone(), vslot as u32, state.tenant.clone()));
                }
            }
            events.sort();
            for (vid, vslot, tenant) in events {
                self.occupant((slot, &g.id), (vslot, &vid), ts, 1, out);
                self.event(
                    &g.id,
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
            },
            1,
        ));
        if let Some(w) = at {
            // Every fix below `w` was handed over before the change: this worker's results
            // are complete through it (so an answer to the change's request is too).
            out.view.push((ViewUpdate::AsOf(w), 1));
        }
    }
}

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

/// Renders geofencing over the timeline's final fixes and changes (same worker, in order)
/// and returns the events, for the lake, and the view batches (empty unless `view` is
/// [`ViewSink::Stream`]).
///
/// The view receives this worker's occupancy and applied changes after each batch, in the
/// order they happened (an enter followed by an exit of the same visit arrives in that
/// order, so applying them in turn needs no consolidation), and the batch's events.
pub fn render_geofences<'scope, F>(
    finals: Stream<'scope, u64, Vec<Finalized>>,
    index: Arc<FenceIndex>,
    dwell_after: Millis,
    checkpoints: Option<(Arc<Hub>, GeoRestore)>,
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
    let mut input = builder.new_input(finals, Pipeline);
    let (events_out, events) = builder.new_output::<Vec<GeofenceEvent>>();
    let mut events_out: Out<GeofenceEvent> = OutputBuilder::from(events_out);
    let (batches_out, batches) = builder.new_output::<Vec<ViewBatch>>();
    let mut batches_out: Out<ViewBatch> = OutputBuilder::from(batches_out);
    let worker = scope.index();
    builder.build(move |caps| {
        let mut geo = Geofencing::new(index, dwell_after);
        let mut out = GeoOutputs::default();
        let (hub, restored) = checkpoints.unzip();
        let mut cuts = hub.as_ref().map(|h| h.cuts());
        let mut view = match view {
            ViewSink::Local(f) => Some(f),
            ViewSink::Stream => None,
        };
        // The restored occupancy, emitted at the first activation (at the initial time).
        let mut initial: Option<(timely::dataflow::operators::Capability<u64>, ViewBatch)> = None;
        if let Some(vehicles) = restored.filter(|v| !v.is_empty()) {
            geo.restore(vehicles, &mut out);
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
        let snapshot = move |geo: &mut Geofencing, range: Option<(u64, u64)>| {
            if let (Some(hub), Some((lo, hi))) = (&hub, range) {
                let blob = postcard::to_stdvec(&geo.snapshot(worker == 0))
                    .expect("geofencing state serializes");
                hub.offer(SNAPSHOT_OP, worker, lo, hi, blob);
            }
        };
        move |frontiers| {
            if let Some((cap, batch)) = initial.take() {
                batches_out.activate().session(&cap).give(batch);
            }
            // A pipeline channel delivers one producer's batches in the order they were sent,
            // which is the order the timeline made fixes final and applied changes (and
            // their times never decrease), so checkpoint cuts fall between batches.
            input.for_each(|cap, data| {
                if let Some(t) = cap.least() {
                    snapshot(&mut geo, cuts.as_mut().and_then(|c| c.before(*t)));
                }
                for item in data.drain(..) {
                    match item {
                        Finalized::Fix(p) => geo.on_fix(p, &mut out),
                        Finalized::Change(c, at) => geo.on_change(&c, at, &mut out),
                        Finalized::Watermark(w) => out.view.push((ViewUpdate::AsOf(w), 1)),
                    }
                }
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
            snapshot(&mut geo, cuts.as_mut().and_then(|c| c.frontier(f)));
        }
    });
    (events, batches)
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
            slot: 0,
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
    fn the_flat_ring_test_agrees_with_geo() {
        use geo::coordinate_position::{CoordPos, CoordinatePosition};
        use geo::{Coord, LineString, Polygon};
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(20_000));
        runner
            .run(
                &(
                    3usize..12,
                    proptest::collection::vec((0.2f64..1.0, 0.0f64..1.0), 12),
                    (-1.2f64..1.2, -1.2f64..1.2),
                    0usize..12,
                    0u8..3,
                ),
                |(n, radii, (px, py), k, which)| {
                    // A star polygon around the origin: simple by construction.
                    let mut ring: Vec<Coord<f64>> = (0..n)
                        .map(|i| {
                            let a =
                                std::f64::consts::TAU * (i as f64 + radii[i].1 * 0.9) / n as f64;
                            // Rounded so that some edges are axis-aligned or share coordinates.
                            let r = (radii[i].0 * 8.0).round() / 8.0;
                            Coord {
                                x: (r * a.cos() * 8.0).round() / 8.0,
                                y: (r * a.sin() * 8.0).round() / 8.0,
                            }
                        })
                        .collect();
                    ring.dedup();
                    ring.push(ring[0]);
                    let poly = Polygon::new(LineString(ring.clone()), vec![]);
                    prop_assume!(ring.len() >= 4 && geo::Validation::is_valid(&poly));
                    // Random points, vertices, and edge midpoints (exact on axis-aligned
                    // edges with these coordinates).
                    let c = match which {
                        0 => Coord { x: px, y: py },
                        1 => ring[k % (ring.len() - 1)],
                        _ => {
                            let (a, b) =
                                (ring[k % (ring.len() - 1)], ring[k % (ring.len() - 1) + 1]);
                            Coord {
                                x: (a.x + b.x) / 2.0,
                                y: (a.y + b.y) / 2.0,
                            }
                        }
                    };
                    prop_assert_eq!(
                        ring_holds(&ring, c),
                        poly.coordinate_position(&c) != CoordPos::Outside,
                        "point {:?} ring {:?}",
                        c,
                        ring
                    );
                    Ok(())
                },
            )
            .unwrap();
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
        assert_eq!(idx.get(out[0].0).unwrap().id, "c50");
        assert_eq!(out[0].1, "c50");
        idx.remove("c50");
        idx.containing(41.5, -8.6, "acme", &mut out);
        assert!(out.is_empty());
        idx.insert(circle("again", 41.5, -8.6, 10.0, Some("globex")));
        // A large geofence goes to the R-tree and is found like the small ones.
        idx.insert(circle("region", 41.4, -8.6, 30_000.0, None));
        idx.containing(41.5, -8.6, "acme", &mut out);
        assert_eq!(
            out.iter().map(|m| m.1.as_str()).collect::<Vec<_>>(),
            ["region"]
        );
        assert_eq!(idx.tree.size(), 1);
        idx.remove("region");
        idx.containing(41.5, -8.6, "acme", &mut out);
        assert!(out.is_empty(), "tenant fence");
        idx.containing(41.5, -8.6, "globex", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(idx.len(), 1000);
    }

    #[test]
    fn polygons_sharing_cells_survive_each_others_removal() {
        let square = |id: &str, d: f64| {
            let ring = json!([
                [-8.6 - d, 41.5 - d],
                [-8.6 + d, 41.5 - d],
                [-8.6 + d, 41.5 + d],
                [-8.6 - d, 41.5 + d],
                [-8.6 - d, 41.5 - d]
            ]);
            Arc::new(
                Geofence::from_feature(
                    &json!({"type": "Feature", "id": id, "properties": {},
                        "geometry": {"type": "Polygon", "coordinates": [ring]}}),
                    None,
                    None,
                    "#0",
                )
                .unwrap(),
            )
        };
        let mut idx = FenceIndex::new([square("a", 0.001), square("b", 0.002)]);
        let ids = |idx: &FenceIndex, lat: f64, lon: f64| {
            let mut out = Vec::new();
            idx.containing(lat, lon, "acme", &mut out);
            out.into_iter().map(|m| m.1.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(ids(&idx, 41.5, -8.6), ["a", "b"]);
        assert_eq!(ids(&idx, 41.5015, -8.6), ["b"]);
        idx.remove("a");
        assert_eq!(ids(&idx, 41.5, -8.6), ["b"]);
        assert_eq!(ids(&idx, 41.5015, -8.6), ["b"]);
        assert_eq!(ids(&idx, 41.503, -8.6), Vec::<String>::new());
        idx.insert(square("c", 0.0005));
        assert_eq!(ids(&idx, 41.5, -8.6).len(), 2);
        idx.remove("b");
        assert_eq!(ids(&idx, 41.5, -8.6), ["c"]);
    }

    #[test]
    fn transitions_dwell_and_changes() {
        let a = circle("a", 0.0, 0.0, 1000.0, None);
        let mut g = Geofencing::new(Arc::new(FenceIndex::new([a])), 60_000);
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
                ViewUpdate::Occupant(o) => {
                    *occ.entry((o.geofence.clone(), o.entered_at)).or_default() += r
                }
                ViewUpdate::Applied { seq, .. } => applied.push(*seq),
                ViewUpdate::AsOf(_) => {}
            }
        }
        assert!(occ.values().all(|r| *r == 0), "{occ:?}");
        assert_eq!(applied, [1, 2, 3, 4]);
        assert_eq!(g.geofences(), 1);
    }
}
